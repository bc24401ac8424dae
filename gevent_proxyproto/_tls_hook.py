"""TLS over PROXY connections: the TLS socket keeps the proxied addresses.

gevent builds a TLS socket from a fresh object on the same file descriptor, so
what a :class:`ProxySocket` knows must be handed over
(:meth:`ProxySocket.proxied_addresses`). :func:`install_starttls` makes
gevent's ``SSLContext.wrap_socket`` build :class:`ProxySSLSocket`, which
behaves exactly like ``gevent.ssl.SSLSocket`` for any other socket; a handler
that upgrades its own connection (StartTLS) then still sees the client's
address. Imported lazily: ``gevent.ssl`` imports ``ssl``, which must come
after ``gevent.monkey.patch_all()``.
"""

import logging
import socket
from typing import Any

import gevent.ssl

_log = logging.getLogger("gevent_proxyproto")


class ProxySSLSocket(gevent.ssl.SSLSocket):  # type: ignore[misc]
    """A gevent TLS socket that keeps a ``ProxySocket``'s proxied addresses.

    Identical to ``gevent.ssl.SSLSocket`` for any other socket.
    """

    def __init__(self, sock: Any = None, *args: Any, **kwargs: Any) -> None:
        if getattr(sock, "_policy", None) is not None and _is_listening(sock):
            # Its TLS handshakes would take each PROXY header for a ClientHello.
            _log.warning(
                "PROXY listener on %s wrapped in TLS: its connections are not read as PROXY any more; "
                "wrap each accepted connection instead, or give the gevent server an ssl_context",
                sock.getsockname(),
            )
        # Duck-typed: a ProxySocket (or a TLS socket over one) hands over
        # what its header said before gevent detaches it.
        header = getattr(sock, "proxy_header", None)
        peer = local = None
        if header is not None:
            peer, local = sock.proxied_addresses()
        super().__init__(sock, *args, **kwargs)
        self.proxy_header = header
        self._proxied_peer = peer
        self._proxied_local = local

    def getpeername(self) -> Any:
        peer = self.__dict__.get("_proxied_peer")
        return peer if peer is not None else self._sock.getpeername()

    def getsockname(self) -> Any:
        local = self.__dict__.get("_proxied_local")
        return local if local is not None else self._sock.getsockname()

    def real_peername(self) -> Any:
        return self._sock.getpeername()

    def proxied_addresses(self) -> tuple[Any, Any]:
        """``(peer, local)`` as the header gives them; ``(None, None)`` when it gives none."""
        return self.__dict__.get("_proxied_peer"), self.__dict__.get("_proxied_local")

    def real_sockname(self) -> Any:
        return self._sock.getsockname()


def _is_listening(sock: Any) -> bool:
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


def install_starttls() -> None:
    """Make gevent's ``SSLContext.wrap_socket`` build :class:`ProxySSLSocket` (idempotent).

    A handler that upgrades its own connection (StartTLS) calls
    ``context.wrap_socket(sock)``: gevent builds the TLS socket from the
    context's ``sslsocket_class``, so that is where the addresses are carried.
    Called explicitly where PROXY connections start, never at import: by a
    PROXY gevent server's ``init_socket`` (``ProxyStreamServer``,
    ``ProxyWSGIServer``, the dispatcher's proxy ports, gunicorn workers, gevent
    servers patched by ``monkey.patch()``), by a listening ProxySocket's first
    ``accept()``, by a Multiplexer with TLS routes, and by ``monkey.patch()``.
    A program that reads headers with ``ProxySocket.handshake()`` on
    connections it accepted itself sets ``context.sslsocket_class =
    ProxySSLSocket`` on the contexts it upgrades them with.
    """
    if gevent.ssl.SSLContext.sslsocket_class is gevent.ssl.SSLSocket:
        gevent.ssl.SSLContext.sslsocket_class = ProxySSLSocket
