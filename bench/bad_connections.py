"""Robustness: 10,000 bad connections against ProxyStreamServer, then a look for leaks.

What is measured
----------------
One PROXY server process (``bench/_server.py``, handler ``reply``,
``header_timeout`` 2 s, its log on a file at WARNING). A flood process opens
the bad connections, 100 in flight, cycling through these kinds:

* ``http``, ``tls``, ``random``: not a PROXY header at all (NOT_HDR);
* ``v1-bad``: a v1 line with a leading-zero port (BAD_HDR);
* ``v2-version``: a v2 preamble with version 3 (BAD_PROTO);
* ``v2-crc``: a v2 header whose CRC32C TLV does not match (CRC);
* ``reset-mid-header``: half a header, then a reset (SO_LINGER 0);
* ``fin-mid-header``: half a header, then close (ABORT);
* ``immediate-close``: connect and close at once (EMPTY);
* ``eof-first``: connect, shut down the sending side, wait for the server (EMPTY).

Rounds alternate a ``baseline`` phase (good clients only: one every 1/200 s,
a v2 header and a request, connect-to-reply timed) with a ``flood`` phase (the
same good clients while ``--connections``/``--rounds`` bad ones arrive).
Before the first round and after the last, a census of the server: open file
descriptors, live greenlets and, after ``gc.collect()``, gc-tracked objects.

Reported: the good clients' p50/p99 per phase and the per-round ratio
flood/baseline (the flood is a closed loop that saturates the server, so this
is queueing behind it, not a goal); bad connections refused per second; the server's refusals by reason (they must add up to the bad
connections); the objects its cyclic garbage collector found during the flood
(reference cycles left by failures: SPEC.md section 8 ties them to p99
pauses); fds and greenlets after the flood against the baseline (goal: back to
it); tracebacks in the server's log (goal: none); and a last good connection
(goal: served).

Reproduce (from the repository root)::

    python bench/bad_connections.py                 # 10,000 bad connections in 5 rounds
    python bench/bad_connections.py --quick         # 1,000 in 2 rounds
    python bench/bad_connections.py --json /tmp/bad_connections.json
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from _common import (
    LINGER_RESET,
    REQUEST,
    Server,
    fmt,
    machine,
    percentile,
    raise_fd_limit,
    ratio_summary,
    run_load,
    summarize,
    write_json,
)

import gevent_proxyproto as gpp

V1 = gpp.build_v1(("203.0.113.7", 4242), ("192.0.2.1", 443))
V2 = gpp.build_v2(source=("203.0.113.7", 4242), destination=("192.0.2.1", 443))
_CRC_GOOD = gpp.build_v2(source=("203.0.113.7", 4242), destination=("192.0.2.1", 443), crc32c=True)

#: kind -> (bytes to send, how the client ends: "wait" for the server, "reset", "close", "shutdown")
KINDS: dict[str, tuple[bytes, str]] = {
    "http": (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "wait"),
    "tls": (bytes.fromhex("16030100c8010000c40303") + bytes(32), "wait"),
    "random": (bytes(range(0x41, 0x61)), "wait"),
    "v1-bad": (b"PROXY TCP4 203.0.113.7 192.0.2.1 04242 443\r\n", "wait"),
    "v2-version": (bytes.fromhex("0d0a0d0a000d0a515549540a31110000"), "wait"),
    "v2-crc": (_CRC_GOOD[:-1] + bytes([_CRC_GOOD[-1] ^ 0xFF]), "wait"),
    "reset-mid-header": (V1[:20], "reset"),
    "fin-mid-header": (V2[:20], "close"),
    "immediate-close": (b"", "close"),
    "eof-first": (b"", "shutdown"),
}


def flood(port: int, count: int, concurrency: int) -> int:
    """The bad clients (a child process): ``count`` connections, kinds in turn; prints a JSON summary."""
    raise_fd_limit()
    address = ("127.0.0.1", port)
    kinds = list(KINDS)
    poller = select.epoll()
    live: dict[int, tuple[socket.socket, str, bool]] = {}
    outcomes: Counter[str] = Counter()
    started = 0
    deadline = time.monotonic() + 120

    def start() -> None:
        nonlocal started
        kind = kinds[started % len(kinds)]
        started += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if sock.connect_ex(address) not in (0, errno.EINPROGRESS):
            outcomes["connect-failed"] += 1
            sock.close()
            return
        live[sock.fileno()] = (sock, kind, False)
        poller.register(sock.fileno(), select.EPOLLOUT)

    def end(fd: int, outcome: str, reset: bool = False) -> None:
        sock = live.pop(fd)[0]
        poller.unregister(fd)
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.close()
        outcomes[outcome] += 1

    while (live or started < count) and time.monotonic() < deadline:
        while len(live) < concurrency and started < count:
            start()
        for fd, events in poller.poll(1.0):
            if fd not in live:
                continue
            sock, kind, connected = live[fd]
            data, ending = KINDS[kind]
            if not connected:
                if events & (select.EPOLLERR | select.EPOLLHUP):
                    end(fd, "connect-failed")
                    continue
                try:
                    if data:
                        sock.send(data)
                except OSError:
                    end(fd, "send-failed")
                    continue
                if ending == "reset":
                    end(fd, "client-reset", reset=True)
                elif ending == "close":
                    end(fd, "client-closed")
                else:
                    if ending == "shutdown":
                        sock.shutdown(socket.SHUT_WR)
                    live[fd] = (sock, kind, True)
                    poller.modify(fd, select.EPOLLIN | select.EPOLLRDHUP)
                continue
            try:
                reply = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                reply = b""
            end(fd, "server-served" if reply else "server-closed", reset=True)
    for fd in list(live):
        end(fd, "timed-out", reset=True)
    print(json.dumps({"started": started, "outcomes": outcomes}), flush=True)
    return 0


def good_load(server: Server, rate: float, duration: float) -> dict[str, Any]:
    return run_load(server.address, V2 + REQUEST, int(rate * duration), 64, time_limit=duration + 30, rate=rate)


def latency_summary(latencies: list[float], errors: int) -> dict[str, Any]:
    return {
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "max_ms": max(latencies) * 1e3 if latencies else float("nan"),
        "served": len(latencies),
        "errors": errors,
    }


def good_phase(server: Server, rate: float, duration: float) -> dict[str, Any]:
    load = good_load(server, rate, duration)
    return latency_summary(load["latencies"], load["errors"])


def wait_for(server: Server, predicate: Any, timeout: float, census: bool = False) -> dict[str, Any]:
    """Poll the server's stats (bounded) until ``predicate(stats)``; return the last stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = server.census() if census else server.stats()
        if predicate(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    options.add_argument("--quick", action="store_true", help="1,000 bad connections in 2 rounds")
    options.add_argument("--connections", type=int, help="bad connections in all (default 10,000)")
    options.add_argument("--rounds", type=int, help="rounds (default 5, --quick 2)")
    options.add_argument("--concurrency", type=int, default=100, help="bad connections in flight (default 100)")
    options.add_argument("--rate", type=float, default=200.0, help="good connections per second (default 200)")
    options.add_argument("--json", metavar="FILE", help="write the numbers to FILE")
    options.add_argument("--flood", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = options.parse_args(argv)
    total = args.connections or (1000 if args.quick else 10_000)
    rounds = args.rounds or (2 if args.quick else 5)
    per_round = total // rounds
    if args.flood:
        return flood(args.flood, per_round, args.concurrency)
    raise_fd_limit()

    log = tempfile.NamedTemporaryFile("w+", prefix="bad_connections-", suffix=".log", delete=False)
    phases: dict[str, list[dict[str, Any]]] = {"baseline": [], "flood": []}
    outcomes: Counter[str] = Counter()
    server = Server("proxy", "reply", stderr=log, extra=["--header-timeout", "2", "--backlog", "4096"])
    try:
        good_phase(server, args.rate, 0.5)  # warm-up: imports, pools, the logger
        for data, _ in KINDS.values():  # and one of each failure: lazy set-up happens before the baseline
            with socket.create_connection(server.address) as client:
                client.sendall(data or b"x")
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        wait_for(server, lambda stats: sum(stats["failures"].values()) >= len(KINDS), 10)
        before = server.command("collect")
        failures_before = sum(before["failures"].values())
        for round_index in range(rounds):
            phases["baseline"].append(good_phase(server, args.rate, 1.5))
            refused = sum(server.stats()["failures"].values())
            child = subprocess.Popen(
                [sys.executable, __file__, "--flood", str(server.port), "--connections", str(total),
                 "--rounds", str(rounds), "--concurrency", str(args.concurrency)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert child.stdout is not None
            started = time.monotonic()
            latencies: list[float] = []
            errors = 0
            while child.poll() is None and time.monotonic() - started < 120:  # good clients while it floods
                load = good_load(server, args.rate, 0.25)
                latencies += load["latencies"]
                errors += load["errors"]
            summary = json.loads(child.stdout.readline() or "{}")
            child.wait(timeout=30)
            outcomes.update(summary.get("outcomes", {}))
            seconds = time.monotonic() - started
            phases["flood"].append({**latency_summary(latencies, errors), "bad_per_s": per_round / seconds})
            wait_for(server, lambda stats, goal=refused + per_round: sum(stats["failures"].values()) >= goal, 30)
            print(f"  round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
        settled = wait_for(
            server,
            lambda stats: stats["fds"] <= before["fds"] and stats["greenlets"] <= before["greenlets"],
            15,
            census=True,
        )
        after = server.command("collect")
        with socket.create_connection(server.address, timeout=5) as client:
            client.sendall(V1 + REQUEST)
            still_serves = client.recv(4096).startswith(b"HTTP/1.0 200")
    finally:
        server.close()
    log.seek(0)
    log_text = log.read()
    log.close()

    refusals = {reason: count - before["failures"].get(reason, 0) for reason, count in after["failures"].items()}
    report: dict[str, Any] = {
        "benchmark": "bad_connections",
        "machine": machine(),
        "bad_connections": per_round * rounds,
        "rounds": rounds,
        "kinds": list(KINDS),
        "client_outcomes": dict(outcomes),
        "refusals": refusals,
        "refused_total": sum(after["failures"].values()) - failures_before,
        "gc_collected_during_flood": after["gc_collected"] - before["gc_collected"],
        "baseline_census": {key: before[key] for key in ("fds", "greenlets", "gc_objects", "rss_kib")},
        "settled_census": {key: settled[key] for key in ("fds", "greenlets", "gc_objects", "rss_kib")},
        "after_collect": {key: after[key] for key in ("fds", "greenlets", "gc_objects", "rss_kib")},
        "tracebacks_in_log": log_text.count("Traceback"),
        "log_lines": len(log_text.splitlines()),
        "still_serves": still_serves,
        "log_file": log.name,
        "phases": {},
    }
    print(f"{report['bad_connections']} bad connections in {rounds} rounds ({len(KINDS)} kinds in turn)")
    print(f"{'phase':<9} {'p50 ms':>26} {'p99 ms':>26} {'max ms':>26} {'served':>7} {'errors':>7}")
    for phase, runs in phases.items():
        entry = {metric: summarize([run[metric] for run in runs]) for metric in ("p50_ms", "p99_ms", "max_ms")}
        entry["served"] = sum(run["served"] for run in runs)
        entry["errors"] = sum(run["errors"] for run in runs)
        report["phases"][phase] = entry
        print(
            f"{phase:<9} {fmt(entry['p50_ms']):>26} {fmt(entry['p99_ms']):>26} {fmt(entry['max_ms']):>26} "
            f"{entry['served']:>7} {entry['errors']:>7}"
        )
    p99 = ratio_summary([run["p99_ms"] for run in phases["flood"]], [run["p99_ms"] for run in phases["baseline"]])
    report["p99_ratio"] = p99
    report["bad_per_s"] = summarize([run["bad_per_s"] for run in phases["flood"]])
    print(f"flood/baseline p99, per round: {fmt(p99)}")
    print(
        f"bad connections refused per second (closed loop, {args.concurrency} in flight: the server saturated): "
        f"{fmt(report['bad_per_s'], digits=0)}"
    )
    print(f"client outcomes: {dict(outcomes)}")
    print(f"server refusals: {refusals} (total {report['refused_total']})")
    print(f"objects found by the cyclic GC during the flood: {report['gc_collected_during_flood']}")
    for key in ("fds", "greenlets", "gc_objects"):
        print(
            f"{key:<11} baseline {before[key]:>7}  after the flood {settled[key]:>7}  after gc.collect() {after[key]:>7}"
        )
    print(f"RSS KiB: baseline {before['rss_kib']}, after {after['rss_kib']}")
    print(f"tracebacks in the server log: {report['tracebacks_in_log']} ({report['log_lines']} lines, {log.name})")
    print(f"a good connection afterwards is served: {still_serves}")
    write_json(args.json, report)
    if os.environ.get("KEEP_LOG") is None:
        os.unlink(log.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
