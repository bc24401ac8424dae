"""Benchmark: server memory per connection waiting in the middle of its PROXY header.

What is measured
----------------
``--connections`` clients (2000 by default) connect and send part of what they
would send, then stay silent. The server process (``bench/_server.py``) holds
one greenlet per connection, blocked:

* ``plain``: a plain gevent StreamServer whose handler reads a request line
  (``line``): the clients send ``GET /index.html HTTP/1.1`` without the LF,
  so every handler waits in ``recv`` in the middle of its line. The baseline:
  what any gevent server pays for a connection that waits for its client;
* ``v1``: the PROXY server; the clients send the first 28 bytes of a v1 line
  (``PROXY TCP4 203.0.113.7 192.0``);
* ``v2``: the PROXY server; the clients send the first 20 bytes of a v2
  header (the preamble and 4 bytes of the address block).

Per configuration and round, two fresh server processes: one measures the
resident set (``VmRSS``) and one runs ``tracemalloc`` for the Python heap
(tracemalloc's own bookkeeping would inflate the RSS). Each is warmed up with
200 connections that complete, then measured before the clients connect and
once every connection is held (its greenlet counted by a heap census, the
process's CPU time idle). Reported per connection: RSS bytes, traced Python
heap bytes, gc-tracked objects and greenlets (those two from the census).
The kernel's socket buffers are the same for all three and are not counted.

Method: rounds interleaved (plain, v1, v2, the next round starting one further
along), 7 by default (3 with ``--quick``, with 500 connections); medians with
IQR and min-max, and per-round ratios against plain.

Reproduce (from the repository root)::

    python bench/memory.py
    python bench/memory.py --quick --json /tmp/memory.json
    python bench/memory.py --variant proposed=/tmp/patched   # a patched copy, interleaved
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import Any

from _common import (
    LINGER_RESET,
    Server,
    fmt,
    machine,
    parse_variant,
    raise_fd_limit,
    ratio_summary,
    rotated,
    summarize,
    write_json,
)

import gevent_proxyproto as gpp

PARTIAL = {
    "plain": ("plain", b"GET /index.html HTTP/1.1"),
    "v1": ("proxy", gpp.build_v1(("203.0.113.7", 4242), ("192.0.2.1", 443))[:28]),
    "v2": ("proxy", gpp.build_v2(source=("203.0.113.7", 4242), destination=("192.0.2.1", 443))[:20]),
}
COMPLETE = {
    "plain": b"GET / HTTP/1.0\r\n\r\n",
    "v1": gpp.build_v1(("203.0.113.7", 4242), ("192.0.2.1", 443)) + b"GET / HTTP/1.0\r\n\r\n",
    "v2": gpp.build_v2(source=("203.0.113.7", 4242), destination=("192.0.2.1", 443)) + b"GET / HTTP/1.0\r\n\r\n",
}


def settle(server: Server, greenlets: int, timeout: float = 60.0) -> dict[str, Any]:
    """A census once ``greenlets`` are alive and the server's CPU time has stopped moving (bounded)."""
    deadline = time.monotonic() + timeout
    census = server.census()
    while census["greenlets"] < greenlets and time.monotonic() < deadline:
        time.sleep(0.05)
        census = server.census()
    previous = server.stats()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        current = server.stats()
        # Under 5% of a core, the stats call itself included (it lists 2000+
        # fds, slowly under tracemalloc): idle, every connection is waiting.
        if current["cpu_ns"] - previous["cpu_ns"] < 10_000_000:
            break
        previous = current
    return server.census()


def warm_up(server: Server, name: str) -> None:
    for _ in range(200):
        with socket.create_connection(server.address, timeout=10) as client:
            client.sendall(COMPLETE[name])
            client.recv(4096)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)


def one_run(name: str, count: int, traced: bool, library: str | None = None) -> dict[str, Any]:
    kind, partial = PARTIAL[name]
    extra = ["--backlog", "4096", "--header-timeout", "600"] + (["--tracemalloc"] if traced else [])
    extra += ["--library", library] if library else []
    clients: list[socket.socket] = []
    with Server(kind, "line", extra=extra) as server:
        warm_up(server, name)
        before = settle(server, 0)
        try:
            for _ in range(count):
                client = socket.create_connection(server.address, timeout=30)
                client.sendall(partial)
                clients.append(client)
            after = settle(server, before["greenlets"] + count)
        finally:
            for client in clients:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                client.close()
    held = after["greenlets"] - before["greenlets"]
    result = {
        "held": held,
        "greenlets_per_conn": held / count,
        "gc_objects_per_conn": (after["gc_objects"] - before["gc_objects"]) / count,
    }
    if traced:
        result["traced_bytes_per_conn"] = (after["traced_bytes"] - before["traced_bytes"]) / count
    else:
        result["rss_bytes_per_conn"] = (after["rss_kib"] - before["rss_kib"]) * 1024 / count
    return result


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    options.add_argument("--quick", action="store_true", help="3 rounds of 500 connections")
    options.add_argument("--rounds", type=int, help="rounds (default 7, --quick 3)")
    options.add_argument("--connections", type=int, help="connections held per run (default 2000)")
    options.add_argument(
        "--variant", metavar="[NAME=]DIR", action="append", default=[],
        help="also measure v1 and v2 with gevent_proxyproto imported from DIR (repeatable)",
    )  # fmt: skip
    options.add_argument("--json", metavar="FILE", help="write every round's numbers to FILE")
    args = options.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    count = args.connections or (500 if args.quick else 2000)
    raise_fd_limit()
    configs: dict[str, tuple[str, str | None]] = {name: (name, None) for name in PARTIAL}
    for variant in args.variant:
        label, directory = parse_variant(variant)
        for name in ("v1", "v2"):
            configs[f"{name}@{label}"] = (name, directory)
    names = list(configs)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in rotated(names, round_index):
            kind, library = configs[name]
            rss = one_run(kind, count, traced=False, library=library)
            traced = one_run(kind, count, traced=True, library=library)
            runs[name].append({**traced, **rss})
        print(f"  round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)

    metrics = ("rss_bytes_per_conn", "traced_bytes_per_conn", "gc_objects_per_conn", "greenlets_per_conn")
    report: dict[str, Any] = {"benchmark": "memory", "machine": machine(), "rounds": rounds, "connections": count}
    report["partial_bytes"] = {name: len(partial) for name, (_, partial) in PARTIAL.items()}
    report["configs"] = {}
    print(f"{rounds} rounds x {count} connections held mid-header (plain: mid-request-line); median [IQR] (min-max)")
    print(f"{'config':<12} {'RSS bytes/conn':>30} {'Python heap bytes/conn':>30} {'gc objects/conn':>24} {'held':>6}")
    for name in names:
        entry: dict[str, Any] = {metric: summarize([run[metric] for run in runs[name]]) for metric in metrics}
        entry["held_min"] = min(run["held"] for run in runs[name])
        report["configs"][name] = entry
        print(
            f"{name:<12} {fmt(entry['rss_bytes_per_conn'], digits=0):>30} "
            f"{fmt(entry['traced_bytes_per_conn'], digits=0):>30} {fmt(entry['gc_objects_per_conn'], digits=1):>24} "
            f"{entry['held_min']:>6}"
        )
    print("\nper-round ratios against plain; median [IQR] (min-max)")
    for name in names[1:]:
        ratios = {
            metric: ratio_summary([run[metric] for run in runs[name]], [run[metric] for run in runs["plain"]])
            for metric in ("rss_bytes_per_conn", "traced_bytes_per_conn")
        }
        report["configs"][name]["ratios"] = ratios
        print(
            f"{name:<12} RSS {fmt(ratios['rss_bytes_per_conn'])}   Python heap {fmt(ratios['traced_bytes_per_conn'])}"
        )
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
