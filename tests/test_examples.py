"""Smoke tests: the examples run as documented in the README."""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys

import gevent.socket

from .conftest import REPO, require_tool
from .interop.peers import listening_sockets
from .support import make_certificate, read_line, wait_until


def _ports_of(pid: int) -> set[int]:
    return {port for _, port in listening_sockets(pid)}


def test_echo_server_example() -> None:
    with gevent.socket.socket() as probe:  # a free port for the example
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-u", str(REPO / "examples" / "echo_server.py"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith(b"PROXY echo server on 127.0.0.1:")
        with gevent.socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(f"PROXY TCP4 203.0.113.7 127.0.0.1 4242 {port}\r\nhello\n".encode())
            assert read_line(client) == b"hello\n"
        line = process.stdout.readline()
        assert line.startswith(b"connection from 203.0.113.7:4242 (via 127.0.0.1:"), line
    finally:
        process.terminate()
        process.wait(timeout=5)
    wait_until(lambda: process.returncode is not None)


def test_multiplex_server_behind_a_real_haproxy() -> None:
    """The README walk-through: a client through HAProxy is greeted with its own address."""
    if shutil.which("haproxy") is None:
        require_tool("haproxy", "the walk-through runs examples/haproxy.cfg")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, str(REPO / "examples" / "multiplex_server.py")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    haproxy = None
    try:
        # HAProxy's first health check must find the server up, or it marks the backend down.
        # Listening means this process listens (a fixed port may be another's).
        wait_until(lambda: {5222, 5269, 15222, 15269} <= _ports_of(server.pid), timeout=10)
        haproxy = subprocess.Popen(["haproxy", "-f", str(REPO / "examples" / "haproxy.cfg"), "-db"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_until(lambda: {25222, 25269} <= _ports_of(haproxy.pid), timeout=10)
        family, host = (socket.AF_INET6, "::1") if socket.has_ipv6 else (socket.AF_INET, "127.0.0.1")
        with gevent.socket.socket(family, socket.SOCK_STREAM) as client:
            try:
                client.connect((host, 25222))
            except OSError:  # no IPv6 loopback here
                client.close()
                client = gevent.socket.create_connection(("127.0.0.1", 25222))
            own = client.getsockname()
            greeting = read_line(client)
            assert greeting.startswith(f"c2s ready: you are {own[0]}:{own[1]} (via proxy 127.0.0.1:".encode()), greeting
            client.sendall(b"hi\n")
            assert read_line(client) == f"c2s {own[0]}:{own[1]}: hi\n".encode()
        with gevent.socket.create_connection(("127.0.0.1", 5269)) as direct:
            own = direct.getsockname()
            assert read_line(direct) == f"s2s ready: you are {own[0]}:{own[1]}\n".encode()
    finally:
        processes = [process for process in (haproxy, server) if process is not None]
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_multiplex_example_files_are_valid(tmp_path: pathlib.Path) -> None:
    """examples/multiplex.toml passes `check` (its handlers import) and its HAProxy config passes `haproxy -c`."""
    # `check` loads the certificate too: the one the example's comment tells a user to make.
    certfile, keyfile = make_certificate(str(tmp_path))
    config = (REPO / "examples" / "multiplex.toml").read_text()
    assert 'certfile = "examples/localhost.crt"' in config and 'keyfile = "examples/localhost.key"' in config
    config = config.replace("examples/localhost.crt", certfile).replace("examples/localhost.key", keyfile)
    (tmp_path / "multiplex.toml").write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "gevent_proxyproto", "check", str(tmp_path / "multiplex.toml")],
        cwd=REPO, capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert b"15280  PROXY + TLS  -> multiplex" in result.stdout
    haproxy = shutil.which("haproxy", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if haproxy is None:
        require_tool("haproxy", "examples/haproxy-multiplex.cfg is checked with haproxy -c")
    result = subprocess.run([str(haproxy), "-c", "-f", "examples/haproxy-multiplex.cfg"], cwd=REPO,
                            capture_output=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
