"""CRC32C: the C extension, the pure-Python fall-back, and the reference of tests/wire.py agree."""

import platform
import sys
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

import gevent_proxyproto as gpp
from gevent_proxyproto import _crc32c
from gevent_proxyproto._crc32c import crc32c_pure

from . import wire

# CRC32C (SPEC.md section 4) ------------------------------------------------------------------------

# RFC 3720 appendix B.4 and the standard check value.
CRC_VECTORS = [
    (b"123456789", 0xE3069283),
    (b"", 0x00000000),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


@pytest.mark.parametrize("function", [gpp.crc32c, crc32c_pure, wire.crc32c_reference])
@pytest.mark.parametrize(("data", "expected"), CRC_VECTORS)
def test_crc32c_vectors(function: Any, data: bytes, expected: int) -> None:
    assert function(data) == expected


@pytest.mark.parametrize("function", [gpp.crc32c, crc32c_pure])
def test_crc32c_accepts_bytes_like(function: Any) -> None:
    assert function(bytearray(b"123456789")) == function(memoryview(b"123456789")) == 0xE3069283


@given(st.binary(max_size=512))
def test_crc32c_implementations_agree(data: bytes) -> None:
    assert crc32c_pure(data) == gpp.crc32c(data) == wire.crc32c_reference(data)


def test_the_default_install_uses_the_c_crc32c() -> None:
    # crc32c is an install requirement on CPython: a pure-Python CRC here is a packaging defect.
    if platform.python_implementation() != "CPython":
        pytest.skip("the crc32c package is only required on CPython")
    import crc32c

    assert gpp.crc32c is crc32c.crc32c


def test_the_pure_fall_back_is_chosen_without_the_c_package() -> None:
    with mock.patch.dict(sys.modules, {"crc32c": None}):  # None in sys.modules: ImportError
        assert _crc32c._accelerated() is None
