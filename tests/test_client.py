"""create_connection and header_for: the sending side over TCP, on real loopback sockets."""

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.socket
import pytest

import gevent_proxyproto as gpp
from gevent_proxyproto._sending import header_for

from .support import Recorder, needs_ipv6, read_all, read_line, serving

CLIENT = ("203.0.113.7", 4242)
FRONTEND = ("192.0.2.1", 443)


@contextlib.contextmanager
def raw_listener(host: str = "127.0.0.1") -> Iterator[gevent.socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with gevent.socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(8)
        yield listener


def received_by(listener: gevent.socket.socket) -> bytes:
    """Everything the next connection sends until it half-closes."""
    conn, _ = listener.accept()
    with conn:
        return read_all(conn)


# -- header_for: what every sender writes --------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, expected",
    [
        ((1, CLIENT, FRONTEND), b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n"),
        ((1, ("2001:db8::7", 4242, 0, 0), FRONTEND), b"PROXY TCP6 2001:db8::7 ::ffff:192.0.2.1 4242 443\r\n"),
        ((1, None, None), b"PROXY UNKNOWN\r\n"),
        ((2, CLIENT, FRONTEND), gpp.build_v2(source=CLIENT, destination=FRONTEND)),
        ((2, ("fe80::1%lo", 1, 0, 1), ("fe80::2", 2, 0, 1)), gpp.build_v2(source=("fe80::1", 1), destination=("fe80::2", 2))),
        ((2, None, None), bytes.fromhex("0d0a0d0a000d0a515549540a20000000")),  # HAProxy's health check
    ],
    ids=["v1-tcp4", "v1-mixed-v4-mapped", "v1-unknown", "v2-inet", "v2-zone-dropped", "v2-local"],
)  # fmt: skip
def test_header_for(arguments: tuple[Any, ...], expected: bytes) -> None:
    assert header_for(*arguments) == expected


def test_header_for_v2_tlvs_follow_the_crc32c() -> None:
    header = header_for(2, CLIENT, FRONTEND, tlvs=[(0xE1, b"one"), (0x02, b"example.com")], crc32c=True)
    parsed, length = gpp.parse(header)
    assert length == len(header) and parsed.crc32c is not None
    assert [tlv_type for tlv_type, _ in parsed.tlvs] == [gpp.TLVType.CRC32C, 0xE1, gpp.TLVType.AUTHORITY]
    assert header == gpp.build_v2(source=CLIENT, destination=FRONTEND, tlvs=[(0xE1, b"one"), (0x02, b"example.com")],
                                  crc32c=True)  # fmt: skip


@pytest.mark.parametrize(
    "arguments, keywords",
    [
        ((3, CLIENT, FRONTEND), {}),
        ((1, CLIENT, FRONTEND), {"crc32c": True}),
        ((1, CLIENT, FRONTEND), {"tlvs": [(0xE1, b"x")]}),
        ((1, CLIENT, FRONTEND), {"protocol": socket.SOCK_DGRAM}),
        ((1, "/tmp/sock", "/tmp/sock"), {}),
        ((2, CLIENT, None), {}),
        ((2, ("localhost", 1), FRONTEND), {}),
        ((2, ("203.0.113.7", 70000), FRONTEND), {}),
        ((2, ("203.0.113.7",), FRONTEND), {}),
    ],
    ids=["version-3", "v1-crc", "v1-tlv", "v1-dgram", "v1-unix", "half-given", "host-name", "port", "short-tuple"],
)
def test_header_for_bad_arguments(arguments: tuple[Any, ...], keywords: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        header_for(*arguments, **keywords)


# -- create_connection -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_header_then_data_default_destination(version: int) -> None:
    with raw_listener() as listener:
        address = listener.getsockname()
        with gpp.create_connection(address, source=CLIENT, version=version) as client:
            client.sendall(b"payload")
            client.shutdown(socket.SHUT_WR)
            data = received_by(listener)
    expected = header_for(version, CLIENT, address)  # the server's address of this connection
    assert data == expected + b"payload"


@needs_ipv6
def test_ipv4_client_announced_to_an_ipv6_server_is_v4_mapped() -> None:
    with raw_listener("::1") as listener:
        port = listener.getsockname()[1]
        with gpp.create_connection(("::1", port), source=CLIENT, version=1) as client:
            client.shutdown(socket.SHUT_WR)
            data = received_by(listener)
    assert data == f"PROXY TCP6 ::ffff:203.0.113.7 ::1 4242 {port}\r\n".encode()


def test_the_header_goes_out_in_one_write_before_anything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[bytes] = []
    connect = gevent.socket.create_connection

    class Recording:
        def __init__(self, sock: Any) -> None:
            self.sock = sock

        def sendall(self, data: bytes) -> None:
            writes.append(bytes(data))
            self.sock.sendall(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.sock, name)

    monkeypatch.setattr(gevent.socket, "create_connection", lambda *args, **kwargs: Recording(connect(*args, **kwargs)))
    tlvs = [(0xE1, b"x" * 300)]
    with raw_listener() as listener:
        client = gpp.create_connection(listener.getsockname(), source=CLIENT, destination=FRONTEND, tlvs=tlvs,
                                       crc32c=True)  # fmt: skip
        client.sock.close()
        received_by(listener)
    assert writes == [gpp.build_v2(source=CLIENT, destination=FRONTEND, tlvs=tlvs, crc32c=True)]


def test_explicit_destination_tlvs_and_crc32c_reach_a_proxy_server() -> None:
    recorder = Recorder()
    with serving(recorder) as server:
        client = gpp.create_connection(server.address, source=("2001:db8::7", 4242),
                                       destination=("2001:db8::1", 443), tlvs=[(gpp.TLVType.AUTHORITY, b"example.com")],
                                       crc32c=True, timeout=5)  # fmt: skip
        with client:
            assert client.timeout == 5
            assert read_line(client) == b"('2001:db8::7', 4242, 0, 0)\n"
            client.sendall(b"echo me\n")
            assert read_line(client) == b"echo me\n"
    header = recorder.seen[0]["header"]
    assert header.authority == "example.com" and header.crc32c is not None
    assert recorder.seen[0]["sock"] == ("2001:db8::1", 443, 0, 0)


@pytest.mark.parametrize("version", [1, 2])
def test_no_source_is_the_senders_own_connection(version: int) -> None:
    recorder = Recorder()
    with serving(recorder) as server, gpp.create_connection(server.address, source=None, version=version) as client:
        assert read_line(client) == repr(client.getsockname()).encode() + b"\n"  # the real endpoints
    header = recorder.seen[0]["header"]
    assert header.command == (gpp.Command.LOCAL if version == 2 else gpp.Command.PROXY)
    assert header.source is None


@pytest.mark.parametrize(
    "keywords",
    [{"source": CLIENT, "version": 1, "crc32c": True}, {"source": ("nope", 1)}, {"source": None, "destination": FRONTEND}],
    ids=["v1-crc", "bad-source", "destination-only"],
)  # fmt: skip
def test_bad_arguments_fail_before_connecting(keywords: dict[str, Any]) -> None:
    with socket.socket() as unused:  # a port nobody listens on: connecting would be refused
        unused.bind(("127.0.0.1", 0))
        address = unused.getsockname()
        with pytest.raises(ValueError):
            gpp.create_connection(address, **keywords)
