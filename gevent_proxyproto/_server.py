"""ProxyStreamServer: a gevent StreamServer whose connections start with a PROXY header.

``do_read`` runs in the hub and must never block, so it only accepts; the
header is read in the connection's own greenlet, where gevent does its TLS
handshake too (``wrap_socket_and_handle``). Then ``handle(sock, address)`` runs
with the proxied address. Header first, TLS second, under one deadline.

The per-connection functions serve any :class:`ProxyServer` (the interface
ProxyStreamServer, ProxyWSGIServer and the StreamServers patched by
``gevent_proxyproto.monkey`` share). :func:`serve_until_signal` is how the
dispatcher, ``serve`` and the relay stop on SIGTERM/SIGINT.
"""

import functools
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import gevent
import gevent.queue
import gevent.socket
from gevent.server import StreamServer

from ._errors import ProxyProtocolError, Reason
from ._policy import ProxyPolicy, RefusalLog, describe_peer, log, policy_from_keywords
from ._socket import ProxySocket, health_check_ended, is_health_check, new_connection

_monotonic = time.monotonic
# The function, not the bound method: a gevent socket's attributes, its methods
# too, are looked up through its __getattr__ hook (~600 instructions for a
# method). The connection is always a ProxySocket (new_connection()).
_handshake = ProxySocket.handshake


def _wrap_with_ssl_args(sock: Any, **ssl_args: Any) -> Any:
    # gevent.ssl.wrap_socket(sock, **ssl_args) with the class that keeps the
    # proxied addresses.
    from ._tls_hook import ProxySSLSocket

    return ProxySSLSocket(sock=sock, **ssl_args)


class ProxyStreamServer(StreamServer):  # type: ignore[misc]
    """A :class:`gevent.server.StreamServer` for a PROXY port.

    Same calling conventions as StreamServer, plus the :class:`ProxyPolicy`
    fields as keyword arguments (or ``policy=``). With ssl arguments or an
    ``ssl_context``, the TLS handshake happens after the header, and the TLS
    socket still reports the proxied addresses.

    Args:
        listener, handle, backlog, spawn, ssl_args: as for StreamServer.
        policy: a :class:`ProxyPolicy`; or its fields: ``trusted_proxies``
            (default loopback only), ``header_timeout`` (5 s),
            ``max_header_size``, ``untrusted`` (``"reject"`` or ``"direct"``),
            ``allow_v4_in_tcp6``.
    """

    def __init__(
        self,
        listener: Any,
        handle: Any = None,
        backlog: int | None = None,
        spawn: Any = "default",
        *,
        policy: ProxyPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        init_proxy_state(self, policy_from_keywords(policy, kwargs))
        super().__init__(listener, handle=handle, backlog=backlog, spawn=spawn, **kwargs)

    # The ProxyServer attributes, set by init_proxy_state.
    policy: ProxyPolicy
    failures: "Counter[Reason]"
    tls_failures: int
    refusals: RefusalLog
    tls_refusals: RefusalLog

    @property
    def warning_interval(self) -> float:
        """Seconds between two WARNING lines about refusals of one reason (60); all are counted."""
        return self.refusals.interval

    @warning_interval.setter
    def warning_interval(self, seconds: float) -> None:
        self.refusals.interval = self.tls_refusals.interval = seconds

    def close(self) -> None:
        super().close()
        self.refusals.close()
        self.tls_refusals.close()

    def init_socket(self) -> None:
        super().init_socket()
        read_headers_first(self)

    # do_read and do_close: accept_connection and close_connection, set below them.


class ProxyServer(Protocol):
    """What the per-connection functions below need of a server: a gevent StreamServer plus these.

    :class:`ProxyStreamServer` and ``ProxyWSGIServer`` have them from
    :func:`init_proxy_state` in their constructor; ``gevent_proxyproto.monkey``
    calls it on the StreamServers it turns into PROXY servers.
    """

    #: How this server treats its connections.
    policy: ProxyPolicy
    #: Connections refused before the handler, by :class:`Reason`.
    failures: "Counter[Reason]"
    #: Connections whose TLS handshake (after a valid header) failed.
    tls_failures: int
    #: The log lines of refused headers; its ``where`` is the listening address.
    refusals: RefusalLog
    #: The log lines of failed TLS handshakes.
    tls_refusals: RefusalLog
    #: ``(family, type, proto)`` of the listener, for its connections (set by :func:`read_headers_first`).
    connection_socket_args: tuple[int, int, int]
    # gevent's StreamServer attributes, used as gevent uses them.
    socket: Any
    address: Any
    ssl_args: Any  # None: no TLS
    wrap_socket: Any
    handle: Any
    _handle: Any


def init_proxy_state(server: Any, policy: ProxyPolicy) -> ProxyServer:
    """Give ``server`` (a gevent StreamServer) the :class:`ProxyServer` attributes; returns it.

    The counters start at zero. Before ``init_socket``: :func:`read_headers_first` completes it.
    """
    server.policy = policy
    server.failures = Counter()
    server.tls_failures = 0
    server.refusals = RefusalLog("PROXY header refused")
    server.tls_refusals = RefusalLog("TLS handshake failed")
    return server  # type: ignore[no-any-return]


def read_headers_first(server: ProxyServer) -> None:
    """Route a StreamServer's connections through the header, then TLS, then its handler.

    Called after ``StreamServer.init_socket``, which chose ``handle`` or
    ``wrap_socket_and_handle``: both now come after the header. The server's
    ``do_read`` must build :class:`ProxySocket` connections
    (:func:`accept_connection`). Installs StartTLS support (see
    :func:`~gevent_proxyproto._tls_hook.install_starttls`): any handler may
    upgrade its connection itself, and ``gevent.ssl`` may be imported now,
    the server starting after any ``patch_all()``.
    """
    from ._tls_hook import install_starttls

    install_starttls()
    if server.ssl_args is not None:
        import gevent.ssl

        if server.wrap_socket is gevent.ssl.wrap_socket:  # ssl arguments, not an ssl_context
            server.wrap_socket = _wrap_with_ssl_args
    # The handler is bound now, as gevent binds its own here: close() removes
    # server.handle, and a graceful stop lets every accepted connection finish,
    # even one whose greenlet has not started yet.
    server._handle = functools.partial(_handshake_and_handle, server, server.handle)
    # Read once: on a gevent socket each is a property that converts to an enum, three calls a connection.
    listener = server.socket
    server.connection_socket_args = (listener.family, listener.type, listener.proto)
    server.refusals.where = server.tls_refusals.where = describe_peer(server.address)


def accept_connection(server: ProxyServer) -> tuple[ProxySocket, Any] | None:
    """``do_read`` for a PROXY server: accept (never block, this runs in the hub), read nothing."""
    listener = server.socket
    try:
        fd, address = listener._accept()
    except BlockingIOError:
        if not listener.timeout:
            return None
        raise
    family, type, proto = server.connection_socket_args
    return new_connection(family, type, proto, fd), address


_close_gevent_socket = gevent.socket.socket.close


def close_connection(server: ProxyServer, sock: ProxySocket, *args: Any) -> None:
    """``do_close`` for a PROXY server: gevent's close of the connection.

    Not through :meth:`ProxySocket.close`, whose own part is for a listening
    socket (its acceptor): a call less on every connection.
    """
    _close_gevent_socket(sock)


# The functions themselves as the methods: a call less per connection each.
ProxyStreamServer.do_read = accept_connection
ProxyStreamServer.do_close = close_connection


def _handshake_and_handle(server: ProxyServer, handle: Any, client: ProxySocket, real_peer: Any) -> Any:
    policy = server.policy
    deadline = _monotonic() + policy.header_timeout
    try:
        header = _handshake(client, real_peer, policy, deadline)
    except ProxyProtocolError as error:
        server.failures[error.reason] += 1
        server.refusals.refused(error.reason.value, error.message, real_peer)
        return None  # the server's do_close closes the socket
    health_check = is_health_check(header, real_peer)
    if health_check and health_check_ended(client, real_peer, server.refusals.where):
        return None  # the server's do_close closes the socket
    # The accepted address when the header names none (LOCAL, UNSPEC,
    # direct), not a new getpeername(): a health check may already have
    # reset the connection.
    peer = client._peer
    address = peer if peer is not None else real_peer
    if server.ssl_args is None:
        sock = client
    else:
        sock = _tls_handshake(server, client, real_peer, deadline)
        if sock is None:
            return None
    try:
        return handle(sock, address)
    except OSError as error:
        # A proxy's health check hangs up or resets once it has its
        # answer (ECONNRESET, EPIPE, ENOTCONN): not worth a traceback.
        if health_check:
            log.debug("health check from %s on %s ended: %s", describe_peer(address), server.refusals.where, error)
            return None
        raise
    finally:
        if sock is not client:
            sock.close()  # the TLS socket (the server's do_close closes the connection under it)


def _tls_handshake(server: ProxyServer, client: ProxySocket, real_peer: Any, deadline: float) -> Any:
    saved_timeout = client.timeout
    remaining = max(deadline - time.monotonic(), 0.001)
    # The socket's timeout bounds each wait of the handshake, not all of it: a
    # ClientHello trickled a byte at a time would restart it at every byte. The
    # gevent.Timeout bounds the whole (nginx's ssl_handshake_timeout is a total
    # too). Its exception is an OSError, so gevent's SSLSocket closes itself.
    client.timeout = remaining
    try:
        with gevent.Timeout(remaining, TimeoutError("TLS handshake not finished within header_timeout")):
            tls = server.wrap_socket(client, **server.ssl_args)
    except (OSError, ValueError) as error:  # ssl.SSLError and socket.timeout are OSErrors
        server.tls_failures += 1
        server.tls_refusals.refused("TLS", str(error), real_peer)
        return None
    tls.timeout = saved_timeout
    return tls


# -- serving until a signal: the dispatcher, `serve` in one process, the relay ----------------------

#: What stops a server: the first one gracefully, a second one at once.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def serve_until_signal(
    stop: Callable[[], None],
    close_connections: Callable[[], int],
    stopped: Any,
    grace_period: Callable[[], float],
    on_ready: Callable[[], None] | None = None,
    on_hangup: Callable[[], None] | None = None,
) -> None:
    """Serve (already started) until SIGTERM or SIGINT, or until ``stopped`` is set; then return once stopped.

    The first SIGTERM or SIGINT is logged and runs ``stop`` in a greenlet: it
    stops accepting, gives open connections ``grace_period()`` seconds, then
    ends the rest. A second SIGTERM or SIGINT, while they drain, ends them at
    once (``close_connections``, which returns how many it closes). The
    dispatcher (:meth:`Dispatcher.serve_forever`), ``serve`` in one process
    and the relay (:meth:`ProxyRelay.serve_until_signal`) all stop this way.

    Args:
        stop: the graceful stop; returns once every connection has ended.
        close_connections: ends every open connection now; returns how many there were.
        stopped: an event (``wait()``), set when the server stops without a
            signal (its ``stop()`` called by other code) or by ``stop``.
        grace_period: the seconds ``stop`` gives, for the log line.
        on_ready: called once the signals are handled.
        on_hangup: called (in this greenlet) on SIGHUP; None leaves SIGHUP alone.
    """
    events: gevent.queue.Queue[int | None] = gevent.queue.Queue()
    numbers = (*STOP_SIGNALS, signal.SIGHUP) if on_hangup is not None else STOP_SIGNALS
    handlers = [gevent.signal_handler(number, events.put, number) for number in numbers]
    watcher = gevent.spawn(stopped.wait)
    watcher.link(lambda _: events.put(None))
    stopper: gevent.Greenlet | None = None
    try:
        if on_ready is not None:
            on_ready()
        while True:
            number = events.get()
            if number is None:  # stopped, or the graceful stop has finished
                if stopper is None or stopper.ready():
                    return
            elif number == signal.SIGHUP:
                assert on_hangup is not None
                on_hangup()
            elif stopper is None:
                log.info("%s: no longer accepting; open connections have %.1f s", signal.Signals(number).name,
                         grace_period())  # fmt: skip
                stopper = gevent.spawn(stop)
                stopper.link(lambda _: events.put(None))
            else:
                log.info("%s again: closing %d open connection(s) now", signal.Signals(number).name,
                         close_connections())  # fmt: skip
    finally:
        for handler in handlers:
            handler.cancel()
        watcher.kill(block=False)
