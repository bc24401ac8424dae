"""Coverage-guided fuzzing of the PROXY header parser, the incremental reader and the TLV accessors.

The promise under test (STYLE.md practice 3): bytes from a peer make
``parse()`` and ``read_header()`` raise a ``ProxyProtocolError`` or return a
header, and nothing else, ever. Every other exception is a bug, and so is a
broken invariant:

* ``parse(data)``: a header's ``raw`` is ``data[:length]``; it re-parses from
  ``to_bytes()`` to itself; bytes after it change nothing; every typed
  accessor (``alpn``, ``ssl.cn``, ``aws_vpce_id``, ...) answers without raising;
* ``read_header`` on a replayed connection (the input cut into segments at
  offsets the fuzzer picks): it agrees with ``parse()`` on the whole input,
  leaves every byte after the header unread, and never spins (peeks twice with
  nothing consumed or arrived in between).

A script, not a test: pytest does not collect it, and ``atheris`` is only
imported when it runs. Install it, then (from the repository root)::

    pip install atheris
    python fuzz/fuzz_proxyproto.py fuzz/corpus -max_total_time=600      # 10 minutes
    python fuzz/fuzz_proxyproto.py fuzz/corpus -atheris_runs=200000
    python fuzz/fuzz_proxyproto.py --replay crash-1234abcd               # a finding, without atheris

``fuzz/corpus`` is created and seeded with valid headers of every kind on the
first run (the fuzzer adds what it finds there: keep it out of git). The first
input byte picks the target: parse, parse with ``allow_v4_in_tcp6``, or the
reader; the rest is the input.
"""

from __future__ import annotations

import pathlib
import socket
import sys
import time
from collections import deque
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the checkout this script sits in

import gevent_proxyproto as gpp  # noqa: E402
from gevent_proxyproto import read_header  # noqa: E402

ACCESSORS = (
    "alpn",
    "authority",
    "unique_id",
    "crc32c",
    "netns",
    "aws_vpce_id",
    "azure_link_id",
    "gcp_psc_connection_id",
)
SSL_ACCESSORS = ("verified", "version", "cn", "cipher", "sig_alg", "key_alg", "group", "sig_scheme", "client_cert")
TRAILING = b"GET / HTTP/1.1\r\n\r\n"


class ReplayedConnection:
    """A connection that delivers ``segments`` one by one, each only when the reader would wait (then EOF)."""

    def __init__(self, segments: list[bytes]) -> None:
        self.pending = deque(segment for segment in segments if segment)
        self.buffer = b""
        self.timeout: float | None = None
        self.calls = 0
        self.state = (0, 0)  # (bytes consumed, segments arrived)
        self.last_peek: tuple[int, int] | None = None
        self._sock = self  # read_header may use the kernel socket under a gevent one: the same here

    def recv(self, size: int, flags: int = 0) -> bytes:
        self.calls += 1
        if self.calls > 10_000:
            raise AssertionError("read_header made over 10,000 recv calls")
        if not self.buffer and self.pending:
            self.buffer = self.pending.popleft()
            self.state = (self.state[0], self.state[1] + 1)
        data = self.buffer[:size]
        if flags & socket.MSG_PEEK:
            if data and self.state == self.last_peek:
                raise AssertionError("read_header spins: it peeked again with nothing consumed or arrived")
            self.last_peek = self.state
        else:
            self.buffer = self.buffer[len(data) :]
            self.state = (self.state[0] + len(data), self.state[1])
        return data

    def unread(self) -> bytes:
        return self.buffer + b"".join(self.pending)


def check_accessors(header: gpp.ProxyHeader) -> None:
    for name in ACCESSORS:
        getattr(header, name)
    ssl = header.ssl
    if ssl is not None:
        for name in SSL_ACCESSORS:
            getattr(ssl, name)
    for tlv_type, _ in header.tlvs:
        header.tlv(tlv_type)
    repr(header)
    hash(header)


def check_parse(data: bytes, allow_v4_in_tcp6: bool) -> tuple[str, Any, int]:
    try:
        header, length = gpp.parse(data, allow_v4_in_tcp6=allow_v4_in_tcp6)
    except gpp.IncompleteHeader as incomplete:
        assert incomplete.needed >= 1, incomplete
        return ("incomplete", None, 0)
    except gpp.InvalidHeader as invalid:
        assert invalid.reason is not gpp.Reason.TRUNCATED and invalid.message, invalid
        return ("invalid", invalid.reason, 0)
    assert 0 < length <= len(data) and header.raw == data[:length], (header, length)
    assert gpp.parse(data + TRAILING, allow_v4_in_tcp6=allow_v4_in_tcp6) == (header, length)
    assert gpp.parse(header.to_bytes(), allow_v4_in_tcp6=allow_v4_in_tcp6) == (header, length)
    check_accessors(header)
    return ("ok", header, length)


def check_reader(data: bytes, cuts: list[int]) -> None:
    stream = data + TRAILING
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    segments = [stream[start:end] for start, end in zip([0, *points], [*points, len(stream)], strict=True)]
    connection = ReplayedConnection(segments)
    expected = check_parse(stream, False)
    try:
        header = read_header(connection, time.monotonic() + 60, 0xFFFF + 16)
    except gpp.InvalidHeader as invalid:
        assert expected[0] == "invalid" and expected[1] is invalid.reason, (expected, invalid)
        return
    except gpp.ConnectionClosed as closed:
        assert expected[0] == "incomplete", (expected, closed)
        return
    assert expected[0] == "ok" and header == expected[1] and header.raw == expected[1].raw, (expected, header)
    assert connection.unread() == stream[expected[2] :], "read_header read past the header"


def test_one_input(data: bytes) -> None:
    """The fuzz target: the first byte picks what to run on the rest."""
    if not data:
        return
    selector, body = data[0], data[1:]
    if selector % 3 == 0:
        check_parse(body, False)
    elif selector % 3 == 1:
        check_parse(body, True)
    else:
        # The next bytes (up to 8) are the segment cuts, the rest the stream.
        count = selector // 3 % 9
        cuts, payload = list(body[:count]), body[count:]
        check_reader(payload, cuts)


def seed_corpus(directory: pathlib.Path) -> None:
    """Valid headers of every kind, for each target: the fuzzer mutates them."""
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        return
    ssl_value = b"\x07\0\0\0\0" + b"\x21\x00\x07TLSv1.3" + b"\x22\x00\x04user"
    headers = [
        gpp.build_v1(("203.0.113.7", 4242), ("192.0.2.1", 443)),
        gpp.build_v1(("2001:db8::7", 4242), ("2001:db8::1", 443)),
        b"PROXY UNKNOWN\r\n",
        b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n",
        gpp.build_v2(source=("203.0.113.7", 4242), destination=("192.0.2.1", 443)),
        gpp.build_v2(source=("2001:db8::7", 4242), destination=("2001:db8::1", 443), crc32c=True),
        gpp.build_v2(source="/tmp/a.sock", destination=b"\0abstract"),
        gpp.build_v2(command=gpp.Command.LOCAL, tlvs=[(gpp.TLVType.AWS, b"\x01vpce-0123")]),
        gpp.build_v2(
            source=("203.0.113.7", 4242),
            destination=("192.0.2.1", 443),
            tlvs=[
                (gpp.TLVType.ALPN, b"h2"),
                (gpp.TLVType.AUTHORITY, b"example.com"),
                (gpp.TLVType.UNIQUE_ID, b"id-1"),
                (gpp.TLVType.SSL, ssl_value),
                (gpp.TLVType.AZURE, b"\x01\x01\x02\x03\x04"),
                (gpp.TLVType.GCP, bytes(8)),
                (gpp.TLVType.NETNS, b"ns1"),
            ],
            crc32c=True,
        ),
    ]
    for index, header in enumerate(headers):
        for selector in (0, 1, 2 + 3 * 2):  # parse, parse with the switch, the reader with 2 cuts
            prefix = bytes([selector]) + (bytes([5, 17]) if selector > 2 else b"")
            (directory / f"seed-{index}-{selector}").write_bytes(prefix + header)


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--replay"]:
        for path in argv[2:]:
            test_one_input(pathlib.Path(path).read_bytes())
            print(f"{path}: no finding")
        return 0
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: pip install atheris (or use --replay FILE...)", file=sys.stderr)
        return 2
    corpus = [arg for arg in argv[1:] if not arg.startswith("-")]
    for directory in corpus[:1]:
        seed_corpus(pathlib.Path(directory))
    atheris.instrument_all()
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
