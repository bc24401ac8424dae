"""Benchmark: nanoseconds per PROXY header parse, gevent_proxyproto against its peers.

What is measured
----------------
Five streams, each a PROXY header followed by the first application bytes (an
HTTP request), exactly as they sit in a socket buffer:

* ``v1-tcp4``  ``PROXY TCP4 ...\\r\\n``
* ``v1-tcp6``  ``PROXY TCP6 ...\\r\\n``
* ``v2-ipv4``  a v2 header, INET/STREAM, no TLV
* ``v2-ipv6``  a v2 header, INET6/STREAM, no TLV
* ``v2-tlv``   a v2 INET header with HAProxy's TLV set, in HAProxy's order: CRC32C,
  ALPN, AUTHORITY, UNIQUE_ID, SSL (sub-TLVs VERSION, CN, KEY_ALG, SIG_ALG,
  CIPHER), built by ``gevent_proxyproto.build_v2(..., crc32c=True)``.

With ``--distinct-addresses`` each case cycles through 4,096 streams whose
source and destination addresses all differ, so that our parsers' address-text
memo (256 entries, ``_v1``/``_v2``) misses on every lookup: the cost of clients
never seen before. The timed statement then also fetches the next stream (one
iterator call, the same in every implementation's time).

Every implementation does the whole job from the raw stream bytes to the parsed
addresses: version detection, finding the end of the header (CRLF search or the
v2 length field) and parsing. What each one calls:

* ``gevent_proxyproto``: ``gevent_proxyproto.parse(stream)``. Detects v1/v2,
  finds the end, validates strictly, splits and checks the TLVs (lengths, SSL
  sub-TLV framing) and verifies the CRC32C; returns ``(ProxyHeader, length)``
  with ``(str, int)`` addresses.
* ``pp.unpack`` (PyPI ``proxy-protocol``, module ``proxyprotocol``): the
  header's end is found the way its reader asks for it (``readline`` for v1,
  16 + the length field for v2; three lines of this script, counted in its
  time, since the library has no call that frames a header in a buffer), then
  ``ProxyProtocolDetect().unpack(header)`` detects the version from the 8-byte
  signature and runs ``ProxyProtocolV1.unpack`` / ``ProxyProtocolV2.unpack``
  (``unpack`` needs the exact header bytes: trailing application bytes would
  be read as TLVs or as a malformed line). Addresses come back as
  ``ipaddress.IPv4Address`` / ``IPv6Address`` objects, TLVs as a dict (the SSL
  TLV is only split on access). It verifies the CRC32C only when the ``crc32c``
  C package is importable, and then over the TLVs re-serialised in numeric
  type order, not in wire order.
* ``pp.reader``: the same library driven the way its own server does it,
  ``ProxyProtocolReader.read`` replayed synchronously on the buffer: call
  ``unpack`` on what was read so far (a memoryview of a bytearray), catch
  ``ProxyProtocolIncompleteError``, read what its ``want_read`` asks for
  (8 bytes, then 8, then the v2 length; or one line for v1), repeat. The
  asyncio awaits are not counted; the exceptions and copies are.
* ``twisted``: ``twisted.protocols.haproxy``: the detection of
  ``HAProxyProtocolWrapper.dataReceived`` (v2 prefix and version, else
  ``PROXY``), then ``V2Parser().feed(stream)`` / ``V1Parser().feed(stream)``,
  which frame the header, call ``V2Parser.parse`` / ``V1Parser.parse`` and
  return ``(ProxyInfo, remaining bytes)``. TLVs are skipped unparsed; the CRC
  is never verified.

Before timing, each peer's result is checked against ours (same addresses,
and the same TLVs where it parses them). A peer that rejects a case is reported
as such (with its exception) and that cell is not timed; a peer that accepts
without verifying the CRC is timed, and the note says so.

Method
------
The machine this was written on is noisy (2 cores, shared), so:

* every (case, implementation) gets a ``timeit.Timer`` whose loop count is
  calibrated so that one round takes about ``--round-ms`` milliseconds;
* rounds are interleaved: round 1 runs A, B, C for every case, then round 2
  runs them again, ... (the starting implementation rotates each round, so no
  one always runs first); 15 rounds by default, 3 with ``--quick``;
* reported per cell: the median ns per parse over the rounds, the min-max and
  the inter-quartile range; per peer: ``ours/peer``, the median of the
  per-round ratios (a round's ratio compares runs that were seconds apart, so
  background load mostly cancels out), with its min-max;
* ``timeit`` turns the garbage collector off while it times, as usual.

A second table times the CRC32C on the ``v2-tlv`` header: the raw checksum
(pure-Python ``crc32c_pure`` against the ``crc32c`` C package, when
importable), and our whole parse with each of them (by swapping
``gevent_proxyproto._v2.crc32c`` in this process only).

Reproduce
---------
The peers are benchmark-only: they are never dependencies of
gevent_proxyproto (``crc32c``, the C CRC32C, is one on CPython). From the
repository root::

    python3 -m venv /tmp/bench-venv              # throwaway
    /tmp/bench-venv/bin/pip install proxy-protocol twisted   # the peers
    /tmp/bench-venv/bin/pip install crc32c       # what the default install brings
    /tmp/bench-venv/bin/python bench/parse.py --json /tmp/parse-bench.json
    /tmp/bench-venv/bin/python bench/parse.py --pure-crc32c   # as if crc32c were absent
    /tmp/bench-venv/bin/python bench/parse.py --peers-without-crc32c   # the peers verify nothing
    /tmp/bench-venv/bin/python bench/parse.py --peers-without-crc32c --distinct-addresses  # memo misses
    PURE_PYTHON=1 /tmp/bench-venv/bin/python bench/parse.py ...   # without the compiled parse core

The parse core runs compiled when it is built in place in the checkout
(``python setup.py build_ext --inplace``, docs/performance.rst); the first
line of the output says which.

(``parse()`` needs no gevent; ``pip install gevent`` too if you want the whole
package importable.) The script benchmarks the checkout it sits in (it puts the
repository root first on ``sys.path``). Missing peers are reported and skipped: with only
gevent_proxyproto installed it still runs. ``--pure-crc32c`` hides the
``crc32c`` package from this process (from us and from ``proxyprotocol``
alike), to get the "without the C package" numbers without uninstalling it.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import itertools
import json
import os
import pathlib
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

from _common import summarize  # bench/ is on sys.path when a script here runs

REPO = pathlib.Path(__file__).resolve().parent.parent

#: What follows the header on the stream: the client's first bytes.
APPLICATION_BYTES = b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n"

SOURCE4 = ("192.0.2.10", 56324)
DESTINATION4 = ("198.51.100.20", 443)
SOURCE6 = ("2001:db8:85a3::8a2e:370:7334", 56324)
DESTINATION6 = ("2001:db8:1::ab9:c0a8:102", 443)

OURS = "gevent_proxyproto"
CASES = ("v1-tcp4", "v1-tcp6", "v2-ipv4", "v2-ipv6", "v2-tlv")

Parser = Callable[[bytes], Any]


# --------------------------------------------------------------------------- cases


#: Streams per case with --distinct-addresses: well over the address memo's 256 entries.
DISTINCT_STREAMS = 4096


def distinct_endpoints(index: int) -> dict[str, tuple[tuple[str, int], tuple[str, int]]]:
    """The ``index``-th (source, destination) pair of each family, all different and shaped like the fixed ones."""
    return {
        "ipv4": ((f"192.0.{index >> 8}.{index & 0xFF}", 56324), (f"198.51.{100 + (index >> 8)}.{index & 0xFF}", 443)),
        "ipv6": ((f"2001:db8:85a3::8a2e:{index:x}:7334", 56324), (f"2001:db8:1::ab9:{index:x}:102", 443)),
    }


def build_cases(gpp: Any, distinct: bool = False) -> dict[str, list[bytes]]:
    """The five cases: streams of header + application bytes (one each, or DISTINCT_STREAMS)."""
    tlv_type, sub_type = gpp.TLVType, gpp.SSLSubType

    def tlv(kind: int, value: bytes) -> bytes:
        return bytes([kind]) + len(value).to_bytes(2, "big") + value

    ssl_value = (
        bytes([0x07])  # client: SSL | CERT_CONN | CERT_SESS
        + (0).to_bytes(4, "big")  # verify: 0 = verified
        + tlv(sub_type.VERSION, b"TLSv1.3")
        + tlv(sub_type.CN, b"client.example.com")
        + tlv(sub_type.KEY_ALG, b"RSA2048")
        + tlv(sub_type.SIG_ALG, b"SHA256")
        + tlv(sub_type.CIPHER, b"TLS_AES_256_GCM_SHA384")
    )
    haproxy_tlvs = [
        (tlv_type.ALPN, b"h2"),
        (tlv_type.AUTHORITY, b"www.example.com"),
        (tlv_type.UNIQUE_ID, b"C0000201:DC04_C6336414:01BB_6740B2A1_0001:1A2B"),
        (tlv_type.SSL, ssl_value),
    ]
    endpoints = [distinct_endpoints(index) for index in range(DISTINCT_STREAMS)] if distinct else [
        {"ipv4": (SOURCE4, DESTINATION4), "ipv6": (SOURCE6, DESTINATION6)}
    ]
    streams: dict[str, list[bytes]] = {case: [] for case in CASES}
    for pairs in endpoints:
        (source4, destination4), (source6, destination6) = pairs["ipv4"], pairs["ipv6"]
        headers = {
            "v1-tcp4": gpp.build_v1(source4, destination4),
            "v1-tcp6": gpp.build_v1(source6, destination6),
            "v2-ipv4": gpp.build_v2(source=source4, destination=destination4),
            "v2-ipv6": gpp.build_v2(source=source6, destination=destination6),
            # crc32c=True puts the CRC32C TLV first, where HAProxy puts it.
            "v2-tlv": gpp.build_v2(source=source4, destination=destination4, tlvs=haproxy_tlvs, crc32c=True),
        }
        for case, header in headers.items():
            streams[case].append(header + APPLICATION_BYTES)
    return streams


# --------------------------------------------------------------------------- implementations


class Implementation:
    """One parser under test: a callable from stream bytes, and how to read its result."""

    def __init__(self, name: str, parse: Parser, addresses: Callable[[Any], Any], tlvs: Callable[[Any], Any] | None):
        self.name = name
        self.parse = parse
        #: result -> ((host, port), (host, port)), hosts as text.
        self.addresses = addresses
        #: result -> {type: value}, or None when the implementation skips TLVs.
        self.tlvs = tlvs


def ours(gpp: Any) -> Implementation:
    return Implementation(
        OURS,
        gpp.parse,  # called directly: no wrapper in the timed path
        lambda result: (result[0].source, result[0].destination),
        lambda result: dict(result[0].tlvs),
    )


def proxyprotocol_implementations() -> tuple[list[Implementation], str | None, Any]:
    """``pp.unpack`` and ``pp.reader``; or ``[]`` and why not."""
    try:
        pp_root = importlib.import_module("proxyprotocol")
        detect = importlib.import_module("proxyprotocol.detect")
    except ImportError as error:
        return [], f"proxyprotocol is not importable ({error}): its columns are skipped", None
    incomplete_error = pp_root.ProxyProtocolIncompleteError
    detector = detect.ProxyProtocolDetect()
    unpack = detector.unpack

    def pp_unpack(stream: bytes) -> Any:
        # Frame the header as its reader would (readline / preamble + length),
        # then let the library detect the version and parse the exact bytes.
        if stream[:1] == b"P":
            end = stream.find(b"\n", 0, 108) + 1
        else:
            end = 16 + (stream[14] << 8 | stream[15])
        return unpack(stream[:end])

    def pp_reader(stream: bytes) -> Any:
        # ProxyProtocolReader.read, synchronously over the stream buffer.
        data = bytearray()
        position = 0
        while True:
            try:
                with memoryview(data) as view:
                    return unpack(view)
            except incomplete_error as exc:
                want_read = exc.want_read
            if want_read.want_bytes is not None:
                chunk = stream[position : position + want_read.want_bytes]
            elif want_read.want_line:
                chunk = stream[position : stream.find(b"\n", position) + 1]
            else:
                raise ValueError("No conditions given to complete parsing")
            if not chunk:
                raise EOFError("stream ended inside the header")
            position += len(chunk)
            data += chunk

    def addresses(result: Any) -> Any:
        return ((str(result.source[0]), result.source[1]), (str(result.dest[0]), result.dest[1]))

    def tlvs(result: Any) -> Any:
        return dict(result.tlv)

    return (
        [
            Implementation("pp.unpack", pp_unpack, addresses, tlvs),
            Implementation("pp.reader", pp_reader, addresses, tlvs),
        ],
        None,
        pp_root,
    )


def twisted_implementation() -> tuple[list[Implementation], str | None]:
    try:
        v1parser = importlib.import_module("twisted.protocols.haproxy._v1parser")
        v2parser = importlib.import_module("twisted.protocols.haproxy._v2parser")
    except ImportError as error:
        return [], f"twisted is not importable ({error}): its column is skipped"
    V1Parser, V2Parser = v1parser.V1Parser, v2parser.V2Parser
    v2_prefix, v1_prefix = V2Parser.PREFIX, V1Parser.PROXYSTR

    def twisted_feed(stream: bytes) -> Any:
        # HAProxyProtocolWrapper.dataReceived: pick the parser, then feed().
        if len(stream) >= 16 and stream[:12] == v2_prefix and ord(stream[12:13]) & 0b11110000 == 0x20:
            parser = V2Parser()
        elif len(stream) >= 8 and stream[:5] == v1_prefix:
            parser = V1Parser()
        else:
            raise ValueError("not a PROXY header")
        info, remaining = parser.feed(stream)
        if info is None:
            raise ValueError("incomplete header")
        return info, remaining

    def addresses(result: Any) -> Any:
        info = result[0]
        return ((info.source.host, info.source.port), (info.destination.host, info.destination.port))

    return [Implementation("twisted", twisted_feed, addresses, None)], None


# --------------------------------------------------------------------------- checks


def _normal(pair: Any) -> Any:
    (source_host, source_port), (destination_host, destination_port) = pair
    return (
        (ipaddress.ip_address(source_host), source_port),
        (ipaddress.ip_address(destination_host), destination_port),
    )


def check(implementation: Implementation, stream: bytes, expected: Any, case: str, pp_root: Any) -> tuple[bool, str]:
    """Run once and compare with our result: (timed?, note)."""
    try:
        result = implementation.parse(stream)
    except Exception as error:  # any failure is reported, not hidden
        note = f"REJECTS this case: {type(error).__name__}: {error}"
        if pp_root is not None and isinstance(error, pp_root.ProxyProtocolChecksumError):
            note = "REJECTS this valid header: CRC32C computed over the TLVs re-sorted by type, not wire order"
        return False, note
    if _normal(implementation.addresses(result)) != _normal(expected[0]):
        return False, f"WRONG addresses: {implementation.addresses(result)!r}"
    notes = []
    if case == "v2-tlv":
        if implementation.tlvs is None:
            notes.append("addresses only: TLVs skipped, CRC32C not verified")
        else:
            if implementation.tlvs(result) != expected[1]:
                return False, "WRONG TLVs"
            if implementation.name == OURS:
                notes.append("TLVs split and checked, CRC32C verified")
            elif pp_root is not None and importlib.import_module("proxyprotocol.checksum").crc32c is None:
                notes.append("TLVs split; CRC32C NOT verified (needs the crc32c package)")
            else:
                notes.append("TLVs split, CRC32C verified")
    return True, "; ".join(notes)


# --------------------------------------------------------------------------- timing


def calibrate(timer: timeit.Timer, round_seconds: float) -> int:
    """A loop count that makes one timer run last about ``round_seconds``."""
    number = 1
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= 0.005:
            return max(1, int(number * round_seconds / elapsed))
        number *= 4


def interleaved(
    cells: dict[tuple[str, str], Parser], streams: dict[tuple[str, str], list[bytes]], rounds: int, round_seconds: float
) -> dict[tuple[str, str], list[float]]:
    """ns per call for every cell, ``rounds`` times, cells interleaved within each round.

    A cell with several streams parses the next one of them at each call, in a cycle.
    """
    timers = {
        key: timeit.Timer("parse(stream)", globals={"parse": parse, "stream": streams[key][0]})
        if len(streams[key]) == 1
        else timeit.Timer("parse(next_stream())", globals={"parse": parse, "next_stream": itertools.cycle(streams[key]).__next__})
        for key, parse in cells.items()
    }
    numbers = {key: calibrate(timer, round_seconds) for key, timer in timers.items()}
    keys = list(cells)
    results: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    for round_index in range(rounds):
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            results[key].append(timers[key].timeit(numbers[key]) / numbers[key] * 1e9)
        print(f"  round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    return results


def ratio_summary(ours_rounds: list[float], peer_rounds: list[float]) -> dict[str, Any]:
    per_round = [mine / theirs for mine, theirs in zip(ours_rounds, peer_rounds, strict=True)]
    return {"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round), "rounds": per_round}


# --------------------------------------------------------------------------- main


def package_version(name: str) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    options.add_argument("--quick", action="store_true", help="3 rounds of ~20 ms: a smoke run, not a measurement")
    options.add_argument("--rounds", type=int, help="rounds (default 15, --quick 3)")
    options.add_argument("--round-ms", type=float, help="target duration of one timer run (default 40, --quick 20)")
    options.add_argument("--json", metavar="FILE", help="write every round's numbers to FILE")
    options.add_argument("--pure-crc32c", action="store_true", help="hide the crc32c C package from this process")
    options.add_argument(
        "--peers-without-crc32c",
        action="store_true",
        help="hide the crc32c C package from proxyprotocol only: it then accepts v2-tlv without verifying the CRC32C",
    )
    options.add_argument(
        "--distinct-addresses",
        action="store_true",
        help=f"cycle through {DISTINCT_STREAMS} streams per case, every address different: the address memo misses",
    )
    args = options.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 15)
    round_seconds = (args.round_ms or (20.0 if args.quick else 40.0)) / 1000

    if args.pure_crc32c:
        sys.modules["crc32c"] = None  # type: ignore[assignment]  # makes "import crc32c" fail
    sys.path.insert(0, str(REPO))
    gpp = importlib.import_module("gevent_proxyproto")
    crc_module = importlib.import_module("gevent_proxyproto._crc32c")
    crc_in_use = "pure Python" if gpp.crc32c is crc_module.crc32c_pure else "crc32c C package"
    # The module whose code parse_v2 runs: _v2, or its compiled build _gevent_c_v2 (docs/performance.rst).
    v2_module = importlib.import_module(importlib.import_module("gevent_proxyproto._v2").__name__)
    parse_core = "compiled (Cython)" if v2_module.__name__.endswith("_gevent_c_v2") else "pure Python"

    implementations = [ours(gpp)]
    skipped = []
    pp_list, why, pp_root = proxyprotocol_implementations()
    if args.peers_without_crc32c and pp_root is not None:
        # proxyprotocol binds the function at import: unbind it where it is used.
        importlib.import_module("proxyprotocol.checksum").crc32c = None
        importlib.import_module("proxyprotocol.tlv").crc32c_checksum = None
    implementations += pp_list
    if why:
        skipped.append(why)
    twisted_list, why = twisted_implementation()
    implementations += twisted_list
    if why:
        skipped.append(why)

    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; {gpp.__file__}")
    print(
        f"gevent_proxyproto {gpp.__version__} (parse core: {parse_core}; CRC32C: {crc_in_use}); "
        f"proxy-protocol {package_version('proxy-protocol') or 'not installed'}; "
        f"Twisted {package_version('Twisted') or 'not installed'}; "
        f"crc32c {(package_version('crc32c') or 'not installed') if not args.pure_crc32c else 'hidden (--pure-crc32c)'}"
    )
    for line in skipped:
        print(line)
    print(
        f"{rounds} interleaved rounds, ~{round_seconds * 1000:.0f} ms per cell per round; ns per parse"
        + (f"; {DISTINCT_STREAMS} streams per case, all addresses distinct" if args.distinct_addresses else "")
        + "\n"
    )

    streams = build_cases(gpp, args.distinct_addresses)
    expected = {}
    for case, case_streams in streams.items():
        header, length = gpp.parse(case_streams[0])
        assert case_streams[0][length:] == APPLICATION_BYTES, case
        expected[case] = ((header.source, header.destination), dict(header.tlvs))

    notes: dict[tuple[str, str], str] = {}
    cells: dict[tuple[str, str], Parser] = {}
    cell_streams: dict[tuple[str, str], list[bytes]] = {}
    for case in CASES:
        for implementation in implementations:
            # The first stream is checked; with --distinct-addresses the rest differ only in addresses.
            timed, note = check(implementation, streams[case][0], expected[case], case, pp_root)
            notes[case, implementation.name] = note
            if timed:
                cells[case, implementation.name] = implementation.parse
                cell_streams[case, implementation.name] = streams[case]

    # The CRC32C table rides in the same rounds: raw checksums and our parse with each.
    v2_tlv_header = streams["v2-tlv"][0][: -len(APPLICATION_BYTES)]
    crc_cells: dict[tuple[str, str], Parser] = {("crc", "crc32c_pure(header)"): crc_module.crc32c_pure}
    c_crc = None
    if not args.pure_crc32c:
        try:
            c_crc = importlib.import_module("crc32c").crc32c
        except ImportError:
            pass
    patched = {}
    default_crc = getattr(v2_module, "crc32c", None)
    if default_crc is not None:

        def with_crc(function: Callable[[bytes], int]) -> Parser:
            def parse_with(stream: bytes) -> Any:
                # Swap for this call only: the main table keeps the default.
                v2_module.crc32c = function
                try:
                    return gpp.parse(stream)
                finally:
                    v2_module.crc32c = default_crc

            return parse_with

        patched["parse, pure CRC"] = with_crc(crc_module.crc32c_pure)
        if c_crc is not None:
            patched["parse, C CRC"] = with_crc(c_crc)
    if c_crc is not None:
        crc_cells["crc", "crc32c C (header)"] = c_crc
    for name, function in patched.items():
        crc_cells["crc", name] = function
    all_cells = {**cells, **crc_cells}
    all_streams = {
        **cell_streams,
        **{key: [v2_tlv_header] if key[1].startswith("crc") else streams["v2-tlv"] for key in crc_cells},
    }
    results = interleaved(all_cells, all_streams, rounds, round_seconds)

    report: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "round_seconds": round_seconds,
        "crc32c_in_use": crc_in_use,
        "parse_core": parse_core,
        "distinct_addresses": args.distinct_addresses,
        "versions": {
            "gevent_proxyproto": gpp.__version__,
            "proxy-protocol": package_version("proxy-protocol"),
            "Twisted": package_version("Twisted"),
            "crc32c": None if args.pure_crc32c else package_version("crc32c"),
        },
        "skipped": skipped,
        "cases": {},
        "crc32c": {},
    }
    header_line = f"{'case':<9} {'implementation':<18} {'median':>8} {'min-max':>15} {'IQR':>15} {'ours/peer':>10} {'ratio min-max':>14}  notes"
    print(header_line)
    print("-" * len(header_line))
    for case in CASES:
        case_report: dict[str, Any] = {
            "header_bytes": len(streams[case][0]) - len(APPLICATION_BYTES),
            "implementations": {},
        }
        ours_rounds = results.get((case, OURS))
        for implementation in implementations:
            key = (case, implementation.name)
            entry: dict[str, Any] = {"note": notes[key], "timed": key in results}
            if key in results:
                summary = summarize(results[key])
                entry.update(summary)
                ratio = ""
                ratio_range = ""
                if implementation.name != OURS and ours_rounds is not None:
                    ratios = ratio_summary(ours_rounds, results[key])
                    entry["ours_over_peer"] = ratios
                    ratio = f"{ratios['median']:.2f}"
                    ratio_range = f"{ratios['min']:.2f}-{ratios['max']:.2f}"
                print(
                    f"{case:<9} {implementation.name:<18} {summary['median']:>8.0f} "
                    f"{summary['min']:>7.0f}-{summary['max']:<7.0f} {summary['q1']:>7.0f}-{summary['q3']:<7.0f} "
                    f"{ratio:>10} {ratio_range:>14}  {notes[key]}"
                )
            else:
                print(f"{case:<9} {implementation.name:<18} {'-':>8} {'':>15} {'':>15} {'':>10} {'':>14}  {notes[key]}")
            case_report["implementations"][implementation.name] = entry
        report["cases"][case] = case_report
        print()

    print(f"CRC32C on the v2-tlv header ({len(v2_tlv_header)} bytes), ns per call:")
    for key in crc_cells:
        summary = summarize(results[key])
        report["crc32c"][key[1]] = summary
        print(
            f"  {key[1]:<22} {summary['median']:>8.0f}   min-max {summary['min']:.0f}-{summary['max']:.0f}"
            f"   IQR {summary['q1']:.0f}-{summary['q3']:.0f}"
        )
    if c_crc is None:
        print(
            "  crc32c C package: not importable"
            + (" (hidden by --pure-crc32c)" if args.pure_crc32c else " (pip install crc32c)")
        )
    if "parse, pure CRC" in report["crc32c"] and "parse, C CRC" in report["crc32c"]:
        ratios = ratio_summary(results["crc", "parse, C CRC"], results["crc", "parse, pure CRC"])
        report["crc32c"]["parse C/pure ratio"] = ratios
        print(f"  our v2-tlv parse with the C CRC takes {ratios['median']:.2f}x the time it takes with the pure one")

    if args.json:
        report["generated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
