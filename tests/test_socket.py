"""read_header and ProxySocket: the only code that reads a header from a connection.

The incremental reader agrees with parse() under any chunking, on a replayed
connection (``support.ChunkedSocket``) and on real socket pairs, and reads not
one byte past the header; a listening ProxySocket accepts proxied connections
without slow clients delaying the others. The quick version of
``bench/syscalls.py``.
"""

import socket
import subprocess
import sys
import textwrap
import time
from typing import Any
from unittest import mock

import gevent
import gevent.socket
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gevent_proxyproto as gpp
from gevent_proxyproto import read_header

from . import wire
from .support import V1_TCP4, V2_TCP4, V2_TCP6, ChunkedSocket, open_fds, read_all, read_line, still_open, wait_until

#: Large enough that no generated header is refused for its size: read_header
#: must then agree with parse() exactly.
NO_SIZE_CAP = 0xFFFF + 16
PAYLOAD = b"GET / HTTP/1.1\r\n\r\n"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[start:end] for start, end in zip([0, *points], [*points, len(data)], strict=True)]


def expected_outcome(stream: bytes) -> tuple[Any, ...]:
    try:
        header, length = gpp.parse(stream)
    except gpp.IncompleteHeader:
        return ("incomplete",)
    except gpp.InvalidHeader as invalid:
        return ("invalid", invalid.reason)
    return ("ok", header, length)


def check_reader(stream: bytes, read: Any, unread: Any) -> None:
    """read_header (via ``read()``) agrees with parse() on ``stream`` and reads no byte past the header."""
    expected = expected_outcome(stream)
    try:
        header = read()
    except gpp.InvalidHeader as invalid:
        assert expected == ("invalid", invalid.reason), (expected, invalid)
        return
    except gpp.ConnectionClosed as closed:
        # The stream ended before a complete header: only for an incomplete one.
        assert expected == ("incomplete",), (expected, closed)
        assert closed.reason is (gpp.Reason.ABORT if stream else gpp.Reason.EMPTY), (stream, closed)
        return
    assert expected[0] == "ok", (expected, header)
    assert header == expected[1] and header.raw == expected[1].raw
    assert unread() == stream[expected[2] :]  # the header and not one byte more


#: What follows the header; nothing too (the client of a server-first
#: protocol waits for its greeting).
TRAILERS = [PAYLOAD, b"\r\n", b"PROXY ", wire.SIG, b"\x00", b""]
streams = st.tuples(
    st.one_of(wire.wire_headers, wire.mutated_headers(), wire.arbitrary_bytes),
    st.sampled_from(TRAILERS),
).map(lambda parts: parts[0] + parts[1])
cut_lists = st.lists(st.integers(0, 2000), max_size=12)


# The incremental reader, without a network ----------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        V1_TCP4,
        b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n",
        b"PROXY UNKNOWN\r\n",
        V2_TCP4,
        V2_TCP6,
        gpp.build_v2(command=gpp.Command.LOCAL),
        gpp.build_v2(source=("1.2.3.4", 1), destination=("5.6.7.8", 2), tlvs=[(0xE1, b"x" * 1024)], crc32c=True),
    ],
    ids=["v1-tcp4", "v1-tcp6", "v1-unknown", "v2-tcp4", "v2-tcp6", "v2-local", "v2-1k-tlv"],
)
def test_a_header_in_one_segment_takes_two_recv_calls(header: bytes) -> None:
    """SPEC.md section 8: one peek and one exact read, whatever the header's size."""
    sock = ChunkedSocket([header + PAYLOAD], arrived=True)
    assert read_header(sock, time.monotonic() + 5) == gpp.parse(header)[0]
    assert sock.calls <= 2
    assert sock.unread() == PAYLOAD


def test_an_exact_read_that_comes_back_short_reads_the_rest() -> None:
    # The reader takes a peeked header with one recv: the bytes are in the
    # kernel's buffer. A kernel has never returned fewer; if one did, the rest
    # is read as any other, and not a byte past the header.
    client, connection = gevent.socket.socketpair()
    with client, connection:
        client.sendall(V2_TCP4 + PAYLOAD)
        kernel_socket = connection._sock
        reads: list[int] = []

        def recv(size: int, flags: int = 0) -> bytes:
            if flags:  # the peek
                return kernel_socket.recv(size, flags)  # type: ignore[no-any-return]
            reads.append(size)
            return kernel_socket.recv(size // 2 if len(reads) == 1 else size)  # type: ignore[no-any-return]

        # Set and restored by hand: mock.patch.object() deletes a slot on the
        # way out, and the gevent socket's __getattr__ then recurses.
        connection._sock = mock.Mock(wraps=kernel_socket, recv=recv)
        try:
            assert read_header(connection, time.monotonic() + 5) == gpp.parse(V2_TCP4)[0]
        finally:
            connection._sock = kernel_socket
        assert reads == [len(V2_TCP4), len(V2_TCP4) - len(V2_TCP4) // 2]
        assert connection.recv(1024) == PAYLOAD


@pytest.mark.parametrize(
    ("header", "calls_per_byte", "extra_calls"),
    # A read per byte. v1: the bytes up to the line's lower bound are header,
    # read without a look. v2: past the preamble the reader knows the size.
    [(V1_TCP4, 1, 2), (V2_TCP4, 1, 3)],
    ids=["v1", "v2"],
)
def test_a_header_one_byte_at_a_time_never_spins_and_stops_at_its_end(
    header: bytes, calls_per_byte: int, extra_calls: int
) -> None:
    sock = ChunkedSocket([bytes([byte]) for byte in header] + [PAYLOAD])
    assert read_header(sock, time.monotonic() + 5) == gpp.parse(header)[0]
    assert sock.unread() == PAYLOAD
    # Bounded work per byte (ChunkedSocket fails on a spin), and no recv that
    # finds nothing once a read got fewer bytes than it asked for (the next
    # read waits first). Extra: the first look, which finds nothing, and the
    # first peek (the version is not known before it); for v2 also a look
    # after the preamble's last read, which got all it asked for.
    assert sock.calls <= calls_per_byte * len(header) + extra_calls


def test_a_v2_header_is_parsed_per_preamble_byte_then_once_whole() -> None:
    """Past the preamble the size is known: the rest is read, not parsed a chunk at a time."""
    header = gpp.build_v2(source=("1.2.3.4", 1), destination=("5.6.7.8", 2), tlvs=[(0xE0, b"x" * 200)])
    sock = ChunkedSocket([bytes([byte]) for byte in header] + [PAYLOAD])
    with mock.patch.object(gpp._socket, "parse_prefix", wraps=gpp._socket.parse_prefix) as parse_prefix:
        assert read_header(sock, time.monotonic() + 5) == gpp.parse(header)[0]
    # One parse per preamble byte (a bad version or family is refused at once; the
    # first byte twice: as peeked, then consumed) and one of the whole: none per body byte.
    assert parse_prefix.call_count == 16 + 1 + 1
    assert sock.unread() == PAYLOAD


@given(streams, cut_lists)
def test_reader_agrees_with_parse_in_any_chunking(stream: bytes, cuts: list[int]) -> None:
    sock = ChunkedSocket(split(stream, cuts))
    check_reader(stream, lambda: read_header(sock, time.monotonic() + 60, NO_SIZE_CAP), sock.unread)


@pytest.mark.parametrize(
    "segments",
    [[b"PROXY UNKNOWN"], [b"P"], [V1_TCP4[:-1]]],
    ids=["unknown-split-at-13", "unknown-split-at-1", "tcp4-split-between-cr-and-lf"],
)
def test_a_v1_line_split_before_its_last_bytes_then_silence(segments: list[bytes]) -> None:
    header = V1_TCP4 if segments[0].startswith(V1_TCP4[:-1]) else b"PROXY UNKNOWN\r\n"
    sock = ChunkedSocket([*segments, header[len(segments[0]) :]], then_silent=True)  # waits for a greeting
    assert read_header(sock, time.monotonic() + 5) == gpp.parse(header)[0]


@pytest.mark.parametrize(
    "first",
    [b"P", b"PROXY TCP4 1.2.3.4", b"PROXY"],
    ids=["one-byte", "partial-line", "five-bytes"],
)
def test_bytes_that_cannot_start_a_header_are_refused_at_once(first: bytes) -> None:
    """SPEC.md section 7, fail fast: refused on arrival, not when the deadline ends a long wait."""
    sock = ChunkedSocket([first, b"\r\n"], then_silent=True)
    with pytest.raises(gpp.InvalidHeader):
        read_header(sock, time.monotonic() + 5)


@given(st.one_of(wire.arbitrary_bytes, wire.mutated_headers()), cut_lists)
def test_reader_raises_only_proxy_protocol_errors(data: bytes, cuts: list[int]) -> None:
    sock = ChunkedSocket(split(data, cuts))
    try:
        read_header(sock, time.monotonic() + 60)
    except gpp.ProxyProtocolError:
        pass


# The incremental reader on real sockets --------------------------------------------------------------

# Each example here switches to the gevent hub and back: the number is capped
# so that the long profile stays within the suite's 20 s guard per test.
_SOCKET_EXAMPLES = min(settings.default.max_examples, 1000)


@settings(max_examples=_SOCKET_EXAMPLES)
@given(streams, cut_lists)
def test_reader_over_a_socketpair_in_random_splits(stream: bytes, cuts: list[int]) -> None:
    reader, writer = gevent.socket.socketpair()
    with reader, writer:

        def feed() -> None:
            for chunk in split(stream, cuts):
                writer.sendall(chunk)
                gevent.sleep(0)  # let the reader see a partial header
            writer.shutdown(socket.SHUT_WR)

        feeder = gevent.spawn(feed)

        def unread() -> bytes:
            feeder.join()
            return read_all(reader)

        try:
            check_reader(stream, lambda: read_header(reader, time.monotonic() + 10, NO_SIZE_CAP), unread)
        finally:
            feeder.kill()


class TestProxySocketListener:
    def _listener(self, **kwargs: object) -> gpp.ProxySocket:
        listener = gpp.ProxySocket(socket.AF_INET, socket.SOCK_STREAM, **kwargs)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
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
            conn, address = listener.accept()
            assert address == ("203.0.113.7", 4242)  # the good one, queued behind the stalled ones
            # ... which still wait for their header (none timed out): accept() did not wait for them.
            assert all(still_open(client) for client in stalled) and listener.failures == {}
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

    @pytest.fixture(params=["default", "tiny"], ids=["switch-interval-default", "switch-interval-tiny"])
    def switch_interval(self, request: pytest.FixtureRequest) -> Any:
        # A tiny switch interval makes gevent poll I/O between any two callbacks: the accept
        # loop may then see a new connection before the handshakes it spawned have started.
        saved = gevent.getswitchinterval()
        if request.param == "tiny":
            gevent.setswitchinterval(1e-6)
        yield
        gevent.setswitchinterval(saved)

    @pytest.mark.parametrize(
        ("max_pending", "silent_count"),
        [(4, 4), (4, 12), (300, 900)],
        ids=["at-the-cap", "three-times-the-cap", "burst"],
    )
    @pytest.mark.usefixtures("switch_interval")
    def test_silent_connections_at_the_cap_never_hold_a_good_one_back(
        self, max_pending: int, silent_count: int, caplog: pytest.LogCaptureFixture
    ) -> None:
        # header_timeout is far away: only eviction can make room for the good client.
        with self._listener(max_pending=max_pending, header_timeout=60) as listener:
            # Blocking stdlib connects: the kernel completes them without yielding to the hub, so
            # the accept loop finds them all queued and spawns max_pending handshakes in a burst.
            silent = [socket.create_connection(listener.getsockname()) for _ in range(silent_count)]
            good = socket.create_connection(listener.getsockname())
            good.sendall(V1_TCP4)
            conn, address = listener.accept()
            assert address == ("203.0.113.7", 4242)
            # The oldest were evicted, one per newer connection; the newest still wait for their header.
            evicted = silent_count - (max_pending - 1)
            assert listener.failures == {gpp.Reason.TIMEOUT: evicted}
            assert [read_all(client) for client in silent[:evicted]] == [b""] * evicted
            assert all(still_open(client) for client in silent[evicted:])
            conn.sendall(b"served\n")
            assert read_line(good) == b"served\n"
            for client in silent + [good, conn]:
                client.close()
        evictions = [record.getMessage() for record in caplog.records if "evicted" in record.getMessage()]
        assert 1 <= len(evictions) <= evicted  # rate-limited: one WARNING per reason per interval

    def test_connections_ready_for_accept_are_never_evicted(self) -> None:
        with self._listener(max_pending=2) as listener:
            clients = []
            for _ in range(3):  # the third waits in the kernel's queue until accept() takes one
                client = gevent.socket.create_connection(listener.getsockname())
                client.sendall(V1_TCP4)
                clients.append(client)
            accepted = [listener.accept()[0] for _ in range(3)]
            assert listener.failures == {}
            for sock in clients + accepted:
                sock.close()

    def test_close_wakes_a_waiting_accept(self) -> None:
        listener = self._listener()
        waiter = gevent.spawn(listener.accept)
        gevent.idle()  # the hub has run the waiter until it blocked
        assert not waiter.ready()  # waiting in accept
        listener.close()
        with pytest.raises(OSError):
            waiter.get(timeout=2)

    def test_close_before_the_handshakes_run_leaks_no_fd(self) -> None:
        listener = self._listener()
        clients = [socket.create_connection(listener.getsockname()) for _ in range(50)]  # queued in the kernel
        fds = open_fds()
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # starts the accept loop, which runs at the next yield
        # One yield: the accept loop takes every queued connection and spawns a handshake
        # for each, queued behind this greenlet in the hub, so none has started yet.
        gevent.sleep(0)
        acceptor = listener._acceptor
        assert acceptor is not None
        assert len(acceptor.handshakes) == len(clients) and not acceptor.waiting  # spawned, none started
        assert open_fds() == fds + len(clients)
        listener.close()
        wait_until(lambda: open_fds() <= fds - 1)  # every accepted connection, and the listener
        for client in clients:
            assert read_all(client) == b""  # closed by the server
            client.close()


@pytest.mark.parametrize(
    "make",
    [
        lambda **keywords: gpp.ProxySocket(**keywords),
        lambda **keywords: gpp.ProxyStreamServer(("127.0.0.1", 0), lambda sock, address: None, **keywords),
        lambda **keywords: gpp.ProxyDatagramServer(("127.0.0.1", 0), lambda data, address: None, **keywords),
        lambda **keywords: gpp.DispatcherConfig(**keywords),
    ],
    ids=["ProxySocket", "ProxyStreamServer", "ProxyDatagramServer", "DispatcherConfig"],
)
def test_policy_or_its_fields_never_both(make: Any) -> None:
    # One rule everywhere: neither may silently win over the other.
    with pytest.raises(TypeError, match=r"give policy= or its fields, not both: \['header_timeout'\]"):
        make(policy=gpp.ProxyPolicy(), header_timeout=3.0)
    assert make(header_timeout=3.0) is not None


def test_starttls_support_is_installed_by_a_server_not_by_a_handshake() -> None:
    # In a child: once installed, it stays for the rest of a process.
    code = textwrap.dedent(
        """
        import socket
        import gevent.ssl
        import gevent_proxyproto as gpp
        from gevent_proxyproto._tls_hook import ProxySSLSocket

        ours, theirs = socket.socketpair()
        conn = gpp.ProxySocket(ours.family, ours.type, ours.proto, fileno=ours.detach())
        theirs.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\\r\\n")
        conn.handshake(("127.0.0.1", 1))
        assert conn.proxied_addresses() == (("203.0.113.7", 4242), ("192.0.2.1", 443))
        assert gevent.ssl.SSLContext.sslsocket_class is gevent.ssl.SSLSocket  # a handshake installs nothing
        server = gpp.ProxyStreamServer(("127.0.0.1", 0), lambda sock, address: None)
        server.start()  # a plain server: its handlers may still upgrade with context.wrap_socket
        assert gevent.ssl.SSLContext.sslsocket_class is ProxySSLSocket
        server.stop()
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
