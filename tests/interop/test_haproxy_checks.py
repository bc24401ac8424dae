"""The README's HAProxy health check, with a real HAProxy: a trust mistake marks the server DOWN.

A plain ``check`` is a TCP connect: a server that refuses every PROXY header
(its ``trusted_proxies`` misses HAProxy) still reports ``UP L4OK`` while every
client is refused. The README's check goes through the PROXY path and asks
the service for an answer, so the same mistake shows as DOWN.
"""

import re
from collections.abc import Callable
from typing import Any

import gevent.socket
import pytest

from ..conftest import REPO
from ..support import read_all, wait_until
from .peers import Endpoint, HAProxy

pytestmark = pytest.mark.interop

#: A test knob, not part of the advice: checks every 100 ms instead of 2 s.
FAST_CHECKS = " inter 100ms"


def readme_backend() -> tuple[list[str], str]:
    """The README's HAProxy ``backend app`` block: its option lines and its server line's options."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"\nbackend app\n((?:    .*\n)+)", readme)
    assert block is not None, "README.md has no 'backend app' HAProxy snippet"
    lines = [line.strip() for line in block.group(1).splitlines()]
    [server] = [line for line in lines if line.startswith("server ")]
    options = server.split(None, 3)[3]  # server NAME ADDRESS OPTIONS
    return [line for line in lines if not line.startswith("server ")], options


def answer_http(sock: Any, address: Any) -> None:
    """A minimal HTTP service: what HAProxy's ``option httpchk`` asks."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = sock.recv(4096)
        if not chunk:
            return
        request += chunk
    sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")


def test_readme_check_marks_a_server_with_wrong_trust_down(haproxy: Callable[..., HAProxy], proxy_server: Any) -> None:
    option_lines, server_options = readme_backend()
    assert "check" in server_options.split() and "check-send-proxy" in server_options.split()
    good = proxy_server(handle=answer_http)  # trusts loopback: HAProxy
    wrong = proxy_server(handle=answer_http, trusted_proxies=["192.0.2.0/24"])  # the mistake

    def config(fe: Endpoint, fe_plain: Endpoint) -> str:
        options = "".join(f"    {line}\n" for line in option_lines)
        return (
            f"frontend fe\n    bind {fe.haproxy}\n    default_backend app\n"
            f"backend app\n{options}"
            f"    server good {good.endpoint.haproxy} {server_options}{FAST_CHECKS}\n"
            f"    server wrong {wrong.endpoint.haproxy} {server_options}{FAST_CHECKS}\n"
            # The same mistake under a plain TCP check, for contrast.
            f"frontend fe_plain\n    bind {fe_plain.haproxy}\n    default_backend plain\n"
            f"backend plain\n    server wrong {wrong.endpoint.haproxy} send-proxy-v2 check{FAST_CHECKS}\n"
        )

    proxy = haproxy(config, fe="127.0.0.1", fe_plain="127.0.0.1")

    def checked() -> bool:
        stat = proxy.show_stat()
        return (
            stat[("app", "good")]["check_status"] == "L7OK"
            and stat[("app", "wrong")]["status"] == "DOWN"
            and stat[("plain", "wrong")]["check_status"] == "L4OK"
        )

    wait_until(checked, timeout=15)
    stat = proxy.show_stat()
    assert stat[("app", "good")]["status"] == "UP", stat[("app", "good")]
    # Refused unread: HAProxy sees a reset (SOCKERR), where the plain check saw a connect (L4OK).
    assert stat[("app", "wrong")]["check_status"] in ("SOCKERR", "L7RSP"), stat[("app", "wrong")]
    # The plain check is fooled: UP, while the server refuses every client.
    assert stat[("plain", "wrong")]["status"] == "UP", stat[("plain", "wrong")]
    with gevent.socket.create_connection(proxy["fe_plain"].address) as client:
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert read_all(client) == b""
    # With the README's check, every client goes to the server that answers.
    for _ in range(4):
        with gevent.socket.create_connection(proxy["fe"].address) as client:
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert read_all(client).endswith(b"\r\n\r\nok\n")
    assert wrong.server.failures and not good.server.failures
