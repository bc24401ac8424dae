"""Fixtures for the interoperability suite: real senders in front of a PROXY server.

A scenario starts a backend (here an in-process :class:`gevent_proxyproto.ProxyStreamServer`), then a
sender whose generated config names the backend's :class:`Endpoint`. The senders only need an
endpoint, so any server listening on one (a subprocess, the command line) can stand in for the
in-process backend.
"""

import contextlib
import itertools
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

import gevent_proxyproto as gpp

from ..conftest import require_tool
from ..support import Recorder, has_ipv6_loopback
from .peers import (
    NGINX_STREAM_MODULE,
    Certificates,
    Endpoint,
    HAProxy,
    Nginx,
    Sender,
    launch,
    make_certificates,
    which,
)


@dataclass
class Backend:
    """A PROXY server for the senders to connect to."""

    endpoint: Endpoint
    server: Any
    recorder: Recorder


@pytest.fixture
def proxy_server() -> Iterator[Callable[..., Backend]]:
    """Start ``ProxyStreamServer``s on a loopback host, port 0: ``proxy_server("::1", ssl_context=...)``.

    The handler is a :class:`tests.support.Recorder` unless ``handle`` is given.
    """
    servers: list[Any] = []

    def start(host: str = "127.0.0.1", handle: Any = None, **kwargs: Any) -> Backend:
        if ":" in host and not has_ipv6_loopback():
            pytest.skip("no IPv6 loopback on this machine")
        recorder = Recorder()
        server = gpp.ProxyStreamServer((host, 0), handle or recorder, **kwargs)
        server.start()
        servers.append(server)
        return Backend(Endpoint(host, server.address[1]), server, recorder)

    try:
        yield start
    finally:
        for server in servers:
            server.stop(timeout=1)


@pytest.fixture
def workdirs() -> Iterator[Callable[[str], pathlib.Path]]:
    """Fresh directories for senders' configs, under a short path (a UNIX socket path has 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="gpp-interop-") as root:
        counter = itertools.count()

        def make(name: str) -> pathlib.Path:
            path = pathlib.Path(root) / f"{name}-{next(counter)}"
            path.mkdir()
            return path

        yield make


def _stop_and_show(sender: Sender) -> None:
    try:
        sender.stop()
    finally:  # pytest shows a test's captured output only when it failed
        config = sender.config_path.read_text() if sender.config_path.exists() else ""
        print(f"----- {sender.config_path} -----\n{config}----- {' '.join(sender.argv())} -----\n{sender.log}")


@pytest.fixture
def haproxy(workdirs: Callable[[str], pathlib.Path]) -> Iterator[Callable[..., HAProxy]]:
    """Start HAProxy: ``haproxy(lambda fe: f"frontend fe\\n    bind {fe.haproxy}\\n...", fe="::1")``.

    Each keyword names a host to listen on; a free port is picked there and the config function gets
    the :class:`Endpoint`s by the same names. ``global`` and ``defaults`` (mode tcp, one thread, a
    stats socket) are added. The config is validated with ``haproxy -c`` first; the process is stopped
    by PID when the test ends, whatever happened.
    """
    if which("haproxy") is None:
        require_tool("haproxy", "the HAProxy interoperability scenarios run the real binary")
    with contextlib.ExitStack() as cleanup:

        def start(config: Callable[..., str], **hosts: str) -> HAProxy:
            def make(endpoints: dict[str, Endpoint]) -> HAProxy:
                sender = HAProxy(workdirs("haproxy"), endpoints, config(**endpoints))
                cleanup.callback(_stop_and_show, sender)
                return sender

            return launch(make, _usable(hosts))  # type: ignore[return-value]

        yield start


@pytest.fixture
def nginx(workdirs: Callable[[str], pathlib.Path]) -> Iterator[Callable[..., Nginx]]:
    """Start nginx with stream servers: ``nginx(lambda fe: [f"listen {fe.nginx}; proxy_pass ...;"], fe=...)``.

    The config function returns the bodies of ``server { }`` blocks inside ``stream { }``. Validated
    with ``nginx -t`` first, stopped by PID when the test ends.
    """
    if which("nginx") is None:
        require_tool("nginx", "the nginx interoperability scenarios run the real binary")
    if not os.path.exists(NGINX_STREAM_MODULE):
        require_tool("libnginx-mod-stream", f"nginx's stream module ({NGINX_STREAM_MODULE}) sends the PROXY header")
    with contextlib.ExitStack() as cleanup:

        def start(config: Callable[..., Sequence[str]], **hosts: str) -> Nginx:
            def make(endpoints: dict[str, Endpoint]) -> Nginx:
                sender = Nginx(workdirs("nginx"), endpoints, config(**endpoints))
                cleanup.callback(_stop_and_show, sender)
                return sender

            return launch(make, _usable(hosts))  # type: ignore[return-value]

        yield start


def _usable(hosts: dict[str, str]) -> dict[str, str]:
    if any(":" in host for host in hosts.values()) and not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    return hosts


@pytest.fixture
def curl() -> str:
    path = which("curl")
    if path is None:
        require_tool("curl", "curl --haproxy-protocol is one of the real senders")
    return str(path)


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA, a server and a client certificate for the TLS scenarios (made once per session)."""
    if which("openssl") is None:
        require_tool("openssl", "the TLS scenarios make their certificates with the openssl command")
    return make_certificates(tmp_path_factory.mktemp("interop-certs"))
