"""ProxyStreamServer on real loopback sockets (a listening ProxySocket: test_socket.py)."""

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
    refusal_lines,
    serving,
    still_open,
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
        with connect(server, V2_TCP4) as good:
            assert read_line(good).startswith(b"('203.0.113.7', 4242)")
        # Served while every slow client still waits for its header: nobody waited for them.
        assert all(still_open(client) for client in silent + trickling) and server.failures == {}
        for client in silent + trickling:
            client.close()


def test_header_timeout_closes_silent_and_trickling_clients(caplog: pytest.LogCaptureFixture) -> None:
    with serving(Recorder(), header_timeout=0.3) as server:
        with connect(server) as silent, connect(server, V1_TCP4[:5]) as partial:
            assert read_all(silent) == b""  # closed by the server
            assert read_all(partial) == b""
        wait_until(lambda: sum(server.failures.values()) == 2)
        assert server.failures == {gpp.Reason.TIMEOUT: 2}
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


def test_untrusted_line_names_the_peer_not_the_trusted_list(caplog: pytest.LogCaptureFixture) -> None:
    trusted = [f"10.{i}.0.0/16" for i in range(200)]
    with serving(Recorder(), trusted_proxies=trusted) as server:
        with connect(server, V1_TCP4) as client:
            port = client.getsockname()[1]
            assert read_all(client) == b""
        wait_until(lambda: server.failures[gpp.Reason.UNTRUSTED] == 1)
    [line] = [record.getMessage() for record in caplog.records if "UNTRUSTED" in record.getMessage()]
    assert f"from 127.0.0.1:{port} " in line
    assert "10.0.0.0" not in line and "10.199.0.0" not in line and len(line) < 300


def test_a_flood_of_refusals_logs_one_warning_per_reason_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gevent_proxyproto")
    bad = {"NOT_HDR": b"GET / HTTP/1.1\r\n\r\n", "BAD_HDR": b"PROXY TCP4 1.2.3.4 5.6.7.8 080 443\r\n"}
    with serving(Recorder()) as server:
        server.warning_interval = 0.2
        started = time.monotonic()
        for _ in range(40):
            for data in bad.values():
                with connect(server, data) as client:
                    assert read_all(client) == b""
        wait_until(lambda: sum(server.failures.values()) == 80)  # counters count everything
        flood_seconds = time.monotonic() - started
        for reason in bad:
            wait_until(lambda: sum(refusal_lines(caplog.records, reason)) == 40)  # noqa: B023
            warned, held_back = refusal_lines(caplog.records, reason)
            assert 1 <= warned <= 2 + flood_seconds / server.warning_interval and held_back > 0
        with connect(server, V2_TCP4) as good:  # still serving
            assert read_line(good).startswith(b"('203.0.113.7'")
    assert "Traceback" not in caplog.text


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
            assert line.endswith(f"on {gpp._policy.describe_peer(listener.getsockname())} ended after its header")
            assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "Traceback" not in capfd.readouterr().err


def test_many_bad_connections_leave_no_fd_or_greenlet_behind() -> None:
    recorder = Recorder()
    handlers: list[gevent.Greenlet] = []

    def handle(sock: gevent.socket.socket, address: object) -> None:
        handlers.append(gevent.getcurrent())
        recorder(sock, address)

    with serving(handle, header_timeout=0.5) as server:
        with connect(server, V2_TCP4) as warm:  # imports and lazy set-up happen before the baseline
            read_line(warm)
        # The server closes the connection, then its greenlet ends: the baseline holds neither.
        [warm_handler] = handlers
        warm_handler.join(timeout=5)
        assert warm_handler.dead
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


def _client_hello() -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    with pytest.raises(ssl.SSLWantReadError):
        client_tls_context().wrap_bio(incoming, outgoing).do_handshake()
    return outgoing.read()


def test_one_deadline_covers_header_and_tls_handshake(
    certificate: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A ClientHello trickled after a valid header is cut at header_timeout in all, not per byte."""
    hello = _client_hello()
    interval = 0.02  # each wait is far shorter than header_timeout: only a total deadline can end it
    recorder = Recorder()
    with serving(recorder, ssl_context=_server_context(certificate), header_timeout=0.3) as server:
        with connect(server, V2_TCP4) as client:
            client.setblocking(False)
            sent = 0
            while sent < len(hello):
                try:
                    if client.recv(1) == b"":
                        break  # the server closed the connection
                except BlockingIOError:
                    pass  # nothing from the server yet: trickle the next byte
                except ConnectionResetError:
                    break
                client.send(hello[sent : sent + 1])
                sent += 1
                gevent.sleep(interval)
        assert sent < len(hello), "the server waited for the whole trickled ClientHello"
        wait_until(lambda: server.tls_failures == 1)
    assert recorder.seen == []
    assert "TLS handshake not finished within header_timeout" in caplog.text


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


def test_refusals_held_back_are_reported_when_the_server_stops(caplog: pytest.LogCaptureFixture) -> None:
    # A rate-limited report must not outlive its server: its timer would write
    # into whatever the process does next (another server's log, another test).
    caplog.set_level(logging.WARNING, logger="gevent_proxyproto")
    server = gpp.ProxyStreamServer(("127.0.0.1", 0), lambda sock, address: None)
    server.start()
    for _ in range(3):
        with gevent.socket.create_connection(server.address) as client:
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert read_all(client) == b""
    wait_until(lambda: server.failures[gpp.Reason.NOT_HDR] == 3)
    server.stop()
    lines = [record.getMessage() for record in caplog.records]
    assert len([line for line in lines if "PROXY header refused from" in line]) == 1
    assert [line for line in lines if "suppressed" in line] == [
        f"PROXY header refused on {gpp._policy.describe_peer(server.address)}: suppressed 2 more NOT_HDR since the last warning"
    ]
    assert server.refusals._report_timer is None  # nothing left to fire later
