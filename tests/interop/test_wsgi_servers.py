"""HAProxy in front of the WSGI servers: both gunicorn workers and ProxyWSGIServer (examples/wsgi_app.py).

send-proxy and send-proxy-v2 (the app's REMOTE_ADDR/REMOTE_PORT are the client's own socket),
send-proxy-v2-ssl behind an HTTPS frontend (wsgi.url_scheme https), LOCAL health checks and
keep-alive. Each server is a child process on a free port, ready when it says so in its log.
"""

import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import gevent.socket
import pytest

from ..children import Child, children, free_port, gunicorn_argv, http_get, parse_app_answer
from ..conftest import REPO, require_tool
from ..support import client_tls_context
from .peers import Certificates, Endpoint, HAProxy, run_checker, which

pytestmark = pytest.mark.interop

SERVERS = ["GeventWorker", "GeventPyWSGIWorker", "ProxyWSGIServer"]


def _argv(server: str, port: int) -> tuple[list[str], str]:
    """The command line and its readiness line."""
    if server == "ProxyWSGIServer":
        return [sys.executable, str(REPO / "examples" / "wsgi_app.py"), "--port", str(port)], "Listening at"
    return gunicorn_argv(f"gevent_proxyproto.gunicorn.{server}", port, "--keep-alive", "10"), "Booting worker"


@pytest.fixture(params=SERVERS)
def app_server(request: pytest.FixtureRequest) -> Iterator[tuple[Endpoint, Child]]:
    if request.param != "ProxyWSGIServer":
        pytest.importorskip("gunicorn", reason="the gunicorn extra is not installed")
    port = free_port()
    argv, ready = _argv(request.param, port)
    with children() as start:
        child = start(argv)
        child.wait_for(ready)
        yield Endpoint("127.0.0.1", port), child
        # gunicorn stops on SIGTERM, the example on Ctrl-C.
        assert child.stop(signal.SIGINT if request.param == "ProxyWSGIServer" else signal.SIGTERM) == 0
    assert "Traceback" not in child.output, child.output


def _front(backend: Endpoint, server_options: str, bind_options: str = "") -> Callable[..., str]:
    def config(fe: Any) -> str:
        return (
            f"frontend fe\n    bind {fe.haproxy}{bind_options}\n    default_backend be\n"
            f"backend be\n    server s1 {backend.haproxy} {server_options}\n"
        )

    return config


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_keep_alive_requests_see_the_clients_own_address(
    send_proxy: str, app_server: tuple[Endpoint, Child], haproxy: Callable[..., HAProxy]
) -> None:
    backend, child = app_server
    proxy = haproxy(_front(backend, send_proxy), fe="127.0.0.1")
    with gevent.socket.create_connection(proxy["fe"].address, timeout=10) as sock:
        own = sock.getsockname()
        answers = [parse_app_answer(http_get(sock)[1]) for _ in range(3)]  # one connection: keep-alive
    for seen in answers:
        assert (seen["REMOTE_ADDR"], seen["REMOTE_PORT"]) == (own[0], str(own[1]))
        assert (seen["PROXY_ADDR"], seen["PROXY_PORT"]) == proxy["fe"].address[:1] + (str(proxy["fe"].port),)
        assert seen["wsgi.url_scheme"] == "http"
    if "gunicorn" in child.argv:
        child.wait_for(rf"access {own[0]} GET / HTTP/1.1 200", count=3)  # the access log's %(h)s


def test_send_proxy_v2_ssl_behind_an_https_frontend_makes_the_scheme_https(
    app_server: tuple[Endpoint, Child], haproxy: Callable[..., HAProxy], certificates: Certificates
) -> None:
    backend, _ = app_server
    proxy = haproxy(_front(backend, "send-proxy-v2-ssl", f" ssl crt {certificates.server_pem}"), fe="127.0.0.1")
    with gevent.socket.create_connection(proxy["fe"].address, timeout=10) as raw:
        with client_tls_context().wrap_socket(raw, server_hostname="localhost") as tls:
            own = tls.getsockname()
            seen = parse_app_answer(http_get(tls)[1])
    assert (seen["REMOTE_ADDR"], seen["REMOTE_PORT"]) == (own[0], str(own[1]))
    assert (seen["wsgi.url_scheme"], seen["HTTPS"]) == ("https", "on")


def test_local_health_checks_keep_the_server_up_and_quiet(
    app_server: tuple[Endpoint, Child], haproxy: Callable[..., HAProxy]
) -> None:
    backend, child = app_server
    proxy = haproxy(_front(backend, "send-proxy-v2 check inter 100ms"), fe="127.0.0.1")
    # HTTP checks too: LOCAL header, then a request the app answers (the real peer's address).
    http_checks = haproxy(
        lambda fe: (
            f"frontend fe\n    bind {fe.haproxy}\n    default_backend be\n"
            "backend be\n    mode http\n    option httpchk GET /health\n"
            f"    server s1 {backend.haproxy} send-proxy-v2 check inter 100ms\n"
        ),
        fe="127.0.0.1",
    )
    child.wait_for(r"REMOTE_ADDR=127\.0\.0\.1 .*PROXY_PROTOCOL=LOCAL", count=5)  # the app answered 5 checks
    for sender in (proxy, http_checks):
        stat = sender.show_stat()[("be", "s1")]
        assert stat["status"] == "UP" and int(stat["chkdown"]) == 0, stat
    with gevent.socket.create_connection(proxy["fe"].address, timeout=10) as sock:  # clients between the checks
        own = sock.getsockname()
        assert parse_app_answer(http_get(sock)[1])["REMOTE_PORT"] == str(own[1])
    assert "WARNING" not in child.output and "ERROR" not in child.output


def test_the_example_haproxy_config_is_valid(certificates: Certificates, tmp_path: Any) -> None:
    if which("haproxy") is None:
        require_tool("haproxy", "the example config is checked by the real binary")
    text = (REPO / "examples" / "haproxy-gunicorn.cfg").read_text()
    assert "examples/server.pem" in text
    config = tmp_path / "haproxy-gunicorn.cfg"
    config.write_text(text.replace("examples/server.pem", certificates.server_pem))
    run_checker([str(which("haproxy")), "-c", "-f", str(config)], "examples/haproxy-gunicorn.cfg")
