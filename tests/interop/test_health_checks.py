"""HAProxy health checks every 100 ms against every server path: one debug line per check at most, never a traceback.

HAProxy's checks connect, send their header (the 16-byte v2 LOCAL header, or a v1 line naming the
check's own socket) and reset; a plain ``check`` connects and resets. Each path runs with debug
logging, and the test waits until the server has logged ``GPP_HEALTH_CHECKS`` checks (default 60,
about 2 s; 300 is 10 s): it counts what it waits for, it never sleeps.
"""

import logging
import os
import re
import signal
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

import gevent_proxyproto as gpp

from ..children import children, free_port, gunicorn_argv
from ..conftest import REPO
from ..support import is_listening, wait_until
from .peers import Endpoint, HAProxy

CHECKS_WANTED = int(os.environ.get("GPP_HEALTH_CHECKS", "60"))
#: Seconds for them: three servers checked every 100 ms give about 30 a second.
CHECKS_TIMEOUT = 5 + CHECKS_WANTED / 10
pytestmark = [pytest.mark.interop, pytest.mark.guard(30 + CHECKS_TIMEOUT)]

#: What a server logs (at DEBUG) for a check that reset: dropped after its header, refused while reading
#: it (the reset came first), or (gunicorn) met by the HTTP handler; the relay's lines for its own clients.
CHECK_LINE = re.compile(
    r"health check from|PROXY header refused from \S+ on \S+: (EMPTY|ABORT)|Ignoring connection reset"
    r"|Ignoring socket not connected|connection from \S+ (ended|not relayed)"
)
#: HAProxy's three kinds of check against a PROXY port.
PROXY_CHECKS = ["send-proxy-v2 check inter 100ms", "send-proxy check check-send-proxy inter 100ms", "check inter 100ms"]


def checks_config(target: Endpoint, options: list[str], backend_lines: str = "") -> Callable[..., str]:
    def config(fe: Any) -> str:
        servers = "".join(f"    server s{i} {target.haproxy} {option}\n" for i, option in enumerate(options))
        return f"frontend fe\n    bind {fe.haproxy}\n    default_backend be\nbackend be\n{backend_lines}{servers}"

    return config


def assert_all_up(proxy: HAProxy, count: int) -> None:
    for i in range(count):
        stat = proxy.show_stat()[("be", f"s{i}")]
        assert stat["status"] == "UP" and int(stat["chkdown"]) == 0, stat


def assert_quiet(output: str) -> None:
    assert "Traceback" not in output, output
    loud = [line for line in output.splitlines() if re.search(r"WARNING|ERROR|CRITICAL", line)]
    assert loud == [], loud


# -- in-process servers: the log records and stderr of this process -------------------------------


def _wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


@pytest.mark.parametrize("kind", ["ProxyStreamServer", "ProxyWSGIServer"])
def test_in_process_servers(
    kind: str, haproxy: Callable[..., HAProxy], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger="gevent_proxyproto")
    if kind == "ProxyStreamServer":
        server = gpp.ProxyStreamServer(("127.0.0.1", 0), lambda sock, address: sock.sendall(b"hi\n"))
    else:
        server = gpp.ProxyWSGIServer(("127.0.0.1", 0), _wsgi_app, log=None)
    server.start()
    try:
        proxy = haproxy(checks_config(Endpoint("127.0.0.1", server.address[1]), PROXY_CHECKS), fe="127.0.0.1")
        lines = lambda: [r for r in caplog.records if CHECK_LINE.search(r.getMessage())]  # noqa: E731
        wait_until(lambda: len(lines()) >= CHECKS_WANTED, timeout=CHECKS_TIMEOUT)
        assert_all_up(proxy, len(PROXY_CHECKS))
    finally:
        server.stop(timeout=1)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "Traceback" not in capfd.readouterr().err


# -- child processes: their output ---------------------------------------------------------------


def _runner(port: int, *program: str) -> list[str]:
    return [sys.executable, "-m", "gevent_proxyproto.monkey", "--log-level", "DEBUG", "--proxy-ports", str(port),
            *program]  # fmt: skip


def _serve(port: int, workdir: Any) -> list[str]:
    config = workdir / "serve.toml"
    config.write_text(textwrap.dedent(f"""
        proxy_ports = [{port}]
        [proxy_port_mappings]
        {port} = "whoami"
    """))  # fmt: skip
    return [sys.executable, "-m", "gevent_proxyproto", "serve", "--log-level", "DEBUG", "--config", str(config)]


PATHS: dict[str, Callable[[int, Any], list[str]]] = {
    "monkey-socketserver": lambda port, _: _runner(
        port, str(REPO / "examples" / "legacy_socketserver.py"), "--port", str(port)
    ),  # fmt: skip
    "monkey-pywsgi": lambda port, _: _runner(port, str(REPO / "examples" / "pywsgi_app.py"), "--port", str(port)),
    "dispatcher": _serve,
    "gunicorn-GeventWorker": lambda port, _: gunicorn_argv(
        "gevent_proxyproto.gunicorn.GeventWorker", port, "--log-level", "debug"
    ),
    "gunicorn-GeventPyWSGIWorker": lambda port, _: gunicorn_argv(
        "gevent_proxyproto.gunicorn.GeventPyWSGIWorker", port, "--log-level", "debug"
    ),
    "monkey-gunicorn-gevent": lambda port, _: _runner(port, *gunicorn_argv("gevent", port, "--log-level", "debug")[1:]),
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_server_processes(path: str, haproxy: Callable[..., HAProxy], tmp_path: Any) -> None:
    if "gunicorn" in path:
        pytest.importorskip("gunicorn", reason="the gunicorn extra is not installed")
    port = free_port()
    with children() as start:
        server = start(PATHS[path](port, tmp_path))
        if "gunicorn" in path:
            server.wait_for(r"Booting worker with pid")
        wait_until(lambda: is_listening(port) or server.process.poll() is not None, timeout=15)
        proxy = haproxy(checks_config(Endpoint("127.0.0.1", port), PROXY_CHECKS), fe="127.0.0.1")
        output = server.wait_for(CHECK_LINE.pattern, count=CHECKS_WANTED, timeout=CHECKS_TIMEOUT)
        assert_all_up(proxy, len(PROXY_CHECKS))
        # The examples stop on Ctrl-C (SIGINT), gunicorn and the dispatcher on SIGTERM.
        assert (
            server.stop(signal.SIGINT if path.startswith("monkey-") and "gunicorn" not in path else signal.SIGTERM) == 0
        )
    assert_quiet(output)


def test_relay(haproxy: Callable[..., HAProxy], caplog: pytest.LogCaptureFixture) -> None:
    # The relay's listening port is plain. A plain L4 check resets before the handshake completes
    # (nothing is ever accepted), so the check sends a line: each becomes a relayed connection to
    # the PROXY server behind, which ends as the check did.
    caplog.set_level(logging.DEBUG, logger="gevent_proxyproto")
    upstream = gpp.ProxyStreamServer(("127.0.0.1", 0), lambda sock, address: sock.recv(1))
    upstream.start()
    port = free_port()
    try:
        with children() as start:
            relay = start([sys.executable, "-m", "gevent_proxyproto", "forward", "--listen", f"127.0.0.1:{port}",
                           "--to", f"127.0.0.1:{upstream.address[1]}", "--log-level", "DEBUG"])  # fmt: skip
            wait_until(lambda: is_listening(port) or relay.process.poll() is not None, timeout=15)
            check_lines = '    option tcp-check\n    tcp-check connect\n    tcp-check send "ping\\r\\n"\n'
            config = checks_config(Endpoint("127.0.0.1", port), ["check inter 100ms"], check_lines)
            proxy = haproxy(config, fe="127.0.0.1")
            output = relay.wait_for(r"connection from \S+ (ended|not relayed)", count=CHECKS_WANTED // 3,
                                    timeout=CHECKS_TIMEOUT)  # fmt: skip
            assert_all_up(proxy, 1)
            assert relay.stop() == 0
    finally:
        upstream.stop(timeout=1)
    assert_quiet(output)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
