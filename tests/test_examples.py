"""Smoke tests: the examples run as documented in the README."""

import os
import subprocess
import sys

import gevent.socket

from .conftest import REPO
from .support import read_line, wait_until


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
