"""gunicorn workers for a PROXY port: gunicorn's gevent workers, the header read first.

Use::

    gunicorn -k gevent_proxyproto.gunicorn.GeventWorker -b 0.0.0.0:8000 app:app
    gunicorn -k gevent_proxyproto.gunicorn.GeventPyWSGIWorker -b 0.0.0.0:8000 app:app

Each connection's header is read under a :class:`~gevent_proxyproto.ProxyPolicy`
before the HTTP parser sees a byte, then TLS (``--certfile``) under the same
deadline, then gunicorn serves its requests with the client's address
(``REMOTE_ADDR``, the access log's ``%(h)s``) and the keys of
:func:`gevent_proxyproto._wsgi.proxy_environ` (``PROXY_ADDR``,
``gevent_proxyproto.header``, ``https`` from the SSL TLV).

Trust is gunicorn's own ``--proxy-allow-from`` (default ``127.0.0.1,::1``;
CIDRs; ``*``). A header is required on every connection. The other settings
are environment variables, also settable with gunicorn's ``-e NAME=VALUE`` or
``raw_env`` in its config file:

``GEVENT_PROXYPROTO_HEADER_TIMEOUT``
    seconds for the whole header and the TLS handshake after it (default 5);
``GEVENT_PROXYPROTO_MAX_HEADER_SIZE``
    the largest header accepted, in bytes (default 16384);
``GEVENT_PROXYPROTO_MIXED``
    ``1``: sources outside ``--proxy-allow-from`` connect directly, without a
    header (HAProxy's ``expect-proxy layer4 if <acl>``); nothing is sniffed;
``GEVENT_PROXYPROTO_SCHEME_FROM_SSL_TLV``
    ``0``: the SSL TLV does not make ``wsgi.url_scheme`` ``https``.

gunicorn's own ``--proxy-protocol`` would parse a second header: with these
workers it is refused at start.
"""

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

try:
    import gunicorn.workers.ggevent as _ggevent
except ImportError as error:  # gunicorn is an optional extra
    if error.name not in ("gunicorn", "gunicorn.workers", "gunicorn.workers.ggevent"):
        raise
    raise ImportError(
        "gevent_proxyproto.gunicorn needs gunicorn: pip install 'gevent-proxyproto[gunicorn]'", name=error.name
    ) from error

from ._policy import UNTRUSTED_DIRECT, UNTRUSTED_REJECT, ProxyPolicy
from ._server import ProxyStreamServer
from ._wsgi import ProxyWSGIServer, proxy_environ, with_proxy_environ

ENV_HEADER_TIMEOUT = "GEVENT_PROXYPROTO_HEADER_TIMEOUT"
ENV_MAX_HEADER_SIZE = "GEVENT_PROXYPROTO_MAX_HEADER_SIZE"
ENV_MIXED = "GEVENT_PROXYPROTO_MIXED"
ENV_SCHEME_FROM_SSL_TLV = "GEVENT_PROXYPROTO_SCHEME_FROM_SSL_TLV"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker applies to its connections, from gunicorn's config and the environment."""

    policy: ProxyPolicy
    scheme_from_ssl_tlv: bool

    @classmethod
    def from_config(cls, cfg: Any, environ: Mapping[str, str] = os.environ) -> "WorkerSettings":
        """Read the settings.

        Raises:
            ValueError: a setting is invalid, or gunicorn's own
                ``--proxy-protocol`` is on; the message says which and what to do.
        """
        if getattr(cfg, "proxy_protocol", "off") not in ("off", None, False):
            raise ValueError(
                f"--proxy-protocol {cfg.proxy_protocol} is gunicorn's own PROXY parser: gevent_proxyproto's "
                "worker already reads the header, so remove --proxy-protocol (and proxy_protocol from the "
                "config file); trust stays with --proxy-allow-from"
            )
        fields: dict[str, Any] = {
            "trusted_proxies": list(cfg.proxy_allow_ips),
            "untrusted": UNTRUSTED_DIRECT if _flag(environ, ENV_MIXED, False) else UNTRUSTED_REJECT,
        }
        if environ.get(ENV_HEADER_TIMEOUT):
            fields["header_timeout"] = _number(environ, ENV_HEADER_TIMEOUT, float)
        if environ.get(ENV_MAX_HEADER_SIZE):
            fields["max_header_size"] = _number(environ, ENV_MAX_HEADER_SIZE, int)
        return cls(ProxyPolicy(**fields), _flag(environ, ENV_SCHEME_FROM_SSL_TLV, True))


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    text = environ.get(name)
    if text is None:
        return default
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={text!r}: expected 1 or 0")


def _number(environ: Mapping[str, str], name: str, kind: Any) -> Any:
    try:
        return kind(environ[name])
    except ValueError:
        raise ValueError(f"{name}={environ[name]!r}: expected a number") from None


def _route_library_log(worker: Any) -> None:
    # Refusals and health-check lines go where gunicorn's error log goes, at its level.
    error_log = getattr(worker.log, "error_log", None)
    if error_log is None:
        return
    library_log = logging.getLogger("gevent_proxyproto")
    library_log.handlers = list(error_log.handlers)
    library_log.setLevel(error_log.level)
    library_log.propagate = False


class _ProxyWorkerMixin:
    """What both workers add to gunicorn's gevent worker."""

    cfg: Any
    log: Any
    wsgi: Any
    settings: WorkerSettings

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Called by gunicorn's arbiter at start: a bad setting stops it there, with one clear line."""
        try:
            WorkerSettings.from_config(cfg)
        except ValueError as error:
            log.error("%s: %s", cls.__name__, error)
            raise SystemExit(1) from None

    def init_process(self) -> None:
        self.settings = WorkerSettings.from_config(self.cfg)
        _route_library_log(self)
        super().init_process()  # type: ignore[misc]


class GeventWorker(_ProxyWorkerMixin, _ggevent.GeventWorker):  # type: ignore[misc]
    """gunicorn's ``-k gevent`` worker for a PROXY port.

    Its connections go through :class:`~gevent_proxyproto.ProxyStreamServer`
    (header, then TLS) to gunicorn's own HTTP handling.
    """

    @property
    def server_class(self) -> Any:
        # gunicorn's run() builds self.server_class(listener, application=...,
        # spawn=pool, log=..., handler_class=..., environ=..., **ssl_args) for
        # every listener, and keeps the rest of its life cycle (graceful
        # shutdown, notify) for us: the server passes connections back to
        # this worker's handle().
        worker = self

        def make(listener: Any, spawn: Any = "default", **kwargs: Any) -> _ConnectionServer:
            return _ConnectionServer(worker, listener, spawn, kwargs.get("ssl_context"))

        return make

    def load_wsgi(self) -> None:
        super().load_wsgi()
        application = self.wsgi
        scheme_from_ssl_tlv = self.settings.scheme_from_ssl_tlv

        def with_proxy_keys(environ: dict[str, Any], start_response: Any) -> Any:
            # gunicorn built the environ with the client's address already
            # (handle() got it); the rest comes from the header.
            proxy_environ(environ, getattr(environ.get("gunicorn.socket"), "proxy_header", None), scheme_from_ssl_tlv)
            return application(environ, start_response)

        self.wsgi = with_proxy_keys


class _ConnectionServer(ProxyStreamServer):
    """One listener of a :class:`GeventWorker`: header, TLS, then the worker's handle()."""

    def __init__(self, worker: GeventWorker, listener: Any, spawn: Any, ssl_context: Any) -> None:
        ssl_args = {"ssl_context": ssl_context} if ssl_context is not None else {}
        super().__init__(listener, self._handle_connection, spawn=spawn, policy=worker.settings.policy, **ssl_args)
        self.worker = worker
        self.listener_socket = listener
        if worker.cfg.workers > 1:
            self.max_accept = 1  # as gunicorn's gevent worker: share the connections between workers

    def _handle_connection(self, client: Any, address: Any) -> None:
        self.worker.handle(self.listener_socket, client, address)


class GeventPyWSGIWorker(_ProxyWorkerMixin, _ggevent.GeventPyWSGIWorker):  # type: ignore[misc]
    """gunicorn's ``-k gevent_pywsgi`` worker for a PROXY port (a :class:`~gevent_proxyproto.ProxyWSGIServer`)."""

    wsgi_handler = with_proxy_environ(_ggevent.PyWSGIHandler)

    @property
    def server_class(self) -> Any:
        settings = self.settings

        def make(listener: Any, *args: Any, **kwargs: Any) -> ProxyWSGIServer:
            return ProxyWSGIServer(
                listener, *args, policy=settings.policy, scheme_from_ssl_tlv=settings.scheme_from_ssl_tlv, **kwargs
            )

        return make


__all__ = ["GeventPyWSGIWorker", "GeventWorker", "WorkerSettings"]
