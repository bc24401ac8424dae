"""ProxyStreamServer: a gevent StreamServer whose connections start with a PROXY header.

``do_read`` runs in the hub and must never block, so it only accepts; the
header is read in the connection's own greenlet, where gevent does its TLS
handshake too (``wrap_socket_and_handle``). Then ``handle(sock, address)`` runs
with the proxied address. Header first, TLS second, under one deadline.
"""

import functools
import logging
import time
from collections import Counter
from typing import Any

import gevent
from gevent.server import StreamServer

from ._errors import ProxyProtocolError
from ._model import ProxyHeader
from ._socket import ProxyPolicy, ProxySocket, RefusalLog, describe_peer, health_check_ended, is_health_check

log = logging.getLogger("gevent_proxyproto")

_POLICY_FIELDS = ("trusted_proxies", "header_timeout", "max_header_size", "untrusted", "allow_v4_in_tcp6")


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
        init_proxy_state(self, policy, kwargs)
        super().__init__(listener, handle=handle, backlog=backlog, spawn=spawn, **kwargs)

    # Set by init_proxy_state.
    _refusals: RefusalLog
    _tls_refusals: RefusalLog

    @property
    def warning_interval(self) -> float:
        """Seconds between two WARNING lines about refusals of one reason (60); all are counted."""
        return self._refusals.interval

    @warning_interval.setter
    def warning_interval(self, seconds: float) -> None:
        self._refusals.interval = self._tls_refusals.interval = seconds

    def init_socket(self) -> None:
        super().init_socket()
        read_headers_first(self)

    def do_read(self) -> tuple[ProxySocket, Any] | None:
        return accept_connection(self)


# The per-connection logic of a PROXY StreamServer, shared by ProxyStreamServer
# and the StreamServers that gevent_proxyproto.monkey turns into PROXY servers.
# `server` is a StreamServer with the attributes ProxyStreamServer defines:
# policy, failures, tls_failures, _where, _refusals, _tls_refusals.


def init_proxy_state(server: Any, policy: ProxyPolicy | None, kwargs: dict[str, Any]) -> None:
    """Give ``server`` the attributes a PROXY server has, its policy taken from ``policy`` or ``kwargs``.

    The policy fields are popped from ``kwargs``; the rest is for the server class.

    Raises:
        TypeError: both ``policy`` and some of its fields were given.
    """
    policy_fields = {name: kwargs.pop(name) for name in _POLICY_FIELDS if name in kwargs}
    if policy is not None and policy_fields:
        raise TypeError(f"give policy= or its fields, not both: {sorted(policy_fields)}")
    #: How this server treats its connections.
    server.policy = policy if policy is not None else ProxyPolicy(**policy_fields)
    #: Connections refused before the handler, by :class:`Reason`.
    server.failures = Counter()
    #: Connections whose TLS handshake (after a valid header) failed.
    server.tls_failures = 0
    server._where = "?"
    server._refusals = RefusalLog("PROXY header refused")
    server._tls_refusals = RefusalLog("TLS handshake failed")


def read_headers_first(server: Any) -> None:
    """Route a StreamServer's connections through the header, then TLS, then its handler.

    Called after ``StreamServer.init_socket``, which chose ``handle`` or
    ``wrap_socket_and_handle``: both now come after the header. The server's
    ``do_read`` must build :class:`ProxySocket` connections
    (:func:`accept_connection`).
    """
    if server.ssl_args is not None:
        from . import _tls_hook  # gevent.ssl: only for a TLS server

        _tls_hook.install()
        import gevent.ssl

        if server.wrap_socket is gevent.ssl.wrap_socket:  # ssl arguments, not an ssl_context
            server.wrap_socket = _wrap_with_ssl_args
    # The handler is bound now, as gevent binds its own here: close() removes
    # server.handle, and a graceful stop lets every accepted connection finish,
    # even one whose greenlet has not started yet.
    server._handle = functools.partial(_handshake_and_handle, server, server.handle)
    server._where = describe_peer(server.address)
    for attribute, what in (("_refusals", "PROXY header refused"), ("_tls_refusals", "TLS handshake failed")):
        if attribute not in server.__dict__:  # a StreamServer that gevent_proxyproto.monkey turned into a PROXY one
            setattr(server, attribute, RefusalLog(what))
        getattr(server, attribute).where = server._where


def accept_connection(server: Any) -> tuple[ProxySocket, Any] | None:
    """``do_read`` for a PROXY server: accept (never block, this runs in the hub), read nothing."""
    listener = server.socket
    try:
        fd, address = listener._accept()
    except BlockingIOError:
        if not listener.timeout:
            return None
        raise
    return ProxySocket(listener.family, listener.type, listener.proto, fileno=fd), address


def _handshake_and_handle(server: Any, handle: Any, client: ProxySocket, real_peer: Any) -> Any:
    policy = server.policy
    deadline = time.monotonic() + policy.header_timeout
    try:
        header = client.handshake(real_peer, policy, deadline)
    except ProxyProtocolError as error:
        server.failures[error.reason] += 1
        server._refusals.refused(error.reason.value, error.message, real_peer)
        return None  # the server's do_close closes the socket
    if health_check_ended(client, header, real_peer, server._where):
        return None  # the server's do_close closes the socket
    # The accepted address, not a new getpeername(): a health check may
    # already have reset the connection.
    address = client.getpeername() if header is not None and header.source is not None else real_peer
    if server.ssl_args is None:
        return _call_handler(server, handle, client, address, header, real_peer)
    tls = _tls_handshake(server, client, real_peer, deadline)
    if tls is None:
        return None
    with tls:
        return _call_handler(server, handle, tls, address, header, real_peer)


def _tls_handshake(server: Any, client: ProxySocket, real_peer: Any, deadline: float) -> Any:
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
        server._tls_refusals.refused("TLS", str(error), real_peer)
        return None
    tls.timeout = saved_timeout
    return tls


def _call_handler(server: Any, handle: Any, sock: Any, address: Any, header: ProxyHeader | None, real_peer: Any) -> Any:
    try:
        return handle(sock, address)
    except OSError as error:
        # A proxy's health check hangs up or resets once it has its
        # answer (ECONNRESET, EPIPE, ENOTCONN): not worth a traceback.
        if is_health_check(header, real_peer):  # only worth working out here
            log.debug("health check from %s on %s ended: %s", describe_peer(address), server._where, error)
            return None
        raise
