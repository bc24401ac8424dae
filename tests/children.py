"""Servers as child processes (gunicorn, the runner, examples) and a small HTTP/1.1 client.

A child writes stdout and stderr to one file; it is ready when a line it prints
says so (gunicorn's "Booting worker", an example's "Listening at"), read by a
bounded poll of that file. It is stopped by PID on every path.
"""

import contextlib
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import gevent

from .conftest import REPO
from .interop.peers import pick_endpoints, wait_exit

#: Seconds a child gets to say it is ready, then to exit after SIGTERM.
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


class Child:
    """A server process whose output goes to a file."""

    def __init__(self, argv: Sequence[str], workdir: pathlib.Path, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.log_path = workdir / f"child-{os.getpid()}-{id(self)}.log"
        self._final_output: str | None = None
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            )

    @property
    def output(self) -> str:
        """What it wrote so far (all of it, once stopped: kept after its directory is gone)."""
        if self._final_output is not None:
            return self._final_output
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = READY_TIMEOUT) -> str:
        """Wait until the output matches ``pattern`` ``count`` times (a bounded poll); the output."""
        with gevent.Timeout(timeout, False):
            while True:
                output = self.output
                if len(re.findall(pattern, output)) >= count:
                    return output
                if self.process.poll() is not None:
                    raise AssertionError(f"{self.argv} exited with {self.process.returncode}:\n{output}")
                gevent.sleep(0.02)  # a bounded poll of a file: nothing to wait on
        raise AssertionError(f"{pattern!r} x{count} not seen in {timeout} s from {self.argv}:\n{self.output}")

    def wait_exit(self, timeout: float = READY_TIMEOUT) -> int:
        status = wait_exit(self.process, timeout)
        if status is None:
            raise AssertionError(f"{self.argv} still running after {timeout} s:\n{self.output}")
        return status

    def stop(self, signal_number: int = signal.SIGTERM) -> int | None:
        """``signal_number`` by PID (SIGKILL after STOP_TIMEOUT); the exit status. Idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal_number)
            if wait_exit(self.process, STOP_TIMEOUT) is None:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        if self._final_output is None:
            self._final_output = self.log_path.read_text(errors="replace")
        return self.process.returncode


@contextlib.contextmanager
def children() -> Iterator[Any]:
    """``start(argv, env=None) -> Child``; every child is stopped at the end."""
    started: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="gpp-child-") as workdir:

        def start(argv: Sequence[str], env: dict[str, str] | None = None) -> Child:
            child = Child(argv, pathlib.Path(workdir), env)
            started.append(child)
            return child

        try:
            yield start
        finally:
            for child in started:
                child.stop()


def free_port() -> int:
    return pick_endpoints({"port": "127.0.0.1"})["port"].port


def gunicorn_argv(worker: str, port: int, *options: str) -> list[str]:
    """gunicorn serving examples/wsgi_app.py on 127.0.0.1:``port``, its access log on stdout."""
    return [
        sys.executable, "-m", "gunicorn", "-k", worker, "-b", f"127.0.0.1:{port}", "--chdir", str(REPO / "examples"),
        "--no-control-socket", "--access-logfile", "-", "--access-logformat", "access %(h)s %(r)s %(s)s",
        *options, "wsgi_app:app",
    ]  # fmt: skip


def parse_app_answer(body: bytes) -> dict[str, str]:
    """examples/wsgi_app.py's answer: ``KEY=value`` lines."""
    return dict(line.split("=", 1) for line in body.decode().splitlines())


def http_get(sock: Any, path: str = "/", host: str = "app.test") -> tuple[int, bytes]:
    """One keep-alive GET on ``sock``: the status and the body (Content-Length framed)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed in the response head: {head!r}")
        head += chunk
    head, _, body = head.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise AssertionError("connection closed in the response body")
        body += chunk
    return status, body
