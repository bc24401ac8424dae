"""Benchmark: requests/s of gunicorn's own PROXY v2 support against gevent_proxyproto's GeventWorker.

What is measured
----------------
The same WSGI app (``bench/_wsgi_app.py``: a 2-byte answer) under two gunicorn
configurations, one worker each, access log off:

* ``native``: ``gunicorn -k gevent --proxy-protocol v2`` (gunicorn's parser
  reads the header out of its HTTP buffer);
* ``ours``: ``gunicorn -k gevent_proxyproto.gunicorn.GeventWorker`` (the header
  read under a ProxyPolicy before the HTTP parser, as the worker does).

The load is a small gevent client in this process: ``--concurrency``
greenlets, each in a closed loop. Every connection starts with the same
28-byte PROXY v2 INET header (what HAProxy's ``send-proxy-v2`` sends), then:

* ``fresh``: one ``GET`` and the connection is closed (a reset, so no
  TIME_WAIT piles up): the header's cost is paid on every request;
* ``keepalive``: ``--requests-per-connection`` GETs on one connection (HTTP/1.1
  keep-alive): the header's cost is shared by them.

requests/s is this client's wall clock from the first connect to the last
answer, over ``--requests`` requests, after ``--warmup`` requests not counted.
The worker's CPU time per request (user + system, from ``/proc``) is the
server's own cost, the least noisy figure on a shared machine; ``capacity
ratio`` = ``cpu/req(native) / cpu/req(ours)`` is the requests/s ratio where
the worker, not the client, is the bottleneck.

Method
------
Rounds are interleaved (native, ours, then ours, native, ...); every run gets a
fresh gunicorn, ready when its log says "Booting worker". The ratio
``ours / native`` is taken per round (its two runs were seconds apart: the
machine's background load mostly cancels), then reported as median [IQR]
(min-max) over the rounds. The goal is a median >= 1.0.

Usage::

    python bench/gunicorn.py                     # 7 rounds, both modes
    python bench/gunicorn.py --quick             # 3 short rounds
    python bench/gunicorn.py --mode fresh --json /tmp/gunicorn.json
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import BENCH, REPO, fmt, machine, ratio_summary, rotated, summarize, write_json

CONFIGURATIONS = {
    "native": ["-k", "gevent", "--proxy-protocol", "v2"],
    "ours": ["-k", "gevent_proxyproto.gunicorn.GeventWorker"],
}
#: HAProxy's send-proxy-v2 header for a TCP4 client (28 bytes).
HEADER = (
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"
    + socket.inet_aton("203.0.113.7")
    + socket.inet_aton("127.0.0.1")
    + struct.pack("!HH", 4242, 8000)
)
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
LINGER_RESET = struct.pack("ii", 1, 0)
READY = re.compile(rb"Booting worker with pid")


def start_gunicorn(configuration: str, log: Any) -> tuple[subprocess.Popen[bytes], int]:
    """A fresh gunicorn on a free port, once it says it booted its worker."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [
        sys.executable, "-m", "gunicorn", *CONFIGURATIONS[configuration], "-w", "1", "-b", f"127.0.0.1:{port}",
        "--no-control-socket", "--log-level", "info", "--chdir", str(BENCH), "--keep-alive", "30", "_wsgi_app:app",
    ]  # fmt: skip
    log.seek(0)
    log.truncate()
    # From the checkout root: run from bench/, "-m gunicorn" would find this very file.
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    # Logged by the worker as it starts; connections made before its server runs wait in the
    # listener's backlog (gunicorn's master made it), and the warm-up absorbs them.
    deadline = time.monotonic() + 30
    while True:
        log.seek(0)
        output = log.read()
        if READY.search(output):
            return process, port
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise SystemExit(f"gunicorn {configuration} did not start:\n{output.decode(errors='replace')}")
        time.sleep(0.02)  # a bounded poll of its log, outside the measurement


def worker_cpu_seconds(master_pid: int) -> float:
    """User + system CPU seconds of the master's (one) worker, from /proc: the server's own cost."""
    with open(f"/proc/{master_pid}/task/{master_pid}/children") as children:
        (worker,) = children.read().split()
    with open(f"/proc/{worker}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def load(port: int, mode: str, requests: int, concurrency: int, per_connection: int) -> float:
    """Send ``requests`` requests with ``concurrency`` greenlets; requests per second."""
    import gevent
    import gevent.socket

    remaining = [requests]

    def one_connection() -> None:
        sock = gevent.socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        try:
            count = 1 if mode == "fresh" else per_connection
            first = True
            while count and remaining[0] > 0:
                remaining[0] -= 1
                count -= 1
                sock.sendall(HEADER + REQUEST if first else REQUEST)
                first = False
                read_answer(sock)
        finally:
            sock.close()

    def client() -> None:
        while remaining[0] > 0:
            one_connection()

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(client) for _ in range(concurrency)], raise_error=True)
    return requests / (time.perf_counter() - started)


def read_answer(sock: Any) -> None:
    """One response of the bench app: headers, then its 2-byte body."""
    data = b""
    while not (b"\r\n\r\n" in data and data.endswith(b"ok")):
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"connection closed mid-answer: {data!r}")
        data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer: {data!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=4000, help="per run (default 4000)")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests-per-connection", type=int, default=20, help="keepalive mode (default 20)")
    parser.add_argument("--mode", choices=["fresh", "keepalive", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1000 requests")
    parser.add_argument("--json", metavar="FILE")
    options = parser.parse_args(argv)
    if options.quick:
        options.rounds, options.requests, options.warmup = 3, 1000, 100
    modes = ["fresh", "keepalive"] if options.mode == "both" else [options.mode]
    report: dict[str, Any] = {"machine": machine(), "options": vars(options), "modes": {}}
    print(f"machine: {report['machine']}")
    results: dict[str, dict[str, list[float]]] = {mode: {name: [] for name in CONFIGURATIONS} for mode in modes}
    cpu: dict[str, dict[str, list[float]]] = {mode: {name: [] for name in CONFIGURATIONS} for mode in modes}
    with tempfile.TemporaryFile() as log:
        for round_index in range(options.rounds):
            for name in rotated(list(CONFIGURATIONS), round_index):
                process, port = start_gunicorn(name, log)
                try:
                    for mode in modes:
                        load(port, mode, options.warmup, options.concurrency, options.requests_per_connection)
                        cpu_before = worker_cpu_seconds(process.pid)
                        rate = load(port, mode, options.requests, options.concurrency, options.requests_per_connection)
                        cpu_us = (worker_cpu_seconds(process.pid) - cpu_before) / options.requests * 1e6
                        results[mode][name].append(rate)
                        cpu[mode][name].append(cpu_us)
                        print(f"round {round_index + 1} {mode:9} {name:6} {rate:8.0f} req/s {cpu_us:6.0f} us cpu/req",
                              flush=True)  # fmt: skip
                finally:
                    stop(process)
    for mode in modes:
        ratio = ratio_summary(results[mode]["ours"], results[mode]["native"])
        capacity = ratio_summary(cpu[mode]["native"], cpu[mode]["ours"])
        report["modes"][mode] = {
            "native": summarize(results[mode]["native"]),
            "ours": summarize(results[mode]["ours"]),
            "ratio": ratio,
            "cpu_us_native": summarize(cpu[mode]["native"]),
            "cpu_us_ours": summarize(cpu[mode]["ours"]),
            "capacity_ratio": capacity,
        }
        print(
            f"{mode:9} native {fmt(summarize(results[mode]['native']), digits=0)} req/s, "
            f"ours {fmt(summarize(results[mode]['ours']), digits=0)} req/s, ratio ours/native {fmt(ratio)}\n"
            f"{'':9} worker cpu/req native {fmt(summarize(cpu[mode]['native']), digits=0)} us, "
            f"ours {fmt(summarize(cpu[mode]['ours']), digits=0)} us, capacity ratio {fmt(capacity)}"
        )
    print(f"load average at the end: {os.getloadavg()}")
    write_json(options.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
