"""Helpers for the socket and server tests: real loopback servers and clients."""

import contextlib
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.socket
import gevent.subprocess
import pytest

import gevent_proxyproto as gpp

from .conftest import REPO, require_tool

V1_TCP4 = b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n"
V2_TCP4 = gpp.build_v2(source=("203.0.113.7", 4242), destination=("192.0.2.1", 443))
V1_TCP6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n"
V2_TCP6 = gpp.build_v2(source=("2001:db8::7", 4242), destination=("2001:db8::1", 443))


class Recorder:
    """A handler that records what it saw, sends it back as a line, then echoes."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.done = gevent.event.Event()

    def __call__(self, sock: Any, address: Any) -> None:
        try:
            seen = {
                "address": address,
                "peer": sock.getpeername(),
                "sock": sock.getsockname(),
                "real_peer": sock.real_peername(),
                "header": sock.proxy_header,
            }
        except OSError:  # a health check that reset at once
            seen = {"address": address, "header": sock.proxy_header}
        self.seen.append(seen)
        self.done.set()
        sock.sendall(repr(address).encode() + b"\n")
        while True:
            data = sock.recv(65536)
            if not data:
                return
            sock.sendall(data)


@contextlib.contextmanager
def serving(handle: Callable[..., Any], listener: Any = ("127.0.0.1", 0), **kwargs: Any) -> Iterator[Any]:
    server = gpp.ProxyStreamServer(listener, handle, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop(timeout=1)


def connect(server: Any, data: bytes = b"", source: str | None = None) -> gevent.socket.socket:
    host, port = server.address[:2]
    sock = gevent.socket.create_connection((host, port), source_address=(source, 0) if source else None)
    if data:
        sock.sendall(data)
    return sock


def read_line(sock: Any) -> bytes:
    buffer = b""
    while not buffer.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        buffer += chunk
    return buffer


def read_all(sock: Any) -> bytes:
    """Everything until the server closes; a reset (the server closed with unread input) also ends it."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def still_open(sock: Any) -> bool:
    """Whether the server has not closed this client's connection yet (without waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.setblocking(True)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def live_greenlets() -> int:
    import gc

    import greenlet

    return sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet.greenlet) and not obj.dead)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """A bounded poll: yield to the hub until ``predicate()`` holds."""
    with gevent.Timeout(timeout, AssertionError("condition not met in time")):
        while not predicate():
            gevent.sleep(0.01)


def refusal_lines(records: list[Any], reason: str) -> tuple[int, int]:
    """``(warnings, held back)`` for ``reason`` in these log records: WARNING lines naming one
    refusal, and the total of the periodic "suppressed N more REASON" lines."""
    warned = held_back = 0
    for record in records:
        if record.levelno != logging.WARNING:
            continue
        message = record.getMessage()
        suppressed = re.search(rf": suppressed (\d+) more {reason} since the last warning$", message)
        if suppressed:
            held_back += int(suppressed.group(1))
        elif f": {reason}: " in message:
            warned += 1
    return warned, held_back


def make_certificate(directory: str) -> tuple[str, str]:
    """A self-signed certificate for localhost, made with the openssl command."""
    if shutil.which("openssl") is None:
        require_tool("openssl", "needed to make a test certificate")
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "2", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def client_tls_context() -> ssl.SSLContext:
    import gevent.ssl

    context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def plain_socket_from(sock: Any) -> socket.socket:
    """A stdlib socket on a duplicate of ``sock``'s fd: reads the kernel buffer directly."""
    return socket.socket(fileno=os.dup(sock.fileno()))


def is_listening(port: int) -> bool:
    """Whether something listens on ``port`` (TCP, IPv4 or IPv6), read from /proc: no probe connection."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            continue
    return False


def has_ipv6_loopback() -> bool:
    """Whether ``::1`` can be bound here (some containers have no IPv6)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")


class ChunkedSocket:
    """A connection that replays chunks as TCP delivers them, for read_header without a network.

    ``recv`` returns what has arrived (at most ``size`` bytes; ``MSG_PEEK``
    leaves it there); with nothing there, the next chunk arrives (the reader
    would have waited for it), and after the last one, end of file. The kernel
    socket under a gevent socket (``_sock``) raises ``BlockingIOError`` instead
    of waiting. Chunks arrive as late as possible: only when the reader would
    block.

    It counts the calls, and fails on a spin: a peek that returns the very
    bytes of the previous peek, with nothing consumed and nothing arrived in
    between, is what a reader waiting for readability with peeked bytes
    unconsumed does (SPEC.md section 5): on a real socket it never sleeps.
    """

    def __init__(self, chunks: list[bytes], arrived: bool = False, then_silent: bool = False) -> None:
        self.pending = deque(chunk for chunk in chunks if chunk)
        #: After the last chunk the client neither sends nor closes: a wait fails the test.
        self.then_silent = then_silent
        self.buffer = b""
        self.timeout: float | None = None
        #: recv calls, those that found nothing (EAGAIN) included.
        self.calls = 0
        self.arrivals = 0
        self.consumed = 0
        self._last_peek: tuple[int, int] | None = None
        self._sock = _KernelSocket(self)
        if arrived and self.pending:  # the first chunk is there before the reader looks
            self._deliver()

    def _deliver(self) -> None:
        self.buffer += self.pending.popleft()
        self.arrivals += 1

    def recv(self, size: int, flags: int = 0) -> bytes:
        self._wait(self._read_event)
        return self._take(size, flags)

    @property
    def hub(self) -> Any:
        return gevent.get_hub()

    @property
    def _read_event(self) -> "_ReadWatcher":
        """What read_header waits on: a gevent socket's io watcher (read_header waits itself, then reads ``_sock``)."""
        return _ReadWatcher(self)

    def _wait(self, watcher: "_ReadWatcher", timeout_exc: Any = None) -> None:
        """The wait for readability: the next chunk arrives, or the end of the connection."""
        assert watcher.sock is self
        if not self.buffer:
            if self.pending:
                self._deliver()
            elif self.then_silent:
                raise AssertionError("the reader waits for bytes a silent client will never send")

    def _take(self, size: int, flags: int) -> bytes:
        self.calls += 1
        assert size > 0, f"recv({size})"
        data = self.buffer[:size]
        if flags & socket.MSG_PEEK:
            state = (self.consumed, self.arrivals)
            assert not (data and state == self._last_peek), "spin: peeked again with nothing consumed or arrived"
            self._last_peek = state
        else:
            self.buffer = self.buffer[len(data) :]
            self.consumed += len(data)
        return data

    def unread(self) -> bytes:
        return self.buffer + b"".join(self.pending)


class _ReadWatcher:
    """A gevent io watcher, for waits that start one: started, the next chunk arrives and the callback runs."""

    def __init__(self, sock: ChunkedSocket) -> None:
        self.sock = sock
        self.callback: Any = None

    def start(self, callback: Any) -> None:
        self.callback = callback
        self.sock._wait(self)
        gevent.get_hub().loop.run_callback(self._fire)

    def _fire(self) -> None:
        if self.callback is not None:
            self.callback()

    def stop(self) -> None:
        self.callback = None


class _KernelSocket:
    def __init__(self, outer: ChunkedSocket) -> None:
        self.outer = outer

    def recv(self, size: int, flags: int = 0) -> bytes:
        if not self.outer.buffer and (self.outer.pending or self.outer.then_silent):
            self.outer.calls += 1
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return self.outer._take(size, flags)


class CommandLine:
    """``python -m gevent_proxyproto ARGS`` as a child, its output lines collected as they come.

    Readiness is what the child says, never "something listens on the port":
    that may be another process, and a signal sent before the child handles
    signals kills it.
    """

    def __init__(self, *args: str) -> None:
        self.process = gevent.subprocess.Popen(
            [sys.executable, "-m", "gevent_proxyproto", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        #: Lines so far, as text: standard output, standard error (the log).
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            gevent.spawn(self._collect, self.process.stdout, self.out),
            gevent.spawn(self._collect, self.process.stderr, self.err),
        ]

    @staticmethod
    def _collect(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.decode("utf-8", "replace"))

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def matches(self, pattern: str, stream: str = "err") -> list[re.Match[str]]:
        """The lines so far that match ``pattern`` (``re.search``), in order."""
        regex = re.compile(pattern)
        lines = self.out if stream == "out" else self.err
        return [match for match in map(regex.search, list(lines)) if match]

    def wait_for(self, pattern: str, count: int = 1, stream: str = "err", timeout: float = 10.0) -> list[re.Match[str]]:
        """Wait until ``count`` lines match ``pattern``; fails at once if the child exits first."""

        def found() -> bool:
            if len(self.matches(pattern, stream)) >= count:
                return True
            if self.process.poll() is not None:
                gevent.joinall(self._readers, timeout=2)
                if len(self.matches(pattern, stream)) < count:
                    raise AssertionError(f"exited {self.process.returncode} before {pattern!r}:\n{self.log}")
            return False

        wait_until(found, timeout)
        return self.matches(pattern, stream)

    def send_signal(self, number: int) -> None:
        self.process.send_signal(number)

    def wait(self, timeout: float = 10.0) -> int:
        """The exit status, once the child has exited and its output is all read."""
        code = self.process.wait(timeout=timeout)
        gevent.joinall(self._readers, timeout=timeout)
        return int(code)

    @property
    def log(self) -> str:
        return "".join(self.err)

    def __enter__(self) -> "CommandLine":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait()


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (all probes held open together, then released)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
