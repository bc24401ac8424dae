"""ProxyRelay: accept plain TCP connections and forward each to a PROXY port, header first.

The sending side of what :class:`ProxyStreamServer` receives, and the engine of
``gevent-proxyproto forward``: for each client it connects to the upstream,
sends the header (the client's address as source, the address the client
connected to as destination, as HAProxy does) in one ``sendall`` with nothing
else, then copies both directions until both have ended. An end of stream on
one side is passed on as a half-close (``shutdown(SHUT_WR)``) and the other
direction keeps going. An error on one side (a reset, most often) ends both,
and the other side is reset too (closed with ``SO_LINGER`` 0): a backend that
crashes in mid-response must not look, to its client, like a complete answer.
With ``idle_timeout``, a connection with no byte either way for that long is
closed (both sides, with a FIN).
"""

import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.pool
import gevent.socket
from gevent.server import StreamServer

from ._policy import DEFAULT_CONNECT_TIMEOUT, DEFAULT_GRACE_PERIOD, describe_peer
from ._sending import header_for
from ._server import serve_until_signal

log = logging.getLogger("gevent_proxyproto")
#: Bytes read at once in each direction.
_CHUNK = 65536
#: ``SO_LINGER`` on, with 0 seconds: ``close()`` sends a reset and drops unsent data.
_LINGER_ZERO = struct.pack("ii", 1, 0)


class ProxyRelay(StreamServer):  # type: ignore[misc]
    """A :class:`gevent.server.StreamServer` that forwards every connection to a PROXY port.

    Args:
        listener: where clients connect: ``(host, port)`` or a listening socket.
        upstream: the PROXY port's ``(host, port)``; a host name is resolved
            for each connection.
        version: 1 or 2.
        tlvs: ``(type, value)`` pairs (v2), sent in this order after the
            CRC32C TLV.
        crc32c: add a CRC32C TLV (v2), first, as HAProxy does.
        connect_timeout: seconds to connect to the upstream.
        idle_timeout: seconds with no byte either way after which a
            connection is closed; None (the default): never.
        backlog: as for StreamServer.

    Raises:
        ValueError: a bad version or TLV, or TLVs for v1 (before anything listens).
    """

    def __init__(
        self,
        listener: Any,
        upstream: tuple[str, int],
        *,
        version: int = 2,
        tlvs: Iterable[tuple[int, bytes]] = (),
        crc32c: bool = False,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        idle_timeout: float | None = None,
        backlog: int | None = None,
    ) -> None:
        self.upstream = upstream
        self.version = version
        self.tlvs = tuple((tlv_type, bytes(value)) for tlv_type, value in tlvs)
        self.crc32c = crc32c
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        # Options fail here, not on the first client.
        header_for(version, ("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=self.tlvs, crc32c=crc32c)
        #: Every relayed connection's greenlet: what :meth:`stop` waits for.
        self.connections = gevent.pool.Pool()
        #: Connections closed because the upstream could not be reached.
        self.upstream_failures = 0
        super().__init__(listener, self.relay, backlog=backlog, spawn=self.connections)

    def header(self, client: tuple[Any, ...], local: tuple[Any, ...]) -> bytes:
        """The header for a client at ``client`` that connected to ``local``."""
        return header_for(self.version, client, local, tlvs=self.tlvs, crc32c=self.crc32c)

    def relay(self, client: Any, address: Any) -> None:
        """Relay one accepted connection (the handler; the server closes ``client`` after it)."""
        try:
            header = self.header(address, client.getsockname())
        except (OSError, ValueError) as error:  # reset already; or an address a header cannot carry
            log.warning("connection from %s not relayed: %s", describe_peer(address), error)
            return
        try:
            upstream = gevent.socket.create_connection(self.upstream, timeout=self.connect_timeout)
        except OSError as error:
            self.upstream_failures += 1
            log.warning("cannot reach upstream %s for %s: %s", _describe(self.upstream), describe_peer(address),
                        error.strerror or error)  # fmt: skip
            return
        with upstream:
            upstream.settimeout(None)
            try:
                # A relay adds no delay of its own: each chunk goes out as it came in.
                for sock in (client, upstream):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                upstream.sendall(header)  # the header alone, before any byte of the client's
            except OSError as error:
                log.debug("connection from %s ended before the header was sent: %s", describe_peer(address), error)
                return
            log.debug("relaying %s to %s", describe_peer(address), _describe(self.upstream))
            activity = _Activity()
            pumps = [gevent.spawn(_pump, client, upstream, activity), gevent.spawn(_pump, upstream, client, activity)]
            try:
                ended_by = _until_both_end(pumps, self.idle_timeout, activity)
            finally:
                gevent.killall(pumps)
            if ended_by is not None:
                log.debug("connection from %s ended: %s", describe_peer(address), ended_by)

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, give open connections ``timeout`` seconds (default :attr:`stop_timeout`), then end them."""
        self.close()
        if timeout is None:
            timeout = self.stop_timeout
        if not self.connections.join(timeout=timeout):
            log.warning("%d connection(s) still open after the grace period: closing them", len(self.connections))
            self.connections.kill(timeout=1)

    def close_connections(self) -> int:
        """End every open connection now (both sides); returns how many there were."""
        count = len(self.connections)
        self.connections.kill(block=False)
        return count

    def serve_until_signal(
        self, grace_period: float = DEFAULT_GRACE_PERIOD, on_ready: Callable[[], None] | None = None
    ) -> None:
        """Start, serve until SIGTERM or SIGINT (or :meth:`stop`), then shut down gracefully.

        On the first signal the relay stops accepting and open connections get
        ``grace_period`` seconds to finish; a second signal ends them at once
        (as ``serve`` does). ``on_ready`` is called once the relay listens and
        the signals are handled.
        """
        if not self.started:
            self.start()
        # _stop_event: set by close(), as BaseServer.serve_forever waits on it.
        serve_until_signal(lambda: self.stop(grace_period), self.close_connections, self._stop_event,
                           lambda: grace_period, on_ready)  # fmt: skip


class _Activity:
    """When a byte last went through a connection, either way."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = time.monotonic()


def _pump(source: Any, sink: Any, activity: _Activity) -> str | None:
    """Copy ``source`` to ``sink`` until end of stream, then half-close ``sink``.

    On an error the other side is set to reset when it is closed.

    Returns None, or what went wrong (a text: an exception kept as a greenlet's
    value would hold its traceback and frames alive).
    """
    while True:
        try:
            data = source.recv(_CHUNK)
        except OSError as error:
            _reset_on_close(sink)
            return str(error.strerror or error)
        if not data:
            break
        activity.last = time.monotonic()
        try:
            sink.sendall(data)
        except OSError as error:
            _reset_on_close(source)
            return str(error.strerror or error)
    try:
        sink.shutdown(socket.SHUT_WR)  # a FIN stays a FIN
    except OSError as error:
        _reset_on_close(source)
        return str(error.strerror or error)
    return None


def _until_both_end(pumps: list[gevent.Greenlet], idle_timeout: float | None, activity: _Activity) -> str | None:
    """Wait until both directions have ended; returns None, or why the connection ends early (an error, idle)."""
    pending = list(pumps)
    while pending:
        timeout = None
        if idle_timeout is not None:
            timeout = activity.last + idle_timeout - time.monotonic()
            if timeout <= 0:
                return f"idle for {idle_timeout:.1f} s"
        for finished in gevent.wait(pending, timeout=timeout, count=1):
            pending.remove(finished)
            if finished.value is not None:
                return str(finished.value)
    return None


def _reset_on_close(sock: Any) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    except OSError:
        pass  # already closed or reset: nothing to pass on


def _describe(address: Any) -> str:
    return describe_peer(tuple(address)) if isinstance(address, (tuple, list)) else str(address)


__all__ = ["ProxyRelay"]
