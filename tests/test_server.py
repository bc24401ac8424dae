"""ProxyStreamServer and ProxySocket on real loopback sockets."""

import logging
import socket
import ssl
import time
from unittest import mock

import gevent
import gevent.event
import gevent.socket
import gevent.ssl
import pytest

import gevent_proxyproto as gpp

from .support import (
    V1_TCP4,
    V1_TCP6,
    V2_TCP4,
    V2_TCP6,
    Recorder,
    client_tls_context,
    connect,
    has_ipv6_loopback,
    live_greenlets,
    make_certificate,
    open_fds,
    plain_socket_from,
    read_all,
    read_line,
    serving,
    wait_until,
)

HEADERS = {
    "v1-tcp4": (V1_TCP4, ("203.0.113.7", 4242), ("192.0.2.1", 443)),
    "v2-tcp4": (V2_TCP4, ("203.0.113.7", 4242), ("192.0.2.1", 443)),
    "v1-tcp6": (V1_TCP6, ("2001:db8::7", 4242, 0, 0), ("2001:db8::1", 443, 0, 0)),
    "v2-tcp6": (V2_TCP6, ("2001:db8::7", 4242, 0, 0), ("2001:db8::1", 443, 0, 0)),
}


LISTENERS = [("127.0.0.1", 0)] + ([("::1", 0)] if has_ipv6_loopback() else [])


@pytest.mark.parametrize("listener", LISTENERS, ids=lambda address: address[0])
@pytest.mark.parametrize("name", sorted(HEADERS))
def test_proxied_addresses_reach_the_handler(name: str, listener: tuple[str, int]) -> None:
    header, peer, local = HEADERS[name]
    recorder = Recorder()
    with serving(recorder, listener) as server, connect(server, header + b"hello") as client:
        assert read_line(client) == repr(peer).encode() + b"\n"
        assert client.recv(5) == b"hello"  # the payload after the header reached the handler intact
        seen = recorder.seen[0]
        assert seen["address"] == seen["peer"] == peer
        assert seen["sock"] == local
        assert seen["real_peer"][:2] == client.getsockname()[:2]
        assert seen["header"] == gpp.parse(header)[0]


@pytest.mark.parametrize(
    "header",
    [
        gpp.build_v2(command=gpp.Command.LOCAL),
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff:: ffff:: 1 2\r\n",
        gpp.build_v2(source=None, destination=None),  # PROXY, family UNSPEC
        bytes.fromhex("0d0a0d0a000d0a515549540a2110000c7f0000017f0000011f9022b8"),  # INET, transport UNSPEC
    ],
    ids=["v2-local", "v1-unknown", "v1-unknown-addresses", "v2-unspec-family", "v2-unspec-transport"],
)
def test_real_endpoints_when_the_header_says_so(header: bytes) -> None:
    recorder = Recorder()
    with serving(recorder) as server, connect(server, header) as client:
        read_line(client)
        seen = recorder.seen[0]
        assert seen["address"] == seen["peer"] == client.getsockname()
        assert seen["sock"] == client.getpeername()
        assert seen["header"] == gpp.parse(header)[0]


def test_payload_stays_in_the_kernel_socket() -> None:
    """One segment holds header and payload: the reader takes the header only."""
    got = gevent.event.AsyncResult()

    def handle(sock: gevent.socket.socket, address: object) -> None:
        with plain_socket_from(sock) as plain:  # reads the kernel buffer, not any Python buffer
            plain.settimeout(5)
            got.set(plain.recv(100))

    with serving(handle) as server:
        for header in (V1_TCP4, V2_TCP4, gpp.build_v2(source=("1.2.3.4", 1), destination=("5.6.7.8", 2),
                                                      tlvs=[(0xE1, b"x" * 900)], crc32c=True)):  # fmt: skip
            got = gevent.event.AsyncResult()
            with connect(server, header + b"PAYLOAD"):
                assert got.get(timeout=5) == b"PAYLOAD"


@pytest.mark.parametrize("header", [V1_TCP4, V2_TCP6], ids=["v1", "v2"])
def test_header_one_byte_at_a_time(header: bytes) -> None:
    recorder = Recorder()
    with serving(recorder) as server, connect(server) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index in range(len(header)):
            client.sendall(header[index : index + 1])
            gevent.sleep(0.002)  # trickle: separate segments, the case under test
        client.sendall(b"after")
        assert read_line(client).startswith(b"('203.0.113.7'" if header is V1_TCP4 else b"('2001:db8::7'")
        assert client.recv(5) == b"after"


def test_silent_and_trickling_clients_do_not_delay_others() -> None:
    recorder = Recorder()
    with serving(recorder, header_timeout=10) as server:
        silent = [connect(server) for _ in range(50)]
        trickling = [connect(server, V1_TCP4[:10]) for _ in range(50)]
        started = time.monotonic()
        with connect(server, V2_TCP4) as good:
            assert read_line(good).startswith(b"('203.0.113.7', 4242)")
        assert time.monotonic() - started < 2  # far below header_timeout
        for client in silent + trickling:
            client.close()


def test_header_timeout_closes_silent_and_trickling_clients(caplog: pytest.LogCaptureFixture) -> None:
    with serving(Recorder(), header_timeout=0.3) as server:
        started = time.monotonic()
        with connect(server) as silent, connect(server, V1_TCP4[:5]) as partial:
            assert read_all(silent) == b""
            assert read_all(partial) == b""
        elapsed = time.monotonic() - started
        assert 0.25 < elapsed < 3
        assert server.failures[gpp.Reason.TIMEOUT] == 2
    assert "TIMEOUT" in caplog.text


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"GET / HTTP/1.1\r\n\r\n", gpp.Reason.NOT_HDR),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 443\r\n", gpp.Reason.BAD_HDR),
        (bytes.fromhex("0d0a0d0a000d0a515549540a30000000"), gpp.Reason.BAD_PROTO),
        (bytes.fromhex("0d0a0d0a000d0a515549540a20000007030004deadbeef"), gpp.Reason.CRC),
    ],
    ids=["http", "v1-leading-zero", "v2-version-3", "v2-bad-crc"],
)
def test_bad_headers_close_the_connection_with_one_log_line(
    data: bytes, reason: gpp.Reason, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    with serving(recorder) as server:
        with connect(server, data) as client:
            assert read_all(client) == b""
        wait_until(lambda: server.failures[reason] == 1)
        assert recorder.seen == []
    refusals = [record for record in caplog.records if "refused" in record.getMessage()]
    assert len(refusals) == 1
    assert reason.value in refusals[0].getMessage() and "127.0.0.1:" in refusals[0].getMessage()
    assert refusals[0].exc_info is None and "Traceback" not in caplog.text


def test_header_over_the_size_cap_is_refused() -> None:
    header = gpp.build_v2(source=("1.2.3.4", 1), destination=("5.6.7.8", 2), tlvs=[(0xE1, b"x" * 5000)])
    with serving(Recorder(), max_header_size=4096) as server:
        with connect(server, header) as client:
            assert read_all(client) == b""
        wait_until(lambda: server.failures[gpp.Reason.BAD_HDR] == 1)
    with serving(Recorder()) as server, connect(server, header) as client:  # the default accepts it
        assert read_line(client).startswith(b"('1.2.3.4', 1)")


def test_untrusted_source_is_closed_without_reading(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    with serving(recorder, trusted_proxies=["10.0.0.0/8", "2001:db8::/32"]) as server:
        with connect(server, V1_TCP4) as client:
            assert read_all(client) == b""
        wait_until(lambda: server.failures[gpp.Reason.UNTRUSTED] == 1)
    assert recorder.seen == []
    assert "trusted_proxies" in caplog.text and "UNTRUSTED" in caplog.text


def test_mixed_mode_keys_on_the_source_address() -> None:
    """HAProxy's `expect-proxy layer4 if <acl>`: trusted sources send a header, others do not."""
    recorder = Recorder()
    with serving(recorder, trusted_proxies=["127.0.0.2"], untrusted="direct") as server:
        with connect(server, V1_TCP4, source="127.0.0.2") as proxied:
            assert read_line(proxied) == b"('203.0.113.7', 4242)\n"
        with connect(server, source="127.0.0.1") as direct:
            assert read_line(direct) == repr(direct.getsockname()).encode() + b"\n"
            direct.sendall(V1_TCP4)  # from a direct source this is just data: echoed, not parsed
            assert direct.recv(len(V1_TCP4)) == V1_TCP4
    assert recorder.seen[1]["header"] is None


def _health_check_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("health check from")]


def test_health_check_local_then_reset_is_quiet(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger="gevent_proxyproto")
    recorder = Recorder()
    with serving(recorder) as server:
        for _ in range(3):
            check = connect(server, bytes.fromhex("0d0a0d0a000d0a515549540a20000000"))
            check.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            check.close()  # linger 0: a reset, as HAProxy's check does
        for _ in range(3):  # check-send-proxy: a v1 line naming the check's own socket, then a reset
            check = connect(server)
            own, far = check.getsockname(), check.getpeername()
            check.sendall(f"PROXY TCP4 {own[0]} {far[0]} {own[1]} {far[1]}\r\n".encode())
            check.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            check.close()
        with connect(server) as empty:
            pass  # a plain TCP check: connect and close
        # One debug line per check: dropped after its header when the reset
        # was there already, else from the handler that met it.
        wait_until(lambda: len(_health_check_lines(caplog)) == 6 and server.failures[gpp.Reason.EMPTY] == 1)
        with connect(server, V2_TCP4) as client:  # still serving
            assert read_line(client).startswith(b"('203.0.113.7'")
        del empty
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "Traceback" not in capfd.readouterr().err  # gevent prints a failed handler's traceback there


def _reset_now(client: gevent.socket.socket, conn: gpp.ProxySocket) -> None:
    """Reset ``client`` and wait until ``conn``'s kernel socket has seen it."""
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()

    def reset_seen() -> bool:
        try:
            return conn._sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    wait_until(reset_seen)


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (bytes.fromhex("0d0a0d0a000d0a515549540a20000000"), False),  # LOCAL: a health check, dropped
        (V2_TCP4, True),  # a client's connection: handed over, its address from the header
    ],
    ids=["LOCAL", "PROXY"],
)
def test_listener_accept_survives_a_reset_between_the_header_and_the_hand_over(
    header: bytes, accepted: bool, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    # The reset is injected right after the header is read, before accept()
    # hands the connection over (a getpeername() there raised ENOTCONN).
    caplog.set_level(logging.DEBUG, logger="gevent_proxyproto")
    real_read_header = gpp._socket.read_header
    clients: list[gevent.socket.socket] = []

    def read_then_reset(sock: gpp.ProxySocket, *args: object) -> gpp.ProxyHeader:
        parsed = real_read_header(sock, *args)
        _reset_now(clients[0], sock)
        return parsed

    with gpp.ProxySocket() as listener, mock.patch.object(gpp._socket, "read_header", side_effect=read_then_reset):
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        clients.append(gevent.socket.create_connection(listener.getsockname()))
        clients[0].sendall(header)
        if accepted:
            conn, address = listener.accept()
            with conn:
                assert address == ("203.0.113.7", 4242) == conn.getpeername()
        else:
            listener.settimeout(0.0)
            with pytest.raises(BlockingIOError):
                listener.accept()  # starts the accept loop
            wait_until(lambda: bool(_health_check_lines(caplog)))
            with pytest.raises(BlockingIOError):
                listener.accept()  # nothing was handed over
            (line,) = _health_check_lines(caplog)  # one debug line, nothing louder
            assert line.endswith(f"on {gpp._socket.describe_peer(listener.getsockname())} ended after its header")
            assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "Traceback" not in capfd.readouterr().err


def test_many_bad_connections_leave_no_fd_or_greenlet_behind() -> None:
    recorder = Recorder()
    with serving(recorder, header_timeout=0.5) as server:
        with connect(server, V2_TCP4) as warm:  # imports and lazy set-up happen before the baseline
            read_line(warm)
        wait_until(lambda: len(recorder.seen) == 1)
        gevent.sleep(0.05)
        fds, greenlets = open_fds(), live_greenlets()
        bad_inputs = [b"GET / HTTP/1.0\r\n\r\n", V1_TCP4[:20], b"PROXY TCP4 x\r\n", V2_TCP4[:14], b""]
        for round_number in range(40):
            clients = [connect(server, data) for data in bad_inputs]
            for client in clients:
                if round_number % 2:
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()
        wait_until(lambda: sum(server.failures.values()) == 200)
        wait_until(lambda: open_fds() <= fds and live_greenlets() <= greenlets)
        with connect(server, V1_TCP4) as client:  # and it still serves
            assert read_line(client) == b"('203.0.113.7', 4242)\n"


def test_unix_listener(tmp_path: object) -> None:
    path = f"{tmp_path}/proxy.sock"
    listener = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    recorder = Recorder()
    with serving(recorder, listener) as server:
        for header, peer in ((V2_TCP4, ("203.0.113.7", 4242)), (gpp.build_v2(command=gpp.Command.LOCAL), "")):
            with gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(path)
                client.sendall(header)
                assert read_line(client) == repr(peer).encode() + b"\n"
        unix_source = gpp.build_v2(source="/run/client.sock", destination=b"\0abstract")
        with gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            client.sendall(unix_source)
            assert read_line(client) == b"'/run/client.sock'\n"
            assert recorder.seen[-1]["sock"] == b"\0abstract"
        del server


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_certificate(str(tmp_path_factory.mktemp("tls")))


def _server_context(certificate: tuple[str, str]) -> ssl.SSLContext:
    context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


@pytest.mark.parametrize("style", ["ssl_context", "ssl_args"])
def test_tls_after_the_header(style: str, certificate: tuple[str, str]) -> None:
    recorder = Recorder()
    if style == "ssl_context":
        kwargs = {"ssl_context": _server_context(certificate)}
    else:
        kwargs = {"certfile": certificate[0], "keyfile": certificate[1]}
    with serving(recorder, **kwargs) as server, connect(server, V2_TCP4) as raw:
        with client_tls_context().wrap_socket(raw) as client:
            assert read_line(client) == b"('203.0.113.7', 4242)\n"
            client.sendall(b"over tls")
            assert client.recv(8) == b"over tls"
    assert recorder.seen[0]["peer"] == ("203.0.113.7", 4242)
    assert recorder.seen[0]["sock"] == ("192.0.2.1", 443)
    assert recorder.seen[0]["header"] == gpp.parse(V2_TCP4)[0]


def test_tls_client_hello_in_the_same_segment_as_the_header(certificate: tuple[str, str]) -> None:
    """The header reader must leave the ClientHello in the kernel for the TLS layer."""
    recorder = Recorder()
    with serving(recorder, ssl_context=_server_context(certificate)) as server:
        with gevent.socket.create_connection(server.address) as raw:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = client_tls_context().wrap_bio(incoming, outgoing)
            with pytest.raises(ssl.SSLWantReadError):
                tls.do_handshake()
            raw.sendall(V1_TCP4 + outgoing.read())  # header and ClientHello in one write
            while True:  # finish the handshake by hand over the same socket
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    raw.sendall(outgoing.read())
                    incoming.write(raw.recv(65536))
            raw.sendall(outgoing.read())
            line = b""
            while not line.endswith(b"\n"):
                try:
                    line += tls.read(100)
                except ssl.SSLWantReadError:
                    incoming.write(raw.recv(65536))
    assert line == b"('203.0.113.7', 4242)\n"
    assert server.failures == {} and server.tls_failures == 0


def test_starttls_handler_sees_the_proxied_address(certificate: tuple[str, str]) -> None:
    context = _server_context(certificate)
    seen = gevent.event.AsyncResult()

    def handle(sock: gevent.socket.socket, address: object) -> None:
        sock.sendall(b"220 ready for STARTTLS\n")
        assert sock.recv(9) == b"STARTTLS\n"
        with context.wrap_socket(sock, server_side=True) as tls:
            seen.set((address, tls.getpeername(), tls.getsockname(), tls.proxy_header))
            tls.sendall(b"secure\n")

    with serving(handle) as server, connect(server, V1_TCP4) as raw:
        assert read_line(raw) == b"220 ready for STARTTLS\n"
        raw.sendall(b"STARTTLS\n")
        with client_tls_context().wrap_socket(raw) as client:
            assert read_line(client) == b"secure\n"
    address, peer, local, header = seen.get(timeout=5)
    assert address == peer == ("203.0.113.7", 4242)
    assert local == ("192.0.2.1", 443)
    assert header == gpp.parse(V1_TCP4)[0]


class TestProxySocketListener:
    def _listener(self, **kwargs: object) -> gpp.ProxySocket:
        listener = gpp.ProxySocket(socket.AF_INET, socket.SOCK_STREAM, **kwargs)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        return listener

    def test_accept_returns_a_proxied_connection(self) -> None:
        with self._listener() as listener:
            client = gevent.socket.create_connection(listener.getsockname())
            client.sendall(V2_TCP6 + b"data")
            conn, address = listener.accept()
            with conn, client:
                assert isinstance(conn, gpp.ProxySocket)
                assert address == conn.getpeername() == ("2001:db8::7", 4242, 0, 0)
                assert conn.getsockname() == ("2001:db8::1", 443, 0, 0)
                assert conn.real_peername() == client.getsockname()
                assert conn.real_sockname() == client.getpeername()
                assert conn.proxy_header == gpp.parse(V2_TCP6)[0]
                assert conn.recv(4) == b"data"

    def test_slow_clients_do_not_delay_accept(self) -> None:
        with self._listener(header_timeout=10) as listener:
            stalled = [gevent.socket.create_connection(listener.getsockname()) for _ in range(20)]
            stalled[0].sendall(V1_TCP4[:7])
            good = gevent.socket.create_connection(listener.getsockname())
            good.sendall(V1_TCP4)
            started = time.monotonic()
            conn, address = listener.accept()
            assert time.monotonic() - started < 2
            assert address == ("203.0.113.7", 4242)
            for client in stalled + [good, conn]:
                client.close()

    def test_failures_are_counted_and_never_returned(self) -> None:
        with self._listener() as listener:
            for data in (b"junk\r\n", b"PROXY TCP4 1.2.3.4\r\n"):
                with gevent.socket.create_connection(listener.getsockname()) as bad:
                    bad.sendall(data)
            good = gevent.socket.create_connection(listener.getsockname())
            good.sendall(V1_TCP4)
            conn, address = listener.accept()
            assert address == ("203.0.113.7", 4242)
            assert listener.failures[gpp.Reason.NOT_HDR] == 1 and listener.failures[gpp.Reason.BAD_HDR] == 1
            conn.close()
            good.close()

    def test_pending_cap_limits_handshakes_in_flight(self) -> None:
        with self._listener(max_pending=2, header_timeout=10) as listener:
            stalled = [gevent.socket.create_connection(listener.getsockname()) for _ in range(2)]
            good = gevent.socket.create_connection(listener.getsockname())
            good.sendall(V1_TCP4)
            with pytest.raises(socket.timeout):
                listener.settimeout(0.3)
                listener.accept()  # both slots are taken by silent clients
            stalled[0].close()  # frees a slot once its handshake fails (EMPTY)
            listener.settimeout(5)
            conn, address = listener.accept()
            assert address == ("203.0.113.7", 4242)
            for client in stalled + [good, conn]:
                client.close()

    def test_close_wakes_a_waiting_accept(self) -> None:
        listener = self._listener()
        waiter = gevent.spawn(listener.accept)
        gevent.sleep(0.01)
        listener.close()
        with pytest.raises(OSError):
            waiter.get(timeout=2)
