"""Ordinary mistakes of a new user, each fed in, each answered by a message that says what to change.

Configuration mistakes go through ``config_from_mapping``; the command line's
paths run ``gevent-proxyproto`` in subprocesses, as a user would.
"""

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
from typing import Any

import gevent.socket
import pytest

import gevent_proxyproto as gpp
from gevent_proxyproto._config import ConfigError, config_from_mapping
from gevent_proxyproto._dispatch import Dispatcher

from .conftest import REPO
from .support import V1_TCP4, free_ports, make_certificate, read_all, wait_until
from .test_monkey import SERVERS, ask, connect, free_port, running, servers

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize(
    "mapping, message",
    [
        pytest.param(
            {"services": {"c2s": {"handlr": "x:y"}}},
            "services.c2s: unknown key(s) 'handlr' (did you mean 'handler'?); known: handler, idle_timeout, multiplex_pattern, multiplex_tls, ports",
            id="service-typo",
        ),
        pytest.param(
            {"proxy_ports": [1000], "tls": {"1000": {"certfile": "c", "key_file": "k"}}},
            "tls.1000: unknown key(s) 'key_file' (did you mean 'keyfile'?); known: cafile, certfile, keyfile, "
            "verify_client",
            id="tls-typo",
        ),
        pytest.param(
            {"proxy_ports": ["31070"]},
            "proxy_ports: '31070' is a string; write the port as an integer: 31070",
            id="port-as-string",
        ),
        pytest.param(
            {"services": {"e": {"handler": "echo", "ports": [5222.0]}}},
            "services.e.ports: 5222.0 is not a port (an integer 1..65535)",
            id="port-as-float",
        ),
        pytest.param({"proxy_ports": [True]}, "proxy_ports: True is not a port", id="port-as-bool"),
        pytest.param({"proxy_ports": [0]}, "proxy_ports: 0 is not a port", id="port-0"),
        pytest.param(
            {"proxy_ports": [32064], "proxy_port_mappings": {"32064": "whoami", "032064": "echo"}},
            "proxy_port_mappings: '32064' and '032064' are the same port 32064: keep one",
            id="duplicate-mapping",
        ),
        pytest.param(
            {"proxy_ports": [80], "proxy_port_mappings": {"+80": "whoami"}},
            "proxy_port_mappings.+80: '+80' is not a port (1..65535)",
            id="signed-mapping-key",
        ),
        pytest.param(
            {"proxy_ports": [443], "tls": {"443": {"certfile": "c"}, "0443": {"certfile": "d"}}},
            "tls: '443' and '0443' are the same port 443: keep one",
            id="duplicate-tls",
        ),
        pytest.param(
            {"services": {"c2s": {"ports": [5222]}}},
            'services.c2s.handler is missing ("module:callable"); only the built-in services (whoami, echo, multiplex) '
            "may leave it out",
            id="handler-missing",
        ),
        pytest.param(
            {"trusted_proxies": ["192.168.1.5/16"]},
            "trusted_proxies: '192.168.1.5/16' has host bits set: write '192.168.0.0/16' for the network, "
            "or '192.168.1.5' for one address",
            id="host-bits",
        ),
        pytest.param(
            {"trusted_proxies": ["2001:db8::1/32"]},
            "trusted_proxies: '2001:db8::1/32' has host bits set: write '2001:db8::/32'",
            id="host-bits-ipv6",
        ),
        pytest.param(
            {"trusted_proxies": ["10.0.0.0/0.0.0.255"]},
            "trusted_proxies: '10.0.0.0/0.0.0.255': write the prefix length, not a mask: 10.0.0.0/24",
            id="hostmask",
        ),
        pytest.param(
            {"trusted_proxies": ["10.0.0.0/255.0.0.0"]},
            "trusted_proxies: '10.0.0.0/255.0.0.0': write the prefix length, not a mask: 10.0.0.0/8",
            id="netmask",
        ),
        pytest.param(
            {"trusted_proxies": ["fe80::1%eth0"]},
            "trusted_proxies: 'fe80::1%eth0': a scope id cannot limit trust to one interface; write 'fe80::1' "
            "(trusted on every interface)",
            id="scope-id",
        ),
    ],
)
def test_config_mistakes_are_named(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_mapping(mapping)
    assert message in str(error.value)


def test_a_builtin_service_table_needs_no_handler() -> None:
    config = config_from_mapping({"services": {"whoami": {"ports": [5222]}, "echo": {"ports": [5223]}}})
    assert [(service.handler, service.ports) for service in config.services.values()] == [
        ("whoami", (5222,)),
        ("echo", (5223,)),
    ]
    dispatcher = Dispatcher(config)
    assert dispatcher.describe() == ["127.0.0.1:5222  plain  -> whoami", "127.0.0.1:5223  plain  -> echo"]


def test_good_networks_still_parse() -> None:
    config = config_from_mapping({"trusted_proxies": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1", "*"]})
    assert config.trusted_proxies == ("10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1", "*")


def test_a_failing_handler_is_one_error_with_its_traceback(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    (port,) = free_ports(1)
    config = config_from_mapping({
        "proxy_ports": [port],
        "proxy_port_mappings": {str(port): "c2s"},
        "services": {"c2s": {"handler": "tests.dispatch_handlers:broken"}},
    })  # fmt: skip
    dispatcher = Dispatcher(config)
    dispatcher.start()
    try:
        with gevent.socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(V1_TCP4)
            assert read_all(client) == b""
            via = client.getsockname()
        wait_until(lambda: any(record.levelno == logging.ERROR for record in caplog.records))
    finally:
        dispatcher.stop(grace_period=1)
    [error] = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert error.name == "gevent_proxyproto" and error.levelno == logging.ERROR
    assert error.getMessage() == f"c2s: handler failed on the connection from 203.0.113.7:4242 via 127.0.0.1:{via[1]}"
    assert error.exc_info is not None and "broken on purpose" in caplog.text and "Traceback" in caplog.text
    assert "Traceback" not in capfd.readouterr().err  # not gevent's printer


# -- the command line, in subprocesses ---------------------------------------------------------------


def _gevent_proxyproto(*args: str, cwd: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script, as a user runs it: its sys.path[0] is its own directory, not ``cwd``."""
    script = shutil.which("gevent-proxyproto", path=sysconfig.get_path("scripts"))
    assert script is not None, "the package is not installed (pip install -e .)"
    return subprocess.run(
        [script, *args], cwd=cwd, env=env or dict(os.environ), capture_output=True, text=True, timeout=30
    )


def _write(directory: Any, name: str, text: str) -> str:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


C2S_CONFIG = """
    proxy_ports = [31070]
    [proxy_port_mappings]
    31070 = "c2s"
    [services.c2s]
    handler = "mypackage.module:handle"
"""


def test_check_imports_a_handler_from_the_current_directory(tmp_path: Any) -> None:
    _write(tmp_path, "mypackage/__init__.py", "")
    _write(tmp_path, "mypackage/module.py", "def handle(sock, address):\n    pass\n")
    _write(tmp_path, "proxy.toml", C2S_CONFIG)
    result = _gevent_proxyproto("check", "proxy.toml", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "proxy.toml: OK\n  127.0.0.1:31070  PROXY  -> c2s\n"), result


def test_serve_imports_a_handler_from_the_current_directory(tmp_path: Any) -> None:
    _write(tmp_path, "mypackage/__init__.py", "")
    _write(tmp_path, "mypackage/module.py", "def handle(sock, address):\n    sock.sendall(b'from mypackage\\n')\n")
    (port,) = free_ports(1)
    _write(tmp_path, "proxy.toml", C2S_CONFIG.replace("31070", str(port)))
    script = shutil.which("gevent-proxyproto", path=sysconfig.get_path("scripts"))
    assert script is not None, "the package is not installed (pip install -e .)"
    process = subprocess.Popen(
        [script, "serve", "--config", "proxy.toml"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _stderr_until(process, "listening on")
        with gevent.socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(V1_TCP4)
            assert read_all(client) == b"from mypackage\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.wait()


def test_an_import_error_that_may_be_the_path_says_so(tmp_path: Any) -> None:
    config = _write(tmp_path, "proxy.toml", C2S_CONFIG)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _gevent_proxyproto("check", config, cwd=elsewhere)
    assert result.returncode == 2
    assert result.stderr == (
        "gevent-proxyproto: error: services.c2s.handler: cannot import 'mypackage.module': no module named "
        f"'mypackage' on the Python path. Run from the directory that holds mypackage/ (or mypackage.py), now "
        f"{elsewhere}, or install it, or add its directory to PYTHONPATH\n"
    )


def test_an_import_error_inside_the_module_names_the_line(tmp_path: Any) -> None:
    _write(tmp_path, "mypackage/__init__.py", "")
    module = _write(tmp_path, "mypackage/module.py", "import os\nundefined_name\n")
    _write(tmp_path, "proxy.toml", C2S_CONFIG)
    result = _gevent_proxyproto("check", "proxy.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "gevent-proxyproto: error: services.c2s.handler: cannot import 'mypackage.module': "
        f"NameError: name 'undefined_name' is not defined ({module}:2)\n"
    )


@pytest.mark.parametrize("command", ["check", "serve"])
def test_nothing_to_serve_is_an_error(tmp_path: Any, command: str) -> None:
    config = _write(tmp_path, "proxy.toml", 'trusted_proxies = ["10.0.0.0/8"]\n')
    result = _gevent_proxyproto(command, "--config", config, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "gevent-proxyproto: error: nothing to serve: no port is configured; add proxy_ports = [PORT] (with a "
        '[proxy_port_mappings] entry PORT = "SERVICE"), or ports = [PORT] in a [services.NAME] table\n'
    )


@pytest.mark.parametrize("command", ["check", "serve"])
@pytest.mark.parametrize("missing", ["certfile", "keyfile"])
def test_a_missing_certificate_or_key_is_named(tmp_path: Any, command: str, missing: str) -> None:
    cert, key = make_certificate(str(tmp_path))
    files = {"certfile": cert, "keyfile": key, missing: "missing.pem"}
    (port,) = free_ports(1)
    config = _write(tmp_path, "proxy.toml", f"""
        proxy_ports = [{port}]
        [proxy_port_mappings]
        {port} = "whoami"
        [tls.{port}]
        certfile = "{files['certfile']}"
        keyfile = "{files['keyfile']}"
    """)  # fmt: skip
    result = _gevent_proxyproto(command, "--config", config, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"gevent-proxyproto: error: tls.{port}.{missing}: cannot read 'missing.pem' ({tmp_path}/missing.pem): "
        "No such file or directory\n"
    )


def test_a_key_that_does_not_match_is_named(tmp_path: Any) -> None:
    cert, _ = make_certificate(str(tmp_path))
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = make_certificate(str(other))
    config = _write(tmp_path, "proxy.toml", f"""
        proxy_ports = [31070]
        [proxy_port_mappings]
        31070 = "whoami"
        [tls.31070]
        certfile = "{cert}"
        keyfile = "{other_key}"
    """)  # fmt: skip
    result = _gevent_proxyproto("check", config, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"gevent-proxyproto: error: tls.31070: cannot load certfile {cert!r} with keyfile {other_key!r}: "
    ), result.stderr
    assert "KEY_VALUES_MISMATCH" in result.stderr


@pytest.mark.parametrize("everyone", ["*", "0.0.0.0/0", "::/0"])
def test_trusting_everyone_is_one_warning_at_start(tmp_path: Any, everyone: str) -> None:
    (port,) = free_ports(1)
    config = _write(tmp_path, "proxy.toml", f"""
        trusted_proxies = ["{everyone}", "10.0.0.0/8"]
        proxy_ports = [{port}]
        [proxy_port_mappings]
        {port} = "whoami"
    """)  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "gevent_proxyproto", "serve", "--config", config],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        lines = _stderr_until(process, "listening on")  # start-up is logged up to the listener
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.wait()
    assert all(LOG_LINE.fullmatch(line) for line in lines), lines  # time, level, logger: serve's log format
    warnings = [line for line in lines if " WARNING " in line]
    assert len(warnings) == 1, lines
    assert warnings[0].endswith(
        f" WARNING gevent_proxyproto: trusted_proxies '{everyone}': every source may send a PROXY header and "
        "claim any client address; list the load balancers' addresses instead\n"
    )


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_during_start_up_exits_cleanly(tmp_path: Any, name: str) -> None:
    """The stop request arrives while serve imports the handlers (tests/startup_signal.py sends it)."""
    (port,) = free_ports(1)
    config = _write(tmp_path, "proxy.toml", f"""
        proxy_ports = [{port}]
        [proxy_port_mappings]
        {port} = "c"
        [services.c]
        handler = "tests.startup_signal:handle"
    """)  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "gevent_proxyproto", "serve", "--config", config],
        cwd=REPO, env={**ENV, "GPP_TEST_SIGNAL": name}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, ""), result
    assert "Traceback" not in result.stderr
    assert result.stderr.endswith(f" WARNING gevent_proxyproto: {name} during start-up: stopped before serving\n")


# -- the monkey runner --------------------------------------------------------------------------------

#: A log line of the runner or of serve: time, level, logger, message.
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) gevent_proxyproto: .*\n")


def _stderr_until(process: "subprocess.Popen[bytes]", text: str, timeout: float = 15) -> list[str]:
    """The program's stderr lines up to the first containing ``text``; a bounded wait on the pipe.

    Read from the file descriptor, not the buffered pipe object: lines that
    arrived together would sit in its buffer while we wait on the descriptor.
    """
    assert process.stderr is not None
    fd = process.stderr.fileno()
    lines: list[str] = []
    pending = b""
    with gevent.Timeout(timeout, AssertionError(f"no {text!r} on stderr in {timeout} s: {lines}")):
        while not lines or text not in lines[-1]:
            if b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                lines.append(line.decode() + "\n")
                continue
            gevent.socket.wait_read(fd)
            chunk = os.read(fd, 65536)
            assert chunk, f"stderr closed before {text!r}: {lines}"
            pending += chunk
    return lines


def _runner(*options: str, kind: str = "tcpserver", proxy_port: int, plain_port: int) -> list[str]:
    return [sys.executable, "-m", "gevent_proxyproto.monkey", *options,
            str(SERVERS), kind, str(proxy_port), str(plain_port)]  # fmt: skip


def test_runner_warns_when_the_program_listens_on_none_of_the_proxy_ports() -> None:
    typo, program_port, plain_port = free_port(), free_port(), free_port()
    command = _runner("--proxy-ports", str(typo), proxy_port=program_port, plain_port=plain_port)
    with running(command, program_port) as program:
        lines = _stderr_until(program.process, "WARNING")
    ports = ", ".join(map(str, sorted([program_port, plain_port])))
    assert LOG_LINE.fullmatch(lines[-1]), lines
    assert lines[-1].split(" gevent_proxyproto: ")[1] == (
        f"the program listens on TCP port(s) {ports} but on none of --proxy-ports {typo}: no connection is "
        "read as PROXY; check the port numbers\n"
    )


def test_runner_is_quiet_when_a_proxy_port_listens() -> None:
    proxy_port, plain_port = free_port(), free_port()
    command = _runner("--proxy-ports", str(proxy_port), "--log-level", "debug", proxy_port=proxy_port,
                      plain_port=plain_port)  # fmt: skip
    with running(command, proxy_port) as program:
        lines = _stderr_until(program.process, "port check:")
    assert [line for line in lines if " WARNING " in line] == []
    assert all(LOG_LINE.fullmatch(line) for line in lines), lines


def test_runner_takes_every_policy_setting() -> None:
    # direct: the untrusted 127.0.0.1 connects without a header and keeps its own address.
    options = ["--trusted-proxies", "10.0.0.0/8", "--untrusted", "direct"]
    with servers("tcpserver", runner=options) as program:
        reported, own = ask("tcpserver", program.proxy_port)
        assert reported == (own[0], str(own[1]))
    with servers("tcpserver", runner=["--max-header-size", "64"]) as program:
        large = gpp.build_v2(source=("203.0.113.7", 4242), destination=("192.0.2.1", 443), tlvs=[(0xE0, bytes(64))])
        # Only the preamble, which announces the size: refused before the rest is read.
        with connect(program.proxy_port, large[:16]) as refused:
            assert read_all(refused) == b""
        assert ask("tcpserver", program.proxy_port, V1_TCP4)[0] == ("203.0.113.7", "4242")
    assert "BAD_HDR" in program.stderr and all(LOG_LINE.fullmatch(line + "\n") for line in program.stderr.splitlines())
    nginx_line = b"PROXY TCP6 203.0.113.7 ::1 4242 443\r\n"
    with servers("tcpserver", runner=["--allow-v4-in-tcp6"]) as program:
        assert ask("tcpserver", program.proxy_port, nginx_line)[0] == ("::ffff:203.0.113.7", "4242")  # v4-mapped
    with servers("tcpserver", runner=[]) as program:
        with connect(program.proxy_port, nginx_line) as refused:
            assert read_all(refused) == b""


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--untrusted", "allow"], "argument --untrusted: invalid choice: 'allow' (choose from 'reject', 'direct')"),
        (["--max-header-size", "8"], "max_header_size must hold a v2 preamble (16 bytes), not 8"),
        (["--log-level", "loud"], "unknown log level 'LOUD'"),
        (["--trusted-proxies", "192.168.1.5/16"], "'192.168.1.5/16' has host bits set: write '192.168.0.0/16'"),
    ],
)
def test_runner_refuses_bad_policy_options(arguments: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gevent_proxyproto.monkey", "--proxy-ports", "80", *arguments, "x.py"],
        env=ENV, capture_output=True, text=True, timeout=15,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr, result.stderr


def test_runner_warns_once_when_trusting_everyone() -> None:
    with servers("tcpserver", runner=["--trusted-proxies", "*"]) as program:
        pass
    warnings = [line for line in program.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and warnings[0].endswith(
        "WARNING gevent_proxyproto: --trusted-proxies '*': every source may send a PROXY header and claim any "
        "client address; list the load balancers' addresses instead"
    ), program.stderr
