"""ProxyDatagramServer and format_datagram: PROXY v2 over UDP on real loopback sockets."""

import contextlib
import copy
import logging
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.queue
import gevent.socket
import pytest

import gevent_proxyproto as gpp

from .conftest import REPO
from .support import needs_ipv6, refusal_lines, wait_until

CLIENT = ("203.0.113.7", 4242)
SERVICE = ("192.0.2.1", 53)


class EchoRecorder:
    """A handler that records each datagram and sends the payload back through ``server.sendto``."""

    def __init__(self) -> None:
        self.seen: gevent.queue.Queue[tuple[bytes, Any]] = gevent.queue.Queue()
        self.server: Any = None

    def __call__(self, payload: bytes, address: Any) -> None:
        self.seen.put((payload, address))
        self.server.sendto(payload, address)

    def next(self) -> tuple[bytes, Any]:
        return self.seen.get(timeout=5)


@contextlib.contextmanager
def udp_serving(host: str = "127.0.0.1", **kwargs: Any) -> Iterator[tuple[Any, EchoRecorder]]:
    recorder = EchoRecorder()
    server = gpp.ProxyDatagramServer((host, 0), recorder, **kwargs)
    recorder.server = server
    server.start()
    try:
        yield server, recorder
    finally:
        server.stop(timeout=1)


@contextlib.contextmanager
def udp_socket(host: str = "127.0.0.1") -> Iterator[gevent.socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with gevent.socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        sock.settimeout(5)
        yield sock


def test_payload_and_client_address_reach_the_handler_and_the_reply_goes_to_the_proxy() -> None:
    with udp_serving() as (server, recorder), udp_socket() as proxy, udp_socket() as client:
        announced = client.getsockname()  # a real socket at the announced client address: it must get nothing
        proxy.sendto(gpp.format_datagram(b"ping", announced, server.address), server.address)
        payload, address = recorder.next()
        assert proxy.recvfrom(100) == (b"ping", server.address)  # the reply, at the proxy's real address
        client.settimeout(0)
        with pytest.raises(BlockingIOError):
            client.recvfrom(100)
        proxy_address = proxy.getsockname()
    assert payload == b"ping"
    assert address == announced and isinstance(address, gpp.ProxiedAddress)
    assert address.real_peer == proxy_address
    header = address.proxy_header
    assert header.command == gpp.Command.PROXY and header.protocol == socket.SOCK_DGRAM
    assert header.destination == server.address
    assert server.failures == {}


@needs_ipv6
def test_ipv6_client_address_has_the_socket_shape() -> None:
    with udp_serving("::1") as (server, recorder), udp_socket("::1") as proxy:
        proxy.sendto(gpp.format_datagram(b"v6", ("2001:db8::7", 4242), ("2001:db8::1", 53)), server.address)
        _, address = recorder.next()
        assert proxy.recvfrom(100)[0] == b"v6"
        assert address.real_peer[:2] == proxy.getsockname()[:2]
    assert address == ("2001:db8::7", 4242, 0, 0)


def test_each_datagram_has_its_own_header_tlvs_and_crc() -> None:
    with udp_serving() as (server, recorder), udp_socket() as proxy:
        for index in range(3):
            datagram = gpp.format_datagram(f"n{index}".encode(), ("198.51.100.9", 1000 + index), SERVICE,
                                           tlvs=[(0xE1, bytes([index]))], crc32c=True)  # fmt: skip
            proxy.sendto(datagram, server.address)
        seen = [recorder.next() for _ in range(3)]
    assert [(payload, address) for payload, address in seen] == [
        (b"n0", ("198.51.100.9", 1000)), (b"n1", ("198.51.100.9", 1001)), (b"n2", ("198.51.100.9", 1002))
    ]  # fmt: skip
    assert [address.proxy_header.tlv(0xE1) for _, address in seen] == [b"\0", b"\1", b"\2"]


def test_a_datagram_larger_than_gevents_default_buffer_arrives_whole() -> None:
    payload = os.urandom(60000)  # DatagramServer reads 8192 bytes by default
    with udp_serving() as (server, recorder), udp_socket() as proxy:
        proxy.sendto(gpp.format_datagram(payload, CLIENT, SERVICE), server.address)
        assert recorder.next()[0] == payload


@pytest.mark.parametrize(
    "datagram",
    [
        gpp.format_datagram(b"check", None, None),
        gpp.format_datagram(b"check", None, None, crc32c=True),
        gpp.build_v2(source=CLIENT, destination=SERVICE, protocol=None) + b"unspec",
        gpp.build_v2(source=None, destination=None) + b"unspec",
    ],
    ids=["local", "local-crc32c", "transport-unspec", "family-unspec"],
)
def test_local_and_unspec_use_the_real_sender(datagram: bytes) -> None:
    with udp_serving() as (server, recorder), udp_socket() as proxy:
        proxy.sendto(datagram, server.address)
        payload, address = recorder.next()
        assert proxy.recvfrom(100) == (payload, server.address)
        assert address == proxy.getsockname() == address.real_peer
    assert address.proxy_header.source is None
    assert server.failures == {}


_HEADER = gpp.format_datagram(b"", CLIENT, SERVICE)
STREAM = gpp.build_v2(source=CLIENT, destination=SERVICE)  # transport STREAM: a TCP connection's header
BAD_CRC = bytearray(gpp.format_datagram(b"x", CLIENT, SERVICE, crc32c=True))
BAD_CRC[-2] ^= 0xFF  # inside the CRC32C value
DROPPED = {
    "v1": (b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 53\r\npayload", gpp.Reason.BAD_PROTO),
    "v1-truncated": (b"PROXY TCP4 203.0.113.7", gpp.Reason.BAD_PROTO),  # v1 is refused before parsing
    "v2-truncated-preamble": (_HEADER[:10], gpp.Reason.TRUNCATED),
    "v2-truncated-block": (_HEADER[:20], gpp.Reason.TRUNCATED),
    "empty": (b"", gpp.Reason.TRUNCATED),
    "not-a-header": (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00", gpp.Reason.NOT_HDR),
    "bad-version": (bytes([*_HEADER[:12], 0x31, *_HEADER[13:]]), gpp.Reason.BAD_PROTO),
    "bad-crc": (bytes(BAD_CRC), gpp.Reason.CRC),
    "stream": (STREAM + b"payload", gpp.Reason.BAD_PROTO),
    "unix": (gpp.build_v2(source="/a", destination="/b", protocol=socket.SOCK_DGRAM) + b"x", gpp.Reason.BAD_PROTO),
    "too-large": (gpp.format_datagram(b"", CLIENT, SERVICE, tlvs=[(0xE1, b"x" * 300)]), gpp.Reason.BAD_HDR),
}


@pytest.mark.parametrize("case", sorted(DROPPED))
def test_invalid_datagrams_are_dropped_and_counted(case: str, caplog: pytest.LogCaptureFixture) -> None:
    datagram, reason = DROPPED[case]
    with udp_serving(max_header_size=256) as (server, recorder), udp_socket() as proxy:
        proxy.sendto(datagram, server.address)
        proxy.sendto(gpp.format_datagram(b"good", CLIENT, SERVICE), server.address)  # read after the bad one
        assert recorder.next()[0] == b"good"
        assert proxy.recvfrom(100)[0] == b"good"  # the only reply
        assert recorder.seen.empty()
        assert server.failures == {reason: 1}
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert reason.value in warning.getMessage() and "127.0.0.1:" in warning.getMessage()
    assert warning.exc_info is None


def test_untrusted_senders_are_dropped_and_counted() -> None:
    with udp_serving(trusted_proxies=["10.0.0.0/8"]) as (server, recorder), udp_socket() as proxy:
        for _ in range(3):
            proxy.sendto(gpp.format_datagram(b"spoof", CLIENT, SERVICE), server.address)
        wait_until(lambda: server.failures[gpp.Reason.UNTRUSTED] == 3)
        assert recorder.seen.empty()


def test_untrusted_direct_senders_are_handled_without_a_header() -> None:
    with udp_serving(trusted_proxies=["10.0.0.0/8"], untrusted="direct") as (server, recorder), udp_socket() as peer:
        data = gpp.format_datagram(b"not parsed", CLIENT, SERVICE)
        peer.sendto(data, server.address)
        payload, address = recorder.next()
        assert peer.recvfrom(1000)[0] == data
        assert address == peer.getsockname() and address.proxy_header is None
    assert payload == data  # from a direct sender a header is only data


def test_a_flood_of_drops_logs_one_warning_per_reason_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gevent_proxyproto")
    with udp_serving() as (server, recorder), udp_socket() as proxy:
        server.warning_interval = 0.2
        started = time.monotonic()
        # In batches: a UDP receive buffer (about 200 KiB) overflows silently.
        for batch in range(1, 5):
            for _ in range(50):
                proxy.sendto(b"\r\n\r\n", server.address)  # TRUNCATED
                proxy.sendto(b"GET / HTTP/1.1\r\n\r\n", server.address)  # NOT_HDR
            wait_until(lambda: sum(server.failures.values()) == 100 * batch)  # noqa: B023
        flood_seconds = time.monotonic() - started
        proxy.sendto(gpp.format_datagram(b"good", CLIENT, SERVICE), server.address)
        assert recorder.next()[0] == b"good"  # still served during the flood
        assert server.failures == {gpp.Reason.TRUNCATED: 200, gpp.Reason.NOT_HDR: 200}
        # Every drop is in a WARNING line of its own or in a periodic "suppressed N" line.
        for reason in ("TRUNCATED", "NOT_HDR"):
            wait_until(lambda: sum(refusal_lines(caplog.records, reason)) == 200)  # noqa: B023
            warned, held_back = refusal_lines(caplog.records, reason)
            assert 1 <= warned <= 2 + flood_seconds / server.warning_interval and held_back > 0
        debug = [record for record in caplog.records if record.levelno == logging.DEBUG]
        assert sum("dropped" in record.getMessage() for record in debug) == 400 - sum(
            refusal_lines(caplog.records, reason)[0] for reason in ("TRUNCATED", "NOT_HDR")
        )


def test_sendto_a_plain_address_and_with_flags() -> None:
    with udp_serving() as (server, _), udp_socket() as peer:
        server.sendto(b"plain", peer.getsockname())
        server.sendto(b"flags", 0, gpp.ProxiedAddress(CLIENT, peer.getsockname(), None))
        assert peer.recvfrom(100)[0] == b"plain"
        assert peer.recvfrom(100)[0] == b"flags"


def test_proxied_address_is_the_client_tuple() -> None:
    header = gpp.parse(gpp.format_datagram(b"", CLIENT, SERVICE))[0]
    address = gpp.ProxiedAddress(CLIENT, ("127.0.0.1", 5000), header)
    assert address == CLIENT and hash(address) == hash(CLIENT) and repr(address) == repr(CLIENT)
    assert {address: 1}[CLIENT] == 1
    for clone in (copy.copy(address), pickle.loads(pickle.dumps(address))):
        assert clone == CLIENT and clone.real_peer == ("127.0.0.1", 5000) and clone.proxy_header == header


def test_format_datagram_needs_no_gevent() -> None:
    code = textwrap.dedent(
        """
        import sys
        import gevent_proxyproto as gpp
        datagram = gpp.format_datagram(b"hi", ("203.0.113.7", 4242), ("192.0.2.1", 53), crc32c=True)
        header, length = gpp.parse(datagram)
        assert header.protocol.name == "SOCK_DGRAM" and datagram[length:] == b"hi", header
        loaded = sorted(name for name in sys.modules if name == "gevent" or name.startswith("gevent."))
        assert not loaded, loaded
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "arguments",
    [(b"x", CLIENT, None), (b"x", ("nope", 1), SERVICE), (b"x", CLIENT, SERVICE, {"tlvs": [(300, b"")]})],
    ids=["half-given", "host-name", "tlv-type"],
)
def test_format_datagram_bad_arguments(arguments: tuple[Any, ...]) -> None:
    keywords = arguments[3] if len(arguments) > 3 else {}
    with pytest.raises(ValueError):
        gpp.format_datagram(*arguments[:3], **keywords)


def test_udp_echo_example() -> None:
    with udp_socket() as probe:  # a free port for the example
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-u", str(REPO / "examples" / "udp_echo.py"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == f"PROXY v2 UDP echo on 127.0.0.1:{port}\n".encode()
        with udp_socket() as balancer:
            balancer.sendto(gpp.format_datagram(b"hello", CLIENT, ("127.0.0.1", port)), ("127.0.0.1", port))
            assert balancer.recvfrom(100) == (b"hello", ("127.0.0.1", port))
            via = balancer.getsockname()
            balancer.sendto(b"PROXY TCP4 203.0.113.7 127.0.0.1 4242 9053\r\nv1", ("127.0.0.1", port))
        assert process.stdout.readline() == f"datagram from 203.0.113.7:4242 via 127.0.0.1:{via[1]}: 5 bytes\n".encode()
        warning = process.stdout.readline()
        assert warning.startswith(b"WARNING gevent_proxyproto: UDP datagram dropped") and b"BAD_PROTO" in warning
    finally:
        process.terminate()
        process.wait(timeout=5)


def test_local_health_checks_from_senders_gone_at_once_are_quiet(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    # A load balancer's UDP check: a LOCAL datagram from a socket closed right after it, so the
    # answer meets a closed port (ICMP port unreachable). The server keeps serving, silently.
    caplog.set_level(logging.DEBUG, logger="gevent_proxyproto")
    with udp_serving() as (server, recorder):
        for _ in range(5):
            with udp_socket() as check:
                check.sendto(gpp.format_datagram(b"check", None, None), server.address)
                checked_from = check.getsockname()
            assert recorder.next() == (b"check", checked_from)  # a health check: the real sender
        with udp_socket() as client:
            client.sendto(gpp.format_datagram(b"hello", CLIENT, SERVICE), server.address)
            assert recorder.next() == (b"hello", CLIENT)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "Traceback" not in capfd.readouterr().err
