"""The optional compiled parse core (setup.py, gevent_proxyproto/_accel.py).

Modules that end with ``import_c_accel(globals(), ...)`` may run as a Cython
build of their own source. These tests check which build runs (the compiled
one in CI, the pure one under ``PURE_PYTHON=1``), that an in-place build is
not older than its sources, and, by a differential fuzz, that the compiled
``parse()`` gives exactly the pure one's results.
"""

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gevent_proxyproto as gpp
from gevent_proxyproto import _accel

from . import wire
from .conftest import IN_CI, REPO

PACKAGE = REPO / "gevent_proxyproto"
_ACCEL_LINE = re.compile(r'^import_c_accel\(globals\(\), "gevent_proxyproto\.(_gevent_c\w+)"\)$', re.M)

#: Module -> its compiled name, read from the sources: every module that asks for a compiled build.
ACCELERATED = {
    path.stem: match.group(1) for path in sorted(PACKAGE.glob("*.py")) if (match := _ACCEL_LINE.search(path.read_text()))
}
#: The order they import one another in: each is loaded after those it imports.
LOAD_ORDER = ("_tlvs", "_v2", "_v1", "_parser")


def running_name(module: str) -> str:
    """The name of the module whose code runs for ``gevent_proxyproto.<module>``."""
    return importlib.import_module(f"gevent_proxyproto.{module}").__name__


def compiled_build_in_use() -> bool:
    return all(running_name(module) == f"gevent_proxyproto.{compiled}" for module, compiled in ACCELERATED.items())


def require_compiled_build() -> None:
    """Skip on a developer's machine without the in-place build; in CI it is a failure.

    Under PURE_PYTHON (chosen, not missing) there is no compiled build to compare: a skip.
    """
    if compiled_build_in_use():
        return
    if _accel.PURE_PYTHON:
        pytest.skip("PURE_PYTHON is set: nothing compiled runs")
    if IN_CI:
        pytest.fail(
            f"CI runs pure Python modules: {[running_name(module) for module in ACCELERATED]}; "
            "build the extensions in place (python setup.py build_ext --inplace)"
        )
    pytest.skip("the compiled parse core is not built in place (python setup.py build_ext --inplace)")


def test_the_pure_loader_knows_every_accelerated_module() -> None:
    # gevent's naming: _v2 -> _gevent_c_v2. The differential fuzz below loads LOAD_ORDER.
    assert ACCELERATED == {name: f"_gevent_c{name}" for name in LOAD_ORDER}


def test_pure_python_forces_the_pure_modules() -> None:
    code = textwrap.dedent(
        f"""
        import importlib, types
        import gevent_proxyproto
        for name in {sorted(ACCELERATED)!r}:
            print(importlib.import_module("gevent_proxyproto." + name).__name__)
        print(isinstance(gevent_proxyproto.parse, types.FunctionType))
        """
    )
    environment = {**os.environ, "PURE_PYTHON": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [f"gevent_proxyproto.{name}" for name in sorted(ACCELERATED)] + ["True"]


def test_the_build_in_use() -> None:
    # Under PURE_PYTHON the pure modules; else, when built in place (always in CI), the
    # compiled ones, and not older than their sources (an edit without a rebuild).
    if _accel.PURE_PYTHON:
        assert [running_name(module) for module in ACCELERATED] == [f"gevent_proxyproto.{name}" for name in ACCELERATED]
        assert isinstance(gpp.parse, types.FunctionType)
        return
    require_compiled_build()
    assert not isinstance(gpp.parse, types.FunctionType)  # a compiled function
    for module, compiled in ACCELERATED.items():
        built = importlib.import_module(f"gevent_proxyproto.{compiled}").__file__
        assert built is not None
        if os.path.dirname(built) != str(PACKAGE):
            continue  # an installed build, not this checkout's: its sources are not these
        declarations = PACKAGE / f"{compiled}.pxd"
        sources = [PACKAGE / f"{module}.py", declarations, *cimported_declarations(declarations)]
        newer = [source.name for source in sources if source.exists() and source.stat().st_mtime > os.stat(built).st_mtime]
        assert not newer, f"{os.path.basename(built)} is older than {newer}: python setup.py build_ext --inplace"


def cimported_declarations(declarations: Any) -> list[Any]:
    """The package's .pxd files that ``declarations`` cimports (``_c_header.pxd``): sources of the build too."""
    if not declarations.exists():
        return []
    names = re.findall(r"^from gevent_proxyproto\.(\w+) cimport", declarations.read_text(), re.M)
    return [PACKAGE / f"{name}.pxd" for name in names]


def test_the_compiled_header_constructor_refuses_a_changed_proxy_header() -> None:
    # _c_header.pxd stores ProxyHeader's eight fields in C. A ninth field,
    # added in _model.py without a rebuild, would be left unset: the first
    # header parsed says so instead. (A fresh process: it checks on first use.)
    require_compiled_build()
    code = textwrap.dedent(
        """
        import dataclasses
        import gevent_proxyproto as gpp
        from gevent_proxyproto import _model

        @dataclasses.dataclass(frozen=True, slots=True)
        class WiderHeader:
            version: int
            command: object
            family: object
            protocol: object
            source: object
            destination: object
            tlvs: tuple = ()
            raw: object = None
            extra: object = None

        _model.ProxyHeader = WiderHeader
        for header in (gpp.build_v2(source=("1.2.3.4", 1), destination=("5.6.7.8", 2)), b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\\r\\n"):
            try:
                gpp.parse(header)
            except RuntimeError as error:
                print(error)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "gevent_proxyproto: ProxyHeader has 9 slots, the compiled parser stores 8: rebuild it"
    ] * 2


def test_a_compiled_module_that_fails_to_import_is_an_error() -> None:
    # Not built: the pure module stays. Built but broken (say, from older sources
    # that import a name since moved): an ImportError, never a silent fall-back.
    namespace: dict[str, Any] = {"__name__": "gevent_proxyproto._v2", "kept": True}
    with mock.patch.object(_accel, "PURE_PYTHON", False):
        _accel.import_c_accel(namespace, "gevent_proxyproto._gevent_c_nonexistent")
        assert namespace["kept"]
        broken = ModuleNotFoundError("No module named 'gevent_proxyproto._moved'", name="gevent_proxyproto._moved")
        with mock.patch.object(importlib, "import_module", side_effect=broken), pytest.raises(ImportError):
            _accel.import_c_accel(namespace, "gevent_proxyproto._gevent_c_v2")


# The differential fuzz -----------------------------------------------------------------------------


@contextmanager
def _pure_sources_as_the_package_modules() -> Iterator[None]:
    """sys.modules holds fresh pure-Python loads of the accelerated modules, for the duration."""
    saved = {name: sys.modules[f"gevent_proxyproto.{name}"] for name in LOAD_ORDER}
    try:
        with mock.patch.object(_accel, "PURE_PYTHON", True):
            for name in LOAD_ORDER:
                spec = importlib.util.spec_from_file_location(f"gevent_proxyproto.{name}", PACKAGE / f"{name}.py")
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module  # what the next one's relative import finds
                spec.loader.exec_module(module)
        yield
    finally:
        for name, module in saved.items():
            sys.modules[f"gevent_proxyproto.{name}"] = module


def load_pure_parse() -> Callable[..., Any]:
    """parse() of the pure sources, beside the compiled one: the same _model and _errors, so results compare."""
    with _pure_sources_as_the_package_modules():
        parse: Callable[..., Any] = sys.modules["gevent_proxyproto._parser"].parse
    return parse


def verdict(parse: Callable[..., Any], data: Any, **options: Any) -> tuple[Any, ...]:
    """Everything parse() tells a caller: the header, its raw bytes and length, or the exception's every field."""
    try:
        header, length = parse(data, **options)
    except gpp.IncompleteHeader as incomplete:
        return ("incomplete", incomplete.reason, incomplete.message, incomplete.needed, incomplete.exact)
    except gpp.InvalidHeader as invalid:
        return ("invalid", type(invalid), invalid.reason, invalid.message)
    return ("ok", type(header), header, header.raw, length)


@pytest.fixture(scope="module")
def pure_parse() -> Callable[..., Any]:
    require_compiled_build()
    parse = load_pure_parse()
    assert isinstance(parse, types.FunctionType) and not isinstance(gpp.parse, types.FunctionType)
    return parse


#: Checked TLV types with any value: CRC32C of any size, AUTHORITY not UTF-8, UNIQUE_ID too long, broken SSL.
_any_checked_tlv = st.tuples(
    st.sampled_from([0x02, 0x03, 0x05, 0x20]), st.one_of(st.binary(max_size=8), st.binary(min_size=120, max_size=300))
)
_tlv_areas = st.lists(st.one_of(wire.tlv_items, _any_checked_tlv), max_size=4)
#: Family/transport bytes: every valid one (UNSPEC, INET, INET6, UNIX x UNSPEC, STREAM, DGRAM) and two others.
_family_transports = st.sampled_from([family << 4 | transport for family in range(4) for transport in range(3)] + [0x13, 0x41])
_BLOCK_SIZES = {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 216}


@st.composite
def v2_tlv_headers(draw: Any) -> bytes:
    """A v2 header whose length matches: an address block, TLVs good and bad, sometimes a 1-3 byte tail, a CRC32C sealed or not."""
    family_transport = draw(_family_transports)
    block = draw(st.binary(min_size=_BLOCK_SIZES.get(family_transport >> 4, 0), max_size=216))
    if draw(st.booleans()):
        block = block[: _BLOCK_SIZES.get(family_transport >> 4, 0)]
    tlvs = draw(_tlv_areas)
    tail = draw(st.binary(min_size=1, max_size=3)) if draw(st.integers(0, 3)) == 0 else b""
    body = block + b"".join(wire.tlv(tlv_type, value) for tlv_type, value in tlvs) + tail
    header = wire.v2(draw(st.sampled_from([wire.LOCAL] + [wire.PROXY] * 6 + [0x22])), family_transport, body)
    crc_offsets = [offset for offset in range(16, len(header) - 6) if header[offset : offset + 3] == b"\x03\x00\x04"]
    if crc_offsets and draw(st.booleans()):
        header = wire.seal(header, draw(st.sampled_from(crc_offsets)) + 3)
    return header


options = st.fixed_dictionaries(
    {},
    optional={
        "allow_v4_in_tcp6": st.booleans(),
        "max_header_size": st.sampled_from([16, 28, 52, 107, 232, 0xFFFF + 16]),
    },
)


def check_agreement(pure_parse: Callable[..., Any], data: bytes, cut: int, kind: type, parse_options: dict[str, Any]) -> None:
    # The whole input and one prefix of it (a reader shows parse() every prefix on the way).
    for chunk in (data, data[:cut]):
        compiled = verdict(gpp.parse, kind(chunk), **parse_options)
        assert compiled == verdict(pure_parse, kind(chunk), **parse_options), chunk


# More examples than the profile's: the inputs are cheap and the paths many.
@settings(max_examples=5 * settings.default.max_examples)
@given(
    st.one_of(wire.wire_headers, wire.mutated_headers(), wire.arbitrary_bytes),
    st.integers(0, 400),
    st.sampled_from([bytes, bytearray, memoryview]),
    options,
)
def test_compiled_and_pure_parse_agree_on_any_bytes(
    pure_parse: Callable[..., Any], data: bytes, cut: int, kind: type, parse_options: dict[str, Any]
) -> None:
    check_agreement(pure_parse, data, cut, kind, parse_options)


@settings(max_examples=10 * settings.default.max_examples)
@given(v2_tlv_headers(), st.integers(0, 400), st.sampled_from([bytes, bytearray, memoryview]), options)
def test_compiled_and_pure_parse_agree_on_v2_tlvs(
    pure_parse: Callable[..., Any], data: bytes, cut: int, kind: type, parse_options: dict[str, Any]
) -> None:
    # The compiled code's own ground: TLV framing and the checks of each TLV.
    check_agreement(pure_parse, data, cut, kind, parse_options)
