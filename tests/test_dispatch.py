"""The multi-port dispatcher: routing, handlers, TLS, configuration errors, workers, shutdown."""

import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
from typing import Any

import gevent
import gevent.socket
import pytest

import gevent_proxyproto as gpp
from gevent_proxyproto._config import ConfigError, DispatcherConfig, ServiceConfig, config_from_mapping, load_config
from gevent_proxyproto._dispatch import Dispatcher, StartupError

from .conftest import REPO
from .support import (
    V1_TCP4,
    V2_TCP6,
    CommandLine,
    client_tls_context,
    free_ports,
    make_certificate,
    read_all,
    read_line,
    wait_until,
)


def ask(port: int, data: bytes = b"") -> bytes:
    with gevent.socket.create_connection(("127.0.0.1", port)) as client:
        if data:
            client.sendall(data)
        return read_line(client)


def test_routing_to_services_and_both_handler_kinds(dispatcher_for: Any) -> None:
    whoami_proxy, echo_proxy, hello_proxy, lines_proxy, whoami_plain, lines_plain = free_ports(6)
    config = DispatcherConfig(
        proxy_ports=(whoami_proxy, echo_proxy, hello_proxy, lines_proxy),
        proxy_port_mappings={whoami_proxy: "whoami", echo_proxy: "echo", hello_proxy: "hello", lines_proxy: "lines"},
        services={
            "hello": ServiceConfig("hello", "tests.dispatch_handlers:hello"),
            "lines": ServiceConfig("lines", "tests.dispatch_handlers:LineHandler", (lines_plain,)),
            "me": ServiceConfig("me", "whoami", (whoami_plain,)),
        },
    )
    dispatcher_for(config)
    document = json.loads(ask(whoami_proxy, V1_TCP4))
    assert document == {
        "service": "whoami",
        "port": whoami_proxy,
        "peer": ["203.0.113.7", 4242],
        "sock": ["192.0.2.1", 443],
        "proxy": {"version": 1, "command": "PROXY", "family": "AF_INET", "tlvs": []},
    }
    assert ask(echo_proxy, V2_TCP6 + b"echoed\n") == b"echoed\n"
    assert ask(hello_proxy, V1_TCP4) == b"hello 203.0.113.7 4242\n"
    assert ask(lines_proxy, V2_TCP6 + b"one\n") == b"2001:db8::7 4242 lines one\n"
    with gevent.socket.create_connection(("127.0.0.1", lines_plain)) as plain:
        plain.sendall(b"two\n")
        assert read_line(plain) == f"127.0.0.1 {plain.getsockname()[1]} lines two\n".encode()
    plain_document = json.loads(ask(whoami_plain))
    assert plain_document["proxy"] is None and plain_document["port"] == whoami_plain


def test_v2_tlvs_in_whoami(dispatcher_for: Any) -> None:
    (port,) = free_ports(1)
    dispatcher_for(DispatcherConfig(proxy_ports=(port,), proxy_port_mappings={port: "whoami"}))
    header = gpp.build_v2(source=("203.0.113.7", 4242), destination=("192.0.2.1", 443),
                          tlvs=[(gpp.TLVType.AUTHORITY, b"example.com")], crc32c=True)  # fmt: skip
    document = json.loads(ask(port, header))
    assert document["proxy"]["version"] == 2
    assert document["proxy"]["tlvs"][1] == [2, b"example.com".hex()]
    assert document["proxy"]["tlvs"][0][0] == gpp.TLVType.CRC32C


def test_unmapped_proxy_port_warns_and_closes_after_the_header(
    dispatcher_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    (port,) = free_ports(1)
    dispatcher = dispatcher_for(DispatcherConfig(proxy_ports=(port,)))
    assert f"proxy port {port} has no entry in proxy_port_mappings" in caplog.text
    with gevent.socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(V1_TCP4)
        assert read_all(client) == b""
    server = dispatcher.servers[port]
    assert sum(server.failures.values()) == 0  # the header itself was fine: read, then closed
    with gevent.socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"not a header\r\n")
        assert read_all(client) == b""
    wait_until(lambda: server.failures[gpp.Reason.NOT_HDR] == 1)


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"proxy_ports": [1000, 1000]}, "port 1000 is listed twice"),
        (
            {"proxy_ports": [1000], "services": {"x": {"handler": "tests.dispatch_handlers:hello", "ports": [1000]}}},
            "port 1000 is listed twice",
        ),
        ({"proxy_ports": [1000], "proxy_port_mappings": {"1000": "nope"}}, "unknown service 'nope'"),
        ({"proxy_ports": [1000], "proxy_port_mappings": {"1001": "echo"}}, "port 1001 is not in proxy_ports"),
        ({"proxy_ports": [70000]}, "not a port"),
        ({"proxy_port": [1000]}, "unknown key(s) 'proxy_port' (did you mean 'proxy_ports'?)"),
        ({"trusted_proxies": ["10.0.0.0/33"]}, "trusted_proxies"),
        ({"header_timeout": 0}, "header_timeout must be a positive number"),
        ({"services": {"x": {"ports": [1]}}}, "services.x.handler is missing"),
    ],
)
def test_config_errors_name_the_key(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_mapping(mapping)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "handler, message",
    [
        ("tests.no_such_module:handle", "cannot import 'tests.no_such_module'"),
        ("tests.dispatch_handlers:missing", "has no attribute 'missing'"),
        ("tests.dispatch_handlers:NotAHandler", "not a socketserver.BaseRequestHandler subclass"),
        ("no-colon", 'a handler is "module:callable"'),
    ],
)
def test_bad_handler_paths(handler: str, message: str) -> None:
    config = DispatcherConfig(services={"x": ServiceConfig("x", handler, (1000,))})
    with pytest.raises(ConfigError) as error:
        Dispatcher(config)
    assert message in str(error.value)


def test_nothing_half_started_when_a_port_is_taken() -> None:
    (free,) = free_ports(1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        dispatcher = Dispatcher(DispatcherConfig(proxy_ports=(free, busy)))
        with pytest.raises(StartupError, match=f"port {busy}"):
            dispatcher.start()
    with socket.socket() as probe:  # the port bound before the failure was released
        probe.bind(("127.0.0.1", free))


def test_tls_on_a_proxy_port(dispatcher_for: Any, tmp_path: Any) -> None:
    cert, key = make_certificate(str(tmp_path))
    (port,) = free_ports(1)
    config = config_from_mapping({
        "proxy_ports": [port],
        "proxy_port_mappings": {str(port): "whoami"},
        "tls": {str(port): {"certfile": cert, "keyfile": key}},
    })  # fmt: skip
    dispatcher_for(config)
    with gevent.socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(V1_TCP4)
        with client_tls_context().wrap_socket(raw) as tls:
            document = json.loads(read_line(tls))
    assert document["peer"] == ["203.0.113.7", 4242]


# -- the command line, in subprocesses ---------------------------------------------------------


def _cli(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gevent_proxyproto", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        **kwargs,
    )


def _write_config(tmp_path: Any, text: str) -> str:
    path = tmp_path / "proxy.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.mark.parametrize(
    "body, message",
    [
        ('proxy_ports = [18000]\n[proxy_port_mappings]\n18000 = "c2s"\n', "unknown service 'c2s'"),
        ("proxy_ports = [18000, 18000]\n", "port 18000 is listed twice"),
        ('[services.c2s]\nhandler = "nowhere.module:handle"\nports = [5222]\n', "cannot import 'nowhere.module'"),
        ("proxy_ports = [\n", "is not valid TOML"),
    ],
    ids=["unknown-service", "port-twice", "bad-handler", "bad-toml"],
)
@pytest.mark.parametrize("command", ["check", "serve"])
def test_cli_config_errors_exit_2(tmp_path: Any, body: str, message: str, command: str) -> None:
    process = _cli(command, "--config", _write_config(tmp_path, body))
    out, err = process.communicate(timeout=15)
    assert process.returncode == 2, (out, err)
    assert message in err.decode() and "Traceback" not in err.decode()


def test_cli_check_accepts_the_readme_shape(tmp_path: Any) -> None:
    path = _write_config(tmp_path, """
        bind = "127.0.0.1"
        header_timeout = 5.0
        trusted_proxies = ["127.0.0.0/8", "::1/128"]
        proxy_ports = [18000, 18001]
        [proxy_port_mappings]
        18000 = "whoami"
        18001 = "c2s"
        [services.c2s]
        handler = "tests.dispatch_handlers:LineHandler"
        ports = [5222]
    """)  # fmt: skip
    config = load_config(path)
    assert config.proxy_port_mappings == {18000: "whoami", 18001: "c2s"} and config.plain_ports == {5222: "c2s"}
    process = _cli("check", path)
    out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert b"OK" in out and b"127.0.0.1:18001  PROXY  -> c2s" in out


def _serve(tmp_path: Any, body: str, *extra: str) -> CommandLine:
    """``serve`` as a child, once it says it is ready: its ports listen and its signals are handled."""
    child = CommandLine("serve", "--config", _write_config(tmp_path, body), "--log-level", "INFO", *extra)
    try:
        child.wait_for(r"ready: ")
    except BaseException:
        child.__exit__(None, None, None)
        raise
    return child


def test_cli_serve_shuts_down_gracefully_on_sigterm(tmp_path: Any) -> None:
    proxy, plain = free_ports(2)
    process = _serve(tmp_path, f"""
        grace_period = 5.0
        proxy_ports = [{proxy}]
        [proxy_port_mappings]
        {proxy} = "whoami"
        [services.e]
        handler = "echo"
        ports = [{plain}]
    """)  # fmt: skip
    with process:
        open_connection = gevent.socket.create_connection(("127.0.0.1", proxy))
        open_connection.sendall(V1_TCP4)
        assert json.loads(read_line(open_connection))["peer"] == ["203.0.113.7", 4242]
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: _refused(plain))  # stops accepting at once...
        open_connection.sendall(b"still here\n")  # ...while the open connection is served
        assert read_line(open_connection) == b"still here\n"
        open_connection.close()
        assert process.wait() == 0
    assert "SIGTERM" in process.log


def test_cli_serve_a_second_sigterm_closes_open_connections_at_once(tmp_path: Any) -> None:
    (proxy,) = free_ports(1)
    process = _serve(tmp_path, f"""
        grace_period = 60.0
        proxy_ports = [{proxy}]
        [proxy_port_mappings]
        {proxy} = "whoami"
    """)  # fmt: skip
    with process:
        open_connection = gevent.socket.create_connection(("127.0.0.1", proxy), timeout=5)
        open_connection.sendall(V1_TCP4)
        assert json.loads(read_line(open_connection))["peer"] == ["203.0.113.7", 4242]
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: _refused(proxy))  # draining: the connection has 60 s...
        process.send_signal(signal.SIGTERM)
        assert read_all(open_connection) == b""  # ...but the second signal closes it now
        open_connection.close()
        assert process.wait(timeout=15) == 0
    assert "SIGTERM again: closing 1 open connection(s) now" in process.log


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):
        # Reset: the probe landed in the backlog just as the listener closed.
        return True
    return False


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.add(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def test_cli_workers_share_the_ports_and_stop_together(tmp_path: Any) -> None:
    (proxy,) = free_ports(1)
    process = _serve(
        tmp_path, f'proxy_ports = [{proxy}]\n[proxy_port_mappings]\n{proxy} = "whoami"\n', "--workers", "2"
    )
    with process:
        workers = _children(process.pid)
        assert len(workers) == 2
        for _ in range(10):
            assert json.loads(ask(proxy, V1_TCP4))["peer"] == ["203.0.113.7", 4242]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    assert all(not os.path.exists(f"/proc/{pid}") or _is_zombie_of_nobody(pid) for pid in workers)


def _is_zombie_of_nobody(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_cli_demo_serves_as_the_readme_says() -> None:
    # Ready when this serve says so: "something listens on 18000" may be
    # another process, and a SIGINT before serve handles it kills it (-2).
    with CommandLine("serve") as process:
        process.wait_for(r"ready: ")
        document = json.loads(ask(18000, b"PROXY TCP4 203.0.113.7 127.0.0.1 4242 18000\r\n"))
        assert document["peer"] == ["203.0.113.7", 4242]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    assert "printf 'PROXY TCP4 203.0.113.7 127.0.0.1 4242 18000" in "".join(process.out)


def test_logs_go_to_the_package_logger(dispatcher_for: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gevent_proxyproto")
    (port,) = free_ports(1)
    dispatcher_for(DispatcherConfig(proxy_ports=(port,), proxy_port_mappings={port: "echo"}))
    assert any(
        record.name == "gevent_proxyproto" and f":{port} (proxy)" in record.getMessage() for record in caplog.records
    )


def _reset(client: socket.socket) -> None:
    """Close with SO_LINGER on, 0 s: the kernel sends a reset, not a FIN."""
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


@pytest.mark.parametrize(
    "service, exchange",
    [("whoami", b""), ("echo", b"ping\n"), ("ticker", b"")],
    ids=["whoami-reading", "echo-reading", "user-handler-writing"],
)
def test_a_client_reset_in_a_service_is_one_debug_line(
    dispatcher_for: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], service: str,
    exchange: bytes,
) -> None:  # fmt: skip
    """A client that resets mid-service is the client's business (as gunicorn's "Ignoring EPIPE"): no traceback."""
    caplog.set_level(logging.DEBUG, logger="gevent_proxyproto")
    (port,) = free_ports(1)
    dispatcher_for(DispatcherConfig(
        proxy_ports=(port,),
        proxy_port_mappings={port: service},
        services={"ticker": ServiceConfig("ticker", "tests.dispatch_handlers:ticker")},
    ))  # fmt: skip
    client = gevent.socket.create_connection(("127.0.0.1", port))
    client.sendall(V1_TCP4 + exchange)
    assert read_line(client)  # the handler runs: its greeting, the echo or a tick
    via = client.getsockname()
    _reset(client)
    prefix = f"{service}: "
    wait_until(lambda: any(record.getMessage().startswith(prefix) for record in caplog.records))
    [record] = [record for record in caplog.records if record.getMessage().startswith(prefix)]
    assert record.levelno == logging.DEBUG and record.exc_info is None, record.getMessage()
    assert record.getMessage().startswith(f"{service}: connection from 203.0.113.7:4242 via 127.0.0.1:{via[1]} ")
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]
    assert "Traceback" not in caplog.text and "Traceback" not in capfd.readouterr().err
