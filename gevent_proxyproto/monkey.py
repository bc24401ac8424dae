"""Monkey patching: PROXY ports for existing gevent servers and legacy blocking code.

After ``gevent.monkey.patch_all()``, :func:`patch` makes the listening sockets
bound to the given ports expect a PROXY header and report the client's
address; every other socket is left as it was. No other change to the program:

- ``gevent.server.StreamServer`` and its subclasses (``gevent.pywsgi.WSGIServer``):
  a server started on a PROXY port behaves like
  :class:`~gevent_proxyproto.ProxyStreamServer`. The header is read in the
  connection's greenlet, the handler gets the client's address
  (``REMOTE_ADDR``/``REMOTE_PORT`` for pywsgi), TLS comes after the header.
- Everything that calls ``accept()`` on a socket made by ``socket.socket``
  (``socketserver``, ``http.server``, ``wsgiref.simple_server``, hand-written
  accept loops): ``socket.socket`` becomes a :class:`~gevent_proxyproto.ProxySocket`
  subclass that stays a plain gevent socket unless it listens on a PROXY port.
  Then its ``accept()`` reads headers concurrently, so a silent client never
  stalls a single-threaded accept loop, and returns the client's address.
  ``socketserver``'s selector is taught that such a listener is ready when a
  header has been read, not when its file descriptor is.

Sockets that were already listening before :func:`patch` stay plain.
Under the runner, gunicorn's gevent workers (``-k gevent``, ``-k gevent_pywsgi``)
work; its other workers wait on the listening socket themselves, so the runner
refuses them at start, naming ``gevent_proxyproto.gunicorn.GeventWorker`` (which
needs no runner).
Run an unmodified program with::

    python -m gevent_proxyproto.monkey --proxy-ports 8080 script.py [args...]

Like ``gevent.monkey``, this module imports nothing from gevent (nor ``ssl``)
until :func:`patch` is called: the runner calls ``patch_all()`` first.
"""

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: The originals :func:`patch` replaced: ``saved[owner][name]`` was
#: ``owner.name``, ``owner`` being a module name or ``module.Class``
#: (``gevent.monkey.saved``'s shape).
saved: dict[str, dict[str, Any]] = {}

_STREAM_SERVER = "gevent.server.StreamServer"


@dataclass(frozen=True)
class _Settings:
    ports: frozenset[int]
    policy: Any  # a ProxyPolicy (this module imports none of the package until patch())


#: What patch() was given; None when not patched.
_settings: _Settings | None = None
#: The patched socket and socketserver selector classes, built once (they need gevent).
_socket_class: Any = None
_selector_class: Any = None
#: Listening sockets on PROXY ports by file descriptor, for socketserver's selector.
_listeners: Any = None
#: Every TCP port a listener started on while patched: the runner's port-typo check reads it.
_listening_ports: set[int] = set()
#: Seconds the runner gives the program to listen before it checks the ports.
PORT_CHECK_DELAY = 2.0


def patch(
    proxy_ports: Iterable[int] | int,
    *,
    trusted_proxies: Any = None,
    header_timeout: float | None = None,
    max_header_size: int | None = None,
    untrusted: str | None = None,
    allow_v4_in_tcp6: bool | None = None,
    policy: Any = None,
) -> None:
    """Make the listeners bound to ``proxy_ports`` expect a PROXY header.

    Call it after ``gevent.monkey.patch_all()`` (and after any later
    ``gevent.monkey.patch_socket()``) and before the program creates its
    listening sockets; a gevent server object may exist already, as long as
    it has not started. Idempotent: calling it again patches nothing twice
    and replaces the settings, for listeners that start from then on.

    Args:
        proxy_ports: the PROXY ports (an int or several), on any address.
        trusted_proxies: networks allowed to send headers; default loopback.
        header_timeout: seconds for the whole header; default 5.
        max_header_size, untrusted, allow_v4_in_tcp6: as for
            :class:`~gevent_proxyproto.ProxyPolicy`; None keeps its default.
        policy: a :class:`~gevent_proxyproto.ProxyPolicy`, instead of the fields.

    Raises:
        RuntimeError: gevent has not patched ``socket`` yet.
        TypeError: both ``policy`` and some of its fields were given.
        ValueError: a port or setting is invalid.
    """
    global _settings, _socket_class, _selector_class, _listeners
    ports = _port_set(proxy_ports)
    import socket

    import gevent.socket

    if socket.socket is not gevent.socket.socket and not is_patched():
        raise RuntimeError("call gevent.monkey.patch_all() before gevent_proxyproto.monkey.patch()")
    from ._policy import policy_from_keywords

    given = {
        "trusted_proxies": trusted_proxies,
        "header_timeout": header_timeout,
        "max_header_size": max_header_size,
        "untrusted": untrusted,
        "allow_v4_in_tcp6": allow_v4_in_tcp6,
    }
    _settings = _Settings(ports, policy_from_keywords(policy, {name: value for name, value in given.items()
                                                                 if value is not None}))  # fmt: skip
    import socketserver
    import weakref

    import gevent.server

    if _socket_class is None:
        _listeners = weakref.WeakValueDictionary()
        _socket_class = _build_socket_class()
        _selector_class = _build_selector_class(get_original("socketserver", "_ServerSelector"))
    # Again on every call: a program that runs gevent.monkey.patch_socket()
    # after us gets its socket class back from one more patch().
    _patch_item(socket, "socket", _socket_class)
    _patch_item(socketserver, "_ServerSelector", _selector_class)
    _patch_item(gevent.server.StreamServer, "init_socket", _init_stream_server_socket, owner=_STREAM_SERVER)
    from ._tls_hook import install_starttls  # ssl: patch_all() has run

    install_starttls()  # handlers may upgrade connections; a listener wrapped in TLS gets its warning


def unpatch() -> None:
    """Restore what :func:`patch` replaced.

    Listeners and servers already listening keep their behaviour; new ones are plain.
    """
    global _settings
    for owner_name, items in saved.items():
        owner = _resolve(owner_name)
        for name, original in items.items():
            setattr(owner, name, original)
    saved.clear()
    _settings = None


def is_patched() -> bool:
    """True between :func:`patch` and :func:`unpatch`."""
    return bool(saved)


def is_object_patched(owner: str, name: str) -> bool:
    """True when :func:`patch` replaced ``owner.name`` (``"socket"``, ``"socket"``)."""
    return name in saved.get(owner, {})


def get_original(owner: str, name: str) -> Any:
    """``owner.name`` as it was before :func:`patch` (the current one when not patched)."""
    try:
        return saved[owner][name]
    except KeyError:
        return getattr(_resolve(owner), name)


def _patch_item(target: Any, name: str, value: Any, owner: str | None = None) -> None:
    saved.setdefault(owner or target.__name__, {}).setdefault(name, getattr(target, name))
    setattr(target, name, value)


def _resolve(owner: str) -> Any:
    import importlib

    if owner == _STREAM_SERVER:
        return importlib.import_module("gevent.server").StreamServer
    return importlib.import_module(owner)


def _port_set(proxy_ports: Iterable[int] | int) -> frozenset[int]:
    ports = [proxy_ports] if isinstance(proxy_ports, int) else list(proxy_ports)
    for port in ports:
        # bool is an int, and port 0 is "any free port": neither names a listener.
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 0xFFFF:
            raise ValueError(f"a PROXY port is an int in 1..65535, not {port!r}")
    if not ports:
        raise ValueError("no PROXY port given")
    return frozenset(ports)


def _proxy_policy(address: Any) -> Any:
    """The policy for a listener bound to ``address``; None for a plain one."""
    settings = _settings
    if settings is None or not isinstance(address, tuple) or address[1] not in settings.ports:
        return None
    return settings.policy


# -- gevent's StreamServer (and pywsgi.WSGIServer) ----------------------------


def _init_stream_server_socket(server: Any) -> None:
    """``StreamServer.init_socket``, then ProxyStreamServer's connection path on a PROXY port.

    StreamServer never calls ``accept()``: ``do_read`` accepts in the hub and
    spawns ``_handle``. On a PROXY port both become ProxyStreamServer's.
    """
    get_original(_STREAM_SERVER, "init_socket")(server)
    from ._server import ProxyStreamServer, accept_connection, init_proxy_state, read_headers_first

    if isinstance(server, ProxyStreamServer):
        return  # it reads headers itself
    server.__dict__.pop("do_read", None)  # restarted on a plain port: the class's do_read again
    if isinstance(server.address, tuple):
        _listening_ports.add(server.address[1])
    policy = _proxy_policy(server.address)
    if policy is None:
        return
    from functools import partial

    if "refusals" in server.__dict__:  # restarted: a PROXY server already, its counts go on
        server.policy = policy
    else:
        init_proxy_state(server, policy)  # the ProxyServer attributes, as ProxyStreamServer's constructor
    server.do_read = partial(accept_connection, server)
    read_headers_first(server)
    pywsgi = sys.modules.get("gevent.pywsgi")
    if pywsgi is not None and isinstance(server, pywsgi.WSGIServer):
        from ._wsgi import with_proxy_environ  # the PROXY keys in the environ

        server.handler_class = with_proxy_environ(server.handler_class)


# -- socket.socket, for socketserver, http.server, wsgiref and accept loops ----


def _build_socket_class() -> Any:
    import socket as _stdlib_socket

    import gevent.socket

    from ._socket import ProxySocket

    gevent_socket = gevent.socket.socket

    class _SocketType(type):
        # Sockets that gevent makes itself (create_connection, socketpair,
        # fromfd, a plain listener's connections) are gevent sockets, not
        # this subclass: isinstance(sock, socket.socket) holds for them as it
        # did after gevent's own patch.
        def __instancecheck__(cls, instance: Any) -> bool:
            return isinstance(instance, gevent_socket)

        def __subclasscheck__(cls, subclass: Any) -> bool:
            return issubclass(subclass, gevent_socket)

    class socket(ProxySocket, metaclass=_SocketType):  # noqa: N801 - it stands for socket.socket
        """``socket.socket`` while patched: a gevent socket, a PROXY listener on a PROXY port.

        Whether it is one is decided when it starts listening, from the port it is bound to.
        """

        __slots__ = ()

        def listen(self, *args: Any) -> None:
            super().listen(*args)
            if self._policy is None and self.type == _stdlib_socket.SOCK_STREAM:
                address = self.getsockname()
                if isinstance(address, tuple):
                    _listening_ports.add(address[1])
                self._policy = _proxy_policy(address)
                if self._policy is not None:
                    _listeners[self.fileno()] = self

        def _listening_policy(self) -> Any:
            return self._policy  # None: plain

        def detach(self) -> Any:
            # gunicorn's gevent worker detaches its listeners to rebuild them
            # as gevent sockets (whose server is patched by its port); TLS
            # wraps by detaching too, and ProxySSLSocket warns about that.
            if self._policy is not None:
                self._forget()
            return super().detach()

        def close(self) -> None:
            if self._policy is not None:
                self._forget()
            super().close()

        def _forget(self) -> None:
            if _listeners.get(self.fileno()) is self:
                del _listeners[self.fileno()]
            self._policy = None
            acceptor, self._acceptor = self._acceptor, None
            if acceptor is not None:
                acceptor.stop()

    socket.__module__ = "gevent_proxyproto.monkey"  # its name in reprs, also under the runner
    socket.__qualname__ = "socket"
    return socket


def _build_selector_class(base: Any) -> Any:
    import selectors

    class _ServerSelector(base):  # type: ignore[misc]
        """socketserver's selector: a PROXY listener is ready when a connection's header is read.

        Its accept loop takes connections off the kernel's queue as they
        arrive, so its file descriptor alone says nothing. socketserver
        registers exactly one object, its server.
        """

        def select(self, timeout: float | None = None) -> Any:
            keys = self.get_map()
            if len(keys) == 1:
                (key,) = keys.values()
                listener = _listeners.get(key.fd)
                # fileno(): a listener closed through its raw socket (as
                # StreamServer closes) is -1, and its number may be reused.
                if listener is not None and listener.fileno() == key.fd and key.events & selectors.EVENT_READ:
                    return [(key, selectors.EVENT_READ)] if listener._accept_ready(timeout) else []
            return super().select(timeout)

    _ServerSelector.__module__ = "gevent_proxyproto.monkey"
    return _ServerSelector


# -- python -m gevent_proxyproto.monkey ------------------------------------------


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _check_proxy_ports(proxy_ports: list[int]) -> None:
    """Warn when the program listens on TCP ports but on none of the PROXY ports: a typo, most likely."""
    from ._policy import log

    listening = sorted(_listening_ports)
    wanted = ",".join(map(str, sorted(proxy_ports)))
    if listening and not set(listening) & set(proxy_ports):
        log.warning(
            "the program listens on TCP port(s) %s but on none of --proxy-ports %s: no connection is read as "
            "PROXY; check the port numbers",
            ", ".join(map(str, listening)),
            wanted,
        )
    else:
        log.debug("port check: listening on %s; --proxy-ports %s", listening or "no TCP port yet", wanted)


def _monkey_main(argv: list[str] | None = None) -> Any:
    """Run a program with gevent's ``patch_all()`` and :func:`patch` applied, as ``__main__``."""
    import argparse
    import os
    import runpy

    from ._policy import DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_HEADER_SIZE  # pure: no gevent before patch_all()

    parser = argparse.ArgumentParser(
        prog="python -m gevent_proxyproto.monkey",
        description="Run a program with gevent.monkey.patch_all() and PROXY protocol ports patched in.",
    )
    parser.add_argument(
        "--proxy-ports", required=True, metavar="PORT[,PORT...]", help="the ports that expect a PROXY header"
    )
    parser.add_argument(
        "--trusted-proxies", metavar="CIDR[,CIDR...]", help="networks allowed to send headers (default: loopback)"
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        metavar="SECONDS",
        help=f"seconds for the whole header (default: {DEFAULT_HEADER_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-header-size",
        type=int,
        metavar="BYTES",
        help=f"larger headers are refused (default: {DEFAULT_MAX_HEADER_SIZE})",
    )
    parser.add_argument(
        "--untrusted",
        choices=("reject", "direct"),
        help="other sources: closed unread (reject, the default), or served with their own address (direct)",
    )
    parser.add_argument(
        "--allow-v4-in-tcp6", action="store_true", default=None, help="accept nginx's IPv4 addresses in v1 TCP6 lines"
    )
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, help="of gevent_proxyproto's lines: DEBUG, INFO (default)..."
    )
    parser.add_argument("-m", "--module", action="store_true", help="run a module, as python -m does")
    parser.add_argument("program", help="the script (a module with -m)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the program's arguments")
    options = parser.parse_args(argv)
    try:
        ports = [int(port) for port in _comma_list(options.proxy_ports)]
        trusted = _comma_list(options.trusted_proxies) if options.trusted_proxies is not None else None
        settings = {
            "trusted_proxies": trusted,
            "header_timeout": options.header_timeout,
            "max_header_size": options.max_header_size,
            "untrusted": options.untrusted,
            "allow_v4_in_tcp6": options.allow_v4_in_tcp6,
        }
        _port_set(ports)
    except ValueError as error:
        parser.error(str(error))
    import logging

    level = getattr(logging, options.log_level, None)
    if not isinstance(level, int):
        parser.error(f"unknown log level {options.log_level!r}")
    from ._policy import log_to_stderr  # the runner's own lines, leaving the program's logging alone

    log_to_stderr(level)

    # One module whatever its name: run as __main__, this module must be the
    # one a program gets from `import gevent_proxyproto.monkey` (gevent.monkey
    # does the same).
    module = sys.modules[__name__]
    sys.modules["gevent_proxyproto.monkey"] = module
    import gevent_proxyproto

    gevent_proxyproto.monkey = module

    from gevent import monkey

    monkey.patch_all()
    try:
        patch(ports, **settings)
    except ValueError as error:
        parser.error(str(error))
    import gevent

    from ._trust import warn_if_trusting_everyone

    assert _settings is not None
    warn_if_trusting_everyone(_settings.policy.trusted, "--trusted-proxies")
    gevent.spawn_later(PORT_CHECK_DELAY, _check_proxy_ports, ports)

    sys.argv[:] = [options.program, *options.args]
    if _is_gunicorn(options.program, options.module):
        _refuse_unsupported_gunicorn_worker()
    if options.module:
        return runpy.run_module(options.program, run_name="__main__", alter_sys=True)
    sys.path[0] = os.path.dirname(os.path.abspath(options.program))  # as `python script.py` does
    return runpy.run_path(options.program, run_name="__main__")


def _is_gunicorn(program: str, module: bool) -> bool:
    import os

    if module:
        return program.split(".")[0] == "gunicorn"
    return os.path.basename(program) == "gunicorn"


def _refuse_unsupported_gunicorn_worker() -> None:
    """Exit at start, naming the worker to use, when gunicorn's worker class cannot work under the runner.

    gunicorn's gevent workers start gevent servers, which the runner patches by
    port. Its other workers wait on the listening socket themselves (select,
    threads, asyncio), but the PROXY acceptor takes connections off it as
    they arrive: every request would hang.
    """
    # gunicorn's own command line and config file, as the run will read them (sys.argv is set).
    from gunicorn.app.wsgiapp import WSGIApplication
    from gunicorn.workers.ggevent import GeventWorker

    config = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").cfg
    if not issubclass(config.worker_class, GeventWorker):
        sys.stderr.write(
            f"gevent_proxyproto.monkey: gunicorn's worker class {config.worker_class_str!r} cannot serve a PROXY "
            "port under the runner (it waits on the listening socket itself). Use "
            "-k gevent_proxyproto.gunicorn.GeventWorker without the runner (or -k gevent under it).\n"
        )
        raise SystemExit(2)


__all__ = ["get_original", "is_object_patched", "is_patched", "patch", "saved", "unpatch"]


if __name__ == "__main__":
    _monkey_main()
