"""The WSGI environ of a PROXY connection, and ProxyWSGIServer.

:func:`proxy_environ` is the one place that says what a WSGI application sees
of the PROXY header. Every WSGI path uses it: :class:`ProxyWSGIServer`, pywsgi
servers patched by ``gevent_proxyproto.monkey``, and both gunicorn workers of
``gevent_proxyproto.gunicorn``.
"""

from typing import Any

from gevent.pywsgi import WSGIHandler, WSGIServer

from ._model import Command, ProxyHeader, SSLClient
from ._policy import ProxyPolicy, policy_from_keywords
from ._server import accept_connection, init_proxy_state, read_headers_first

#: The environ key holding the :class:`ProxyHeader` (None for a direct connection).
HEADER_KEY = "gevent_proxyproto.header"


def proxy_environ(environ: dict[str, Any], header: ProxyHeader | None, scheme_from_ssl_tlv: bool = True) -> None:
    """Add what the PROXY header says to a request's WSGI ``environ`` (in place).

    - ``REMOTE_ADDR``/``REMOTE_PORT``: the client, from the header (left as
      they are for LOCAL, UNSPEC and UNKNOWN headers: the real peer);
    - ``PROXY_ADDR``/``PROXY_PORT``: the load balancer's address the client
      connected to (the header's destination), and ``PROXY_PROTOCOL``
      (``TCP4``, ``TCP6``, ``LOCAL``, ``UNSPEC``, ``UNKNOWN``): the keys and
      values gunicorn's own ``--proxy-protocol`` sets;
    - ``gevent_proxyproto.header``: the header, or None for a direct connection;
    - ``wsgi.url_scheme = "https"`` and ``HTTPS = "on"`` when the header's SSL
      TLV says the client connected to the proxy over TLS, unless
      ``scheme_from_ssl_tlv`` is false. Only trusted proxies send headers.

    Args:
        environ: the request's environ, with the real peer's ``REMOTE_ADDR``.
        header: the connection's header, None for a direct connection.
        scheme_from_ssl_tlv: let the SSL TLV set the URL scheme.
    """
    environ[HEADER_KEY] = header
    if header is None:
        return
    environ["PROXY_PROTOCOL"] = _protocol_name(header)
    source, destination = header.source, header.destination
    if isinstance(source, tuple):
        environ["REMOTE_ADDR"] = source[0]
        environ["REMOTE_PORT"] = str(source[1])
    if isinstance(destination, tuple):
        environ["PROXY_ADDR"] = destination[0]
        environ["PROXY_PORT"] = str(destination[1])
    if scheme_from_ssl_tlv and header.tlvs:
        ssl = header.ssl
        if ssl is not None and ssl.client & SSLClient.SSL:
            environ["wsgi.url_scheme"] = "https"
            environ["HTTPS"] = "on"


def _protocol_name(header: ProxyHeader) -> str:
    if header.command == Command.LOCAL:
        return "LOCAL"
    if isinstance(header.source, tuple):
        return "TCP6" if ":" in header.source[0] else "TCP4"
    return "UNKNOWN" if header.version == 1 else "UNSPEC"


class ProxyWSGIHandlerMixin:
    """Adds :func:`proxy_environ` to a pywsgi handler class's ``get_environ``.

    The server may say ``scheme_from_ssl_tlv = False``; the default is True.
    """

    socket: Any
    server: Any

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()  # type: ignore[misc]
        proxy_environ(
            environ,
            getattr(self.socket, "proxy_header", None),
            getattr(self.server, "scheme_from_ssl_tlv", True),
        )
        return environ


class ProxyWSGIHandler(ProxyWSGIHandlerMixin, WSGIHandler):  # type: ignore[misc]
    """gevent's ``WSGIHandler`` with the PROXY keys in the environ."""


_handler_classes: dict[type, type] = {}


def with_proxy_environ(handler_class: type) -> type:
    """``handler_class``, or a subclass of it that adds the PROXY keys (made once per class)."""
    if issubclass(handler_class, ProxyWSGIHandlerMixin):
        return handler_class
    made = _handler_classes.get(handler_class)
    if made is None:
        made = type(handler_class.__name__, (ProxyWSGIHandlerMixin, handler_class), {})
        made.__module__ = handler_class.__module__
        _handler_classes[handler_class] = made
    return made


class ProxyWSGIServer(WSGIServer):  # type: ignore[misc]
    """A :class:`gevent.pywsgi.WSGIServer` for a PROXY port.

    Same calling conventions as WSGIServer, plus the :class:`ProxyPolicy`
    fields (or ``policy=``) as ProxyStreamServer takes them: the header is
    read before the HTTP request, TLS (ssl arguments) comes after it, and the
    application's environ has the keys :func:`proxy_environ` sets.

    Args:
        listener, application, ...: as for WSGIServer. A ``handler_class``
            that is not a :class:`ProxyWSGIHandlerMixin` gets it mixed in.
        policy: a :class:`ProxyPolicy`; or its fields: ``trusted_proxies``,
            ``header_timeout``, ``max_header_size``, ``untrusted``,
            ``allow_v4_in_tcp6``.
        scheme_from_ssl_tlv: when the SSL TLV says the client used TLS, the
            request's ``wsgi.url_scheme`` is ``https``; False turns it off.
    """

    handler_class: type = ProxyWSGIHandler

    def __init__(
        self,
        listener: Any,
        application: Any = None,
        *args: Any,
        policy: ProxyPolicy | None = None,
        scheme_from_ssl_tlv: bool = True,
        **kwargs: Any,
    ) -> None:
        init_proxy_state(self, policy_from_keywords(policy, kwargs))
        #: Whether the SSL TLV may set ``wsgi.url_scheme`` to ``https``.
        self.scheme_from_ssl_tlv = scheme_from_ssl_tlv
        super().__init__(listener, application, *args, **kwargs)
        self.handler_class = with_proxy_environ(self.handler_class)

    def init_socket(self) -> None:
        super().init_socket()
        read_headers_first(self)

    do_read = accept_connection  # the method itself: a call less per connection


__all__ = ["HEADER_KEY", "ProxyWSGIHandler", "ProxyWSGIServer", "proxy_environ", "with_proxy_environ"]
