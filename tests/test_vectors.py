"""Every shared byte vector (tests/vectors, a copy of ../shared/vectors) through parse().

Each case is fed whole, one byte at a time and split at every offset; prefixes
of valid headers must be incomplete, trailing bytes must not change the result.
"""

import filecmp
import socket
from typing import Any

import pytest

import gevent_proxyproto as gpp

from .conftest import SHARED_VECTORS, VECTORS_FILE, load_vectors

VECTORS = load_vectors()
OK = [case for case in VECTORS if case["expect"] == "ok"]


def _ids(case: dict[str, Any]) -> str:
    return str(case["id"])


@pytest.mark.skipif(not SHARED_VECTORS.exists(), reason="no ../shared beside this checkout (a user's clone)")
def test_copy_matches_shared_vectors() -> None:
    # Only the project's own workplace has ../shared: a clone, in CI or not, tests the copy alone.
    assert filecmp.cmp(SHARED_VECTORS, VECTORS_FILE, shallow=False), "tests/vectors is out of date: copy it again"


def _same_host(family: socket.AddressFamily, got: str, want: str) -> bool:
    return socket.inet_pton(family, got) == socket.inet_pton(family, want)


def _check_address(header: gpp.ProxyHeader, got: gpp.Address | None, want: Any) -> None:
    if want is None:
        assert got is None
    elif isinstance(want, str):  # AF_UNIX
        if want.startswith("\0"):
            assert got == want.encode("utf-8")
        else:
            assert got == want
    else:
        assert isinstance(got, tuple)
        assert _same_host(header.family, got[0], want[0]), (got, want)
        assert got[0] == socket.inet_ntop(header.family, socket.inet_pton(header.family, got[0]))
        assert got[1] == want[1]


def _expected_accessor(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"hex"}:
        return bytes.fromhex(value["hex"])
    return value


def check_fields(case: dict[str, Any], header: gpp.ProxyHeader, length: int) -> None:
    if "version" in case:
        assert header.version == case["version"]
    if "command" in case:
        assert header.command == case["command"]
        assert isinstance(header.command, gpp.Command)
    if "family" in case:
        assert header.family == getattr(socket, case["family"])
    if "protocol" in case:
        want = case["protocol"]
        assert header.protocol == (None if want is None else getattr(socket, want))
    if "src" in case:
        _check_address(header, header.source, case["src"])
    if "dst" in case:
        _check_address(header, header.destination, case["dst"])
    if "length" in case:
        assert length == case["length"]
    if "tlvs" in case:
        assert [[t, v.hex()] for t, v in header.tlvs] == case["tlvs"]
    for name, want in case.get("accessors", {}).items():
        got = getattr(header, name)
        if name == "ssl" and want is not None:
            for field, field_want in want.items():
                assert getattr(got, field) == _expected_accessor(field_want), field
        else:
            assert got == _expected_accessor(want), name


@pytest.mark.parametrize("case", VECTORS, ids=_ids)
def test_vector_whole(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["hex"])
    expect = case["expect"]
    if expect == "invalid":
        with pytest.raises(gpp.InvalidHeader) as info:
            gpp.parse(data)
        assert isinstance(info.value.reason, gpp.Reason) and info.value.message
    elif expect == "incomplete":
        with pytest.raises(gpp.IncompleteHeader) as incomplete:
            gpp.parse(data)
        assert incomplete.value.needed >= 1
    elif expect == "either":
        try:
            header, length = gpp.parse(data)
        except gpp.InvalidHeader:
            return
        check_fields(case, header, length)
    else:
        header, length = gpp.parse(data)
        check_fields(case, header, length)


@pytest.mark.parametrize("case", OK, ids=_ids)
def test_vector_prefixes_are_incomplete(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["hex"])
    _, length = gpp.parse(data)
    for cut in range(length):
        with pytest.raises(gpp.IncompleteHeader) as info:
            gpp.parse(data[:cut])
        # `needed` bytes are certainly header: never past its end.
        assert 1 <= info.value.needed <= length - cut


@pytest.mark.parametrize("case", OK, ids=_ids)
def test_vector_trailing_bytes_and_input_types(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["hex"])
    header, length = gpp.parse(data)
    exact = data[:length]
    for trailing in (b"", b"\r\n", b"GET / HTTP/1.1\r\n\r\n", bytes(range(256)) * 300):
        for kind in (bytes, bytearray, memoryview):
            assert gpp.parse(kind(exact + trailing)) == (header, length)


@pytest.mark.parametrize("case", OK, ids=_ids)
def test_vector_round_trip(case: dict[str, Any]) -> None:
    header, length = gpp.parse(bytes.fromhex(case["hex"]))
    assert header.to_bytes() == bytes.fromhex(case["hex"])[:length]
    assert gpp.parse(header.to_bytes())[0] == header
    # The canonical encoder (a header built in code) round-trips too.
    rebuilt = gpp.ProxyHeader(
        header.version, header.command, header.family, header.protocol, header.source, header.destination, header.tlvs
    )
    assert gpp.parse(gpp.encode_header(rebuilt))[0] == header
