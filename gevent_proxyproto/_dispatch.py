"""The multi-port dispatcher: many listening ports, each routed to a named service.

Proxy ports run a :class:`ProxyStreamServer` (header first, then TLS if the
port has it, then the service's handler); plain ports run a gevent
``StreamServer``. All ports are bound before any serves: a port that cannot be
bound stops the start-up with nothing half-started. On SIGTERM or SIGINT the
dispatcher stops accepting, gives open connections ``grace_period`` seconds,
and returns. ``max_connections`` caps the open connections of a process: one
more is closed at once, counted and logged (rate-limited). A service's
``idle_timeout`` bounds each read and write of its handler. Workers and
reloading (SIGHUP) are in ``_supervisor.py``.
"""

import functools
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.pool
from gevent.server import StreamServer

from ._config import ConfigError, DispatcherConfig, TLSConfig, resolve_handler
from ._multiplex import Multiplexer, Route
from ._policy import DEFAULT_WARNING_INTERVAL, RefusalLog, describe_peer
from ._server import ProxyStreamServer, serve_until_signal
from ._services import BUILTIN_HANDLERS, Handler, as_connection_handler
from ._socket import is_health_check

log = logging.getLogger("gevent_proxyproto")

#: Connections the kernel queues per port before the accept loop takes them.
LISTEN_BACKLOG = 1024
#: A connection refused over ``max_connections`` is logged at WARNING at most
#: once in this many seconds (the first at once), the others at DEBUG; every
#: one is counted in :attr:`Dispatcher.refused_connections`. The default of
#: :attr:`Dispatcher.warning_interval`.
REFUSAL_WARNING_INTERVAL = DEFAULT_WARNING_INTERVAL


class StartupError(Exception):
    """A port could not be bound or a TLS certificate loaded."""


def bind_listeners(config: DispatcherConfig) -> dict[int, socket.socket]:
    """Bind and listen on every configured port; all or none.

    Returns plain (non-gevent) sockets, so this may run before forking workers.

    Raises:
        StartupError: naming the port that failed; the others are closed.
    """
    listeners: dict[int, socket.socket] = {}
    try:
        for port in sorted(set(config.proxy_ports) | set(config.plain_ports)):
            listeners[port] = _listen(config.bind, port)
    except OSError as error:
        for listener in listeners.values():
            listener.close()
        raise StartupError(f"cannot listen on {config.bind} port {port}: {error.strerror or error}") from None
    return listeners


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" takes IPv4 too
        listener.bind(address)
        listener.listen(LISTEN_BACKLOG)
    except OSError:
        listener.close()
        raise
    return listener


class Dispatcher:
    """Serve a :class:`DispatcherConfig`: the embeddable form of ``gevent-proxyproto serve``.

    Args:
        config: what to serve; services may name handlers by import path or
            give the callables themselves.
        listeners: sockets already bound for each port (see
            :func:`bind_listeners`); bound by :meth:`start` when None.

    Raises:
        ConfigError: no port to serve, or a handler cannot be imported.
        StartupError: a TLS certificate, key or CA file cannot be loaded.
    """

    def __init__(self, config: DispatcherConfig, listeners: dict[int, socket.socket] | None = None) -> None:
        if not config.proxy_ports and not config.plain_ports:
            # Else serve would wait forever on nothing (gevent's LoopExit).
            raise ConfigError(
                "nothing to serve: no port is configured; add proxy_ports = [PORT] (with a "
                '[proxy_port_mappings] entry PORT = "SERVICE"), or ports = [PORT] in a [services.NAME] table'
            )
        self.config = config
        self.handlers = self._resolve_handlers(config)
        # Loaded here, not at start(), so that `check` finds a missing file too.
        self._tls_args = {port: self._ssl_args(port, tls) for port, tls in config.tls.items()}
        #: The proxy ports' policy: the configuration's.
        self.policy = config.policy
        self._listeners = listeners
        #: Port -> the server listening on it, once started.
        self.servers: dict[int, StreamServer] = {}
        #: Every connection's greenlet, on every port: what shutdown waits for.
        self.connections = gevent.pool.Pool()
        #: Connections closed at once because ``max_connections`` were open.
        self.refused_connections = 0
        self._multiplexers: list[Multiplexer] = []
        self._refusals = RefusalLog("connection refused", f"{config.bind} (any port)", REFUSAL_WARNING_INTERVAL)
        self._stopped = gevent.event.Event()

    @staticmethod
    def _resolve_handlers(config: DispatcherConfig) -> dict[str, Any]:
        handlers: dict[str, Any] = dict(BUILTIN_HANDLERS)
        for name, service in config.services.items():
            if config.is_multiplex(name):
                continue  # one per port: see _multiplexer
            if isinstance(service.handler, str) and service.handler in BUILTIN_HANDLERS:
                handlers[name] = BUILTIN_HANDLERS[service.handler]  # e.g. handler = "whoami"
            else:
                handlers[name] = resolve_handler(service.handler, f"services.{name}.handler")
        return handlers

    def _handler_for(self, port: int) -> tuple[str, Handler]:
        config = self.config
        address = (config.bind, port)
        if port in config.proxy_ports:
            name = config.proxy_port_mappings.get(port)
            if name is None:
                return "(unmapped)", _close_unmapped
        else:
            name = config.plain_ports[port]
        if config.is_multiplex(name):
            return name, self._multiplexer(port)
        return name, self._service_handler(name, address)

    def _service_handler(self, name: str, address: tuple[str, int]) -> Handler:
        """Service ``name``'s handler as ``handler(sock, address)``, its exceptions logged under our logger."""
        handler = as_connection_handler(self.handlers[name], name, address)
        service = self.config.services.get(name)
        if service is not None and service.idle_timeout is not None:
            handler = _with_idle_timeout(handler, service.idle_timeout, name)
        return functools.partial(_log_failures, handler, name)

    def _multiplexer(self, port: int) -> Multiplexer:
        config = self.config
        address = (config.bind, port)
        routes = [
            Route(service.name, match, self._service_handler(service.name, address), tls=service.multiplex_tls)
            for service, match in config.multiplex_routes()
        ]
        tls_context = self._tls_args[port]["ssl_context"] if port in self._tls_args else None
        multiplexer = Multiplexer(routes, config.multiplex_buffer_size, config.multiplex_timeout, tls_context,
                                  describe_peer(address))  # fmt: skip
        self._multiplexers.append(multiplexer)  # stop() closes their refusal logs
        return multiplexer

    def start(self) -> None:
        """Bind (unless given listeners) and start serving every port.

        Raises:
            StartupError: a port or a certificate failed; nothing is left running.
        """
        config = self.config
        listeners = self._listeners if self._listeners is not None else bind_listeners(config)
        for port in config.proxy_ports:
            if port not in config.proxy_port_mappings:
                log.warning(
                    "proxy port %d has no entry in proxy_port_mappings: its connections will be closed "
                    "once their PROXY header is read",
                    port,
                )
        try:
            for port, listener in sorted(listeners.items()):
                # gevent waits for connections on its event loop: accept() must never block.
                listener.setblocking(False)
                name, handler = self._handler_for(port)
                # A multiplex port's TLS comes after the match, from the Multiplexer.
                ssl_args = {} if isinstance(handler, Multiplexer) else self._tls_args.get(port, {})
                if port in config.proxy_ports:
                    server: StreamServer = ProxyStreamServer(
                        listener, handler, spawn=self._spawn_connection, policy=self.policy, **ssl_args
                    )
                else:
                    server = StreamServer(listener, handler, spawn=self._spawn_connection, **ssl_args)
                server.start()
                self.servers[port] = server
                kind = "proxy" if port in config.proxy_ports else "plain"
                tls = " tls" if ssl_args else ""
                log.info("listening on %s (%s%s) -> %s", describe_peer(server.address), kind, tls, name)
        except BaseException:
            self.stop(grace_period=0)
            for listener in listeners.values():
                listener.close()
            raise

    def _spawn_connection(self, function: Any, handle: Any, close: Any, arguments: tuple[Any, ...]) -> Any:
        # Every port's spawn: gevent's BaseServer.do_handle calls it as
        # spawn(function, handle, close, (sock, address)). A Pool of that size
        # would instead stop accepting, leaving clients waiting in the backlog.
        limit = self.config.max_connections
        if limit is not None and len(self.connections) >= limit:
            close(*arguments)
            self._log_refusal(arguments[1], limit)
            return None
        return self.connections.spawn(function, handle, close, arguments)

    def _log_refusal(self, address: Any, limit: int) -> None:
        self.refused_connections += 1
        self._refusals.refused("max_connections", f"{limit} connections are open", address)

    @property
    def warning_interval(self) -> float:
        """Seconds between two WARNING lines about connections refused over ``max_connections`` (60)."""
        return self._refusals.interval

    @warning_interval.setter
    def warning_interval(self, seconds: float) -> None:
        self._refusals.interval = seconds

    @staticmethod
    def _ssl_args(port: int, tls: TLSConfig) -> dict[str, Any]:
        import ssl

        import gevent.ssl

        files = {"certfile": tls.certfile, "keyfile": tls.keyfile, "cafile": tls.cafile if tls.verify_client else None}
        for key, path in files.items():
            # load_cert_chain() says "No such file" without saying which one.
            if path is not None:
                try:
                    with open(path, "rb"):
                        pass
                except OSError as error:
                    raise StartupError(
                        f"tls.{port}.{key}: cannot read {path!r} ({os.path.abspath(path)}): {error.strerror or error}"
                    ) from None
        context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(tls.certfile, tls.keyfile)
        except (OSError, ssl.SSLError) as error:
            key = f" with keyfile {tls.keyfile!r}" if tls.keyfile else ""
            raise StartupError(f"tls.{port}: cannot load certfile {tls.certfile!r}{key}: {error}") from None
        if tls.verify_client:
            context.verify_mode = ssl.CERT_REQUIRED
            if tls.cafile:
                try:
                    context.load_verify_locations(tls.cafile)
                except (OSError, ssl.SSLError) as error:
                    raise StartupError(f"tls.{port}.cafile: cannot load {tls.cafile!r}: {error}") from None
        return {"ssl_context": context}

    def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """Start, then serve until SIGTERM or SIGINT (or :meth:`stop`), then shut down gracefully.

        The first signal stops accepting and gives open connections
        ``grace_period``; a second one closes them at once.

        Args:
            on_ready: called once every port listens and the signals are handled.
        """
        self.start()
        serve_until_signal(self.stop, self.close_connections, self._stopped, lambda: self.config.grace_period,
                           on_ready)  # fmt: skip

    def close_connections(self) -> int:
        """End every open connection now; returns how many there were."""
        count = len(self.connections)
        self.connections.kill(block=False)
        return count

    def stop(self, grace_period: float | None = None) -> None:
        """Stop accepting on every port, wait up to ``grace_period`` for open connections, then end them."""
        if grace_period is None:
            grace_period = self.config.grace_period
        for server in self.servers.values():
            server.close()
        for multiplexer in self._multiplexers:
            multiplexer.close()
        self._refusals.close()
        if not self.connections.join(timeout=grace_period):
            log.warning("%d connection(s) still open after the grace period: closing them", len(self.connections))
            self.connections.kill(timeout=1)
        self._stopped.set()

    def describe(self) -> list[str]:
        """One line per port: what listens where."""
        config = self.config
        lines = []
        for port in sorted(set(config.proxy_ports) | set(config.plain_ports)):
            kind = "PROXY" if port in config.proxy_ports else "plain"
            name = config.proxy_port_mappings.get(port, "(unmapped)") if kind == "PROXY" else config.plain_ports[port]
            tls = " + TLS" if port in config.tls else ""
            lines.append(f"{config.bind}:{port}  {kind}{tls}  -> {name}")
        return lines


def _log_failures(handler: Handler, service: str, sock: Any, address: Any) -> Any:
    """Run a service's handler; its exception is one ERROR with the traceback, under our logger.

    Not gevent's printer on stderr: the line names the service, the client
    and (on a proxy port) the load balancer, for the operator's log. A reset
    or broken pipe is the client hanging up mid-service, not a bug: one DEBUG
    line (as gunicorn's "Ignoring EPIPE"), whichever handler met it.
    """
    real_peername = getattr(sock, "real_peername", None)  # a proxy port's
    hung_up = False
    try:  # now: once the handler fails, the peer may have reset the connection
        real_peer = real_peername() if real_peername is not None else None
    except OSError:  # gone before the handler ran, as a health check may be
        real_peer, hung_up = None, True
    try:
        return handler(sock, address)
    except Exception as error:
        if isinstance(error, OSError) and (hung_up or is_health_check(getattr(sock, "proxy_header", None), real_peer)):
            raise  # ProxyStreamServer logs a health check that hangs up at DEBUG
        via = f" via {describe_peer(real_peer)}" if real_peer is not None and real_peer != address else ""
        if isinstance(error, (ConnectionResetError, BrokenPipeError)):
            log.debug("%s: connection from %s%s hung up mid-service: %s", service, describe_peer(address), via, error)
            return None
        log.exception("%s: handler failed on the connection from %s%s", service, describe_peer(address), via)
        return None


def _close_unmapped(sock: Any, address: Any) -> None:
    # The seed's behaviour: the header is read, then the connection is closed.
    log.info("connection from %s on unmapped proxy port %s closed", describe_peer(address),
             describe_peer(getattr(sock, "real_sockname", sock.getsockname)()))  # fmt: skip


def _with_idle_timeout(handler: Handler, idle_timeout: float, service: str) -> Handler:
    """``handler`` with each read and write bounded by ``idle_timeout``; one that times out ends the connection."""

    def handle(sock: Any, address: Any) -> None:
        sock.settimeout(idle_timeout)
        try:
            handler(sock, address)
        except TimeoutError:  # socket.timeout: from any recv or send of the handler's
            log.info("connection from %s to %s idle for %.1f s: closed", describe_peer(address), service,
                     idle_timeout)  # fmt: skip

    return handle
