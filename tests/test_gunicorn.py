"""gevent_proxyproto.gunicorn: both workers in a real gunicorn (a child process), and the runner with gunicorn."""

import subprocess
import sys
import tempfile
from typing import Any

import gevent.socket
import pytest

import gevent_proxyproto as gpp

from .children import children, free_port, gunicorn_argv, http_get, parse_app_answer
from .conftest import REPO
from .support import client_tls_context, make_certificate, read_all

pytest.importorskip("gunicorn", reason="the gunicorn extra is not installed")  # in the test extra

WORKERS = ["gevent_proxyproto.gunicorn.GeventWorker", "gevent_proxyproto.gunicorn.GeventPyWSGIWorker"]
BOOTED = r"Booting worker with pid"
CLIENT = ("203.0.113.7", 4242)
FRONT = ("192.0.2.1", 443)
SSL_TLV = (gpp.TLVType.SSL, bytes([gpp.SSLClient.SSL]) + b"\0\0\0\0")


def connect(port: int, header: bytes = b"") -> Any:
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=10)
    if header:
        sock.sendall(header)
    return sock


@pytest.mark.parametrize("worker", WORKERS)
def test_keep_alive_requests_keep_the_client_address_and_the_access_log_shows_it(worker: str) -> None:
    port = free_port()
    with children() as start:
        server = start(gunicorn_argv(worker, port, "--keep-alive", "10"))
        server.wait_for(BOOTED)
        header = gpp.build_v2(source=CLIENT, destination=FRONT, tlvs=[SSL_TLV])
        with connect(port, header) as sock:
            answers = [parse_app_answer(http_get(sock)[1]) for _ in range(3)]
        for seen in answers:
            assert (seen["REMOTE_ADDR"], seen["REMOTE_PORT"]) == ("203.0.113.7", "4242")
            assert (seen["PROXY_ADDR"], seen["PROXY_PORT"], seen["PROXY_PROTOCOL"]) == ("192.0.2.1", "443", "TCP4")
            assert (seen["wsgi.url_scheme"], seen["HTTPS"]) == ("https", "on")  # the SSL TLV's client flag
            assert seen["gevent_proxyproto.header"].startswith("ProxyHeader(version=2")
        server.wait_for(r"access 203\.0\.113\.7 GET / HTTP/1\.1 200", count=3)


@pytest.mark.parametrize("worker", WORKERS)
def test_a_connection_without_a_header_is_refused_with_one_line(worker: str) -> None:
    port = free_port()
    with children() as start:
        server = start(gunicorn_argv(worker, port))
        server.wait_for(BOOTED)
        with connect(port) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_all(sock) == b""  # closed (reset: the request was left unread)
        output = server.wait_for(r"PROXY header refused from 127\.0\.0\.1:\d+ on 127\.0\.0\.1:\d+: NOT_HDR")
        assert "Traceback" not in output


@pytest.mark.parametrize("worker", WORKERS)
def test_proxy_allow_from_decides_trust_and_mixed_mode_lets_other_sources_in_directly(worker: str) -> None:
    port = free_port()
    with children() as start:
        strict = start(gunicorn_argv(worker, port, "--proxy-allow-from", "10.0.0.0/8"))
        strict.wait_for(BOOTED)
        with connect(port, gpp.build_v2(source=CLIENT, destination=FRONT)) as sock:
            assert read_all(sock) == b""
        strict.wait_for(r"UNTRUSTED: 127\.0\.0\.1:\d+ is not in trusted_proxies")
        strict.stop()

        port = free_port()
        mixed = start(gunicorn_argv(worker, port, "--proxy-allow-from", "10.0.0.0/8"),
                      env={"GEVENT_PROXYPROTO_MIXED": "1"})  # fmt: skip
        mixed.wait_for(BOOTED)
        with connect(port) as sock:  # loopback is not a proxy here: a direct client, no header
            seen = parse_app_answer(http_get(sock)[1])
        assert seen["REMOTE_ADDR"] == "127.0.0.1" and seen["gevent_proxyproto.header"] == "None"
        assert seen["PROXY_ADDR"] == "None"


@pytest.mark.parametrize("worker", WORKERS)
def test_tls_with_certfile_comes_after_the_header(worker: str) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as directory, children() as start:
        cert, key = make_certificate(directory)
        server = start(gunicorn_argv(worker, port, "--certfile", cert, "--keyfile", key))
        server.wait_for(BOOTED)
        with connect(port, gpp.build_v1(source=CLIENT, destination=FRONT)) as raw:
            with client_tls_context().wrap_socket(raw) as tls:
                seen = parse_app_answer(http_get(tls)[1])
        assert seen["REMOTE_ADDR"] == "203.0.113.7" and seen["wsgi.url_scheme"] == "https"


@pytest.mark.parametrize("worker", WORKERS)
def test_header_timeout_from_the_environment(worker: str) -> None:
    port = free_port()
    with children() as start:
        server = start(gunicorn_argv(worker, port, "--log-level", "debug"),
                       env={"GEVENT_PROXYPROTO_HEADER_TIMEOUT": "0.5"})  # fmt: skip
        server.wait_for(BOOTED)
        with connect(port, b"PROXY TCP4 ") as sock:  # and nothing more
            assert read_all(sock) == b""  # closed by the worker at the deadline
        server.wait_for(r"PROXY header refused from .*TIMEOUT")


@pytest.mark.parametrize(
    ("options", "env", "message"),
    [
        (["--proxy-protocol", "v2"], {}, "--proxy-protocol v2 is gunicorn's own PROXY parser"),
        ([], {"GEVENT_PROXYPROTO_MAX_HEADER_SIZE": "big"}, "GEVENT_PROXYPROTO_MAX_HEADER_SIZE='big'"),
        ([], {"GEVENT_PROXYPROTO_MIXED": "maybe"}, "GEVENT_PROXYPROTO_MIXED='maybe': expected 1 or 0"),
    ],
)
@pytest.mark.parametrize("worker", WORKERS)
def test_bad_settings_stop_gunicorn_at_start(
    worker: str, options: list[str], env: dict[str, str], message: str
) -> None:
    with children() as start:
        server = start(gunicorn_argv(worker, free_port(), *options), env=env)
        assert server.wait_exit() != 0
        assert message in server.output and "Booting worker" not in server.output


def test_importing_the_workers_without_gunicorn_says_what_to_install() -> None:
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'gunicorn':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "try:\n"
        "    import gevent_proxyproto.gunicorn\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert (
        result.stdout.strip() == "gevent_proxyproto.gunicorn needs gunicorn: pip install 'gevent-proxyproto[gunicorn]'"
    )


def _runner_argv(port: int, worker: str) -> list[str]:
    argv = gunicorn_argv(worker, port)
    return [sys.executable, "-m", "gevent_proxyproto.monkey", "--proxy-ports", str(port), *argv[1:]]


@pytest.mark.parametrize("worker", ["sync", "gthread"])
def test_the_runner_refuses_a_gunicorn_worker_that_cannot_work_and_names_the_one_to_use(worker: str) -> None:
    with children() as start:
        runner = start(_runner_argv(free_port(), worker))
        assert runner.wait_exit() == 2
        assert f"gunicorn's worker class {worker!r} cannot serve a PROXY port under the runner" in runner.output
        assert "-k gevent_proxyproto.gunicorn.GeventWorker" in runner.output


@pytest.mark.parametrize(("worker", "full_environ"), [("gevent", False), ("gevent_pywsgi", True)])
def test_the_runner_serves_gunicorns_gevent_workers_without_a_false_warning(worker: str, full_environ: bool) -> None:
    port = free_port()
    with children() as start:
        runner = start(_runner_argv(port, worker))
        runner.wait_for(BOOTED)
        with connect(port, gpp.build_v2(source=CLIENT, destination=FRONT)) as sock:
            seen = parse_app_answer(http_get(sock)[1])
        assert (seen["REMOTE_ADDR"], seen["REMOTE_PORT"]) == ("203.0.113.7", "4242")
        # gevent_pywsgi is a pywsgi server: the patched one adds the PROXY keys; -k gevent's own
        # HTTP handling gets the address only (GeventWorker gives all).
        assert (seen["PROXY_ADDR"] == "192.0.2.1") is full_environ
        assert runner.stop() == 0
        assert "detached" not in runner.output and "wrapped in TLS" not in runner.output
        assert "Traceback" not in runner.output


def test_worker_settings_read_gunicorns_trust_and_the_environment() -> None:
    from gunicorn.config import Config

    from gevent_proxyproto.gunicorn import WorkerSettings

    config = Config()
    config.set("proxy_allow_ips", "10.0.0.0/8,192.0.2.7")
    settings = WorkerSettings.from_config(config, {"GEVENT_PROXYPROTO_HEADER_TIMEOUT": "3",
                                                   "GEVENT_PROXYPROTO_MAX_HEADER_SIZE": "2048",
                                                   "GEVENT_PROXYPROTO_SCHEME_FROM_SSL_TLV": "0"})  # fmt: skip
    policy = settings.policy
    assert ("10.1.2.3", 1) in policy.trusted and ("192.0.2.7", 1) in policy.trusted
    assert ("127.0.0.1", 1) not in policy.trusted
    assert (policy.header_timeout, policy.max_header_size, policy.untrusted) == (3.0, 2048, "reject")
    assert settings.scheme_from_ssl_tlv is False
    default = WorkerSettings.from_config(Config(), {})
    assert ("127.0.0.1", 1) in default.policy.trusted and ("::1", 1, 0, 0) in default.policy.trusted
    assert ("192.0.2.7", 1) not in default.policy.trusted and default.scheme_from_ssl_tlv is True
    config.set("proxy_allow_ips", "*")
    assert ("198.51.100.1", 1) in WorkerSettings.from_config(config, {}).policy.trusted


def test_the_example_config_file_runs() -> None:
    port = free_port()
    with children() as start:
        argv = [sys.executable, "-m", "gunicorn", "-c", str(REPO / "examples" / "gunicorn.conf.py"),
                "-b", f"127.0.0.1:{port}", "--no-control-socket", "--chdir", str(REPO / "examples"), "wsgi_app:app"]  # fmt: skip
        server = start(argv)
        server.wait_for(BOOTED, count=2)  # workers = 2
        with connect(port, gpp.build_v2(source=CLIENT, destination=FRONT)) as sock:
            seen = parse_app_answer(http_get(sock)[1])
        assert (seen["REMOTE_ADDR"], seen["PROXY_ADDR"]) == ("203.0.113.7", "192.0.2.1")
        server.wait_for(r'203\.0\.113\.7 - - \[.*\] "GET / HTTP/1\.1" 200')  # accesslog = "-": the client
