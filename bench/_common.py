"""Shared pieces of the connection-level benchmarks (not a benchmark itself).

* :class:`Server`: a ``bench/_server.py`` child process, plain or PROXY, driven
  over stdin (stats, census, quit);
* :func:`run_load`: a closed-loop load generator on raw non-blocking sockets
  and epoll, with no gevent: cheaper per connection than the server it loads;
* :func:`summarize` and :func:`ratio_summary`: medians with their spread, and
  per-round ratios (a round's numbers were taken seconds apart, so the
  machine's background load mostly cancels out in their ratio);
* :func:`machine`: what the figures were measured on.

Every script puts the checkout first on ``sys.path``: it measures the code it
sits beside.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import platform
import resource
import select
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

BENCH = pathlib.Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: SO_LINGER with a zero timeout: close() sends a reset and leaves no TIME_WAIT
#: behind, so hundreds of thousands of loopback connections never run out of ports.
LINGER_RESET = struct.pack("ii", 1, 0)
#: What the clients send after the header: a small HTTP request.
REQUEST = b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n"


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Server:
    """A ``bench/_server.py`` child process.

    Args:
        kind: ``"plain"`` or ``"proxy"``.
        handler: ``"reply"`` or ``"line"`` (see ``bench/_server.py``).
        prefix: a command to run it under (``["strace", ...]``).
        stderr: a file for its log; by default a pipe is not used (inherit).
        extra: more command-line arguments.
    """

    def __init__(
        self,
        kind: str,
        handler: str = "reply",
        prefix: Sequence[str] = (),
        stderr: Any = None,
        extra: Sequence[str] = (),
    ) -> None:
        command = [*prefix, sys.executable, str(BENCH / "_server.py"), "--kind", kind, "--handler", handler, *extra]
        self.kind = kind
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, preexec_fn=raise_fd_limit
        )
        assert self.process.stdout is not None and self.process.stdin is not None
        first = self.process.stdout.readline()
        if not first:
            self.process.wait(timeout=10)
            raise RuntimeError(f"server {kind} did not start (exit {self.process.returncode})")
        hello = json.loads(first)
        self.port: int = hello["port"]
        #: The Python process's pid (not strace's, when prefixed).
        self.pid: int = hello["pid"]
        self.address = ("127.0.0.1", self.port)

    def command(self, name: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(name.encode() + b"\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(f"server {self.kind} exited")
        result: dict[str, Any] = json.loads(answer)
        return result

    def stats(self) -> dict[str, Any]:
        return self.command("stats")

    def census(self) -> dict[str, Any]:
        return self.command("census")

    def close(self) -> int:
        """Ask it to quit; kill it (this child only, by its Popen) if it does not within 10 s."""
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(b"quit\n")
                self.process.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def run_load(
    address: tuple[str, int],
    payload: bytes,
    count: int,
    concurrency: int,
    time_limit: float = 60.0,
    rate: float | None = None,
) -> dict[str, Any]:
    """Open ``count`` connections; each sends ``payload`` and waits for the reply.

    Closed loop by default: at most ``concurrency`` at a time, a new one as
    soon as one ends. With ``rate``: open loop, one new connection every
    ``1 / rate`` seconds whatever the server's pace (latency under a given
    load, not throughput). A connection's latency runs from just before its
    ``socket()`` call to the first reply byte. It then closes with a reset (no
    TIME_WAIT). Bounded by ``time_limit`` seconds.

    Returns:
        ``{"elapsed": s, "latencies": [s, ...], "errors": n}``.
    """
    poller = select.epoll()
    open_connections: dict[int, list[Any]] = {}
    latencies: list[float] = []
    errors = 0
    started = 0
    perf_counter = time.perf_counter
    epollout, epollin, epollerr = select.EPOLLOUT, select.EPOLLIN, select.EPOLLERR | select.EPOLLHUP

    def start() -> None:
        nonlocal started, errors
        started += 1
        t0 = perf_counter()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            errors += 1
            sock.close()
            return
        fd = sock.fileno()
        open_connections[fd] = [sock, t0, False]
        poller.register(fd, epollout)

    def finish(fd: int, sock: socket.socket) -> None:
        poller.unregister(fd)
        del open_connections[fd]
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        except OSError:
            pass
        sock.close()

    begin = perf_counter()
    deadline = begin + time_limit
    interval = 1.0 / rate if rate else 0.0
    next_start = begin
    while open_connections or started < count:
        wait = 1.0
        if rate is None:
            while len(open_connections) < concurrency and started < count:
                start()
        elif started < count:
            now = perf_counter()
            while started < count and now >= next_start:
                start()
                next_start += interval
            wait = max(0.0, next_start - now) if started < count else 1.0
        if perf_counter() > deadline:
            errors += len(open_connections) + count - started
            for fd, entry in list(open_connections.items()):
                poller.unregister(fd)
                entry[0].close()
            open_connections.clear()
            break
        for fd, events in poller.poll(wait):
            entry = open_connections.get(fd)
            if entry is None:
                continue
            sock = entry[0]
            if not entry[2]:
                if events & epollerr:
                    errors += 1
                    finish(fd, sock)
                    continue
                try:
                    sock.send(payload)
                except OSError:
                    errors += 1
                    finish(fd, sock)
                    continue
                entry[2] = True
                poller.modify(fd, epollin)
                continue
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if data:
                latencies.append(perf_counter() - entry[1])
            else:
                errors += 1
            finish(fd, sock)
    elapsed = perf_counter() - begin
    poller.close()
    return {"elapsed": elapsed, "latencies": latencies, "errors": errors}


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[index]


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median, min-max and inter-quartile range of per-round values."""
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 3
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "q1": quartiles[0],
        "q3": quartiles[2],
        "rounds": list(values),
    }


def ratio_summary(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, Any]:
    """Per-round ratios ``numerator / denominator``, summarized."""
    return summarize([top / bottom for top, bottom in zip(numerators, denominators, strict=True)])


def fmt(summary: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    """``median [q1-q3] (min-max)``."""
    values = [summary[key] * scale for key in ("median", "q1", "q3", "min", "max")]
    return "{:.{d}f} [{:.{d}f}-{:.{d}f}] ({:.{d}f}-{:.{d}f})".format(*values, d=digits)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import gevent

    import gevent_proxyproto

    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        nproc = str(os.cpu_count())
    return {
        "nproc": nproc,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "gevent": gevent.__version__,
        "gevent_proxyproto": gevent_proxyproto.__version__,
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }


def write_json(path: str | None, report: dict[str, Any]) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=1, default=str)
        print(f"wrote {path}")


def rotated(items: Sequence[Any], round_index: int) -> list[Any]:
    """``items`` starting at a different one each round: none always runs first."""
    shift = round_index % len(items)
    return list(items[shift:]) + list(items[:shift])


def parse_variant(text: str) -> tuple[str, str]:
    """``--variant [NAME=]DIR`` as ``(name, absolute DIR)``; the name defaults to ``variant``."""
    name, _, directory = text.rpartition("=")
    return name or "variant", os.path.abspath(directory)
