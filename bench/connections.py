"""Benchmark: connection overhead of ProxyStreamServer against a plain gevent StreamServer.

What is measured
----------------
Two server processes (``bench/_server.py``) run the same handler (one
``recv``, one short reply, then the server closes; ``--work-us`` makes it burn
that much CPU first, as an application would): a plain
``gevent.server.StreamServer`` and a ``ProxyStreamServer``. This process is
the load: a closed loop on raw non-blocking sockets and epoll (no gevent),
``--concurrency`` connections in flight, each sending its bytes in one
``send`` right after connecting:

* ``plain``: the request alone, to the plain server;
* ``v1``: ``PROXY TCP4 ...\\r\\n`` + the request, to the PROXY server;
* ``v2``: a 28-byte v2 INET header + the request, to the PROXY server.

Per (round, configuration), over ``--connections`` connections:

* connections per second (this client's wall clock, first connect to last close);
* p50 and p99 latency from just before ``socket()`` to the first reply byte;
* the server's CPU time (user + system, from the server process itself) per
  connection: the server's capacity, the least noisy figure on a shared machine.

Method
------
Rounds are interleaved (plain, v1, v2, ..., then the next round starts one
further along); 9 rounds by default, 3 with ``--quick``. Every run gets a
fresh server process, warmed up with ``--warmup`` connections that are not
counted: two processes of the same code differ by up to ~10% in CPU per
connection (memory layout, placement on the cores), a bias that a long-lived
process would pin on one configuration. Every figure is reported as the median over rounds with its IQR
and min-max; the ratios against plain gevent are computed per round (the two
runs of a ratio were seconds apart, so the machine's background load mostly
cancels) and then summarized the same way. ``throughput ratio`` is
``conn/s(v) / conn/s(plain)``; ``capacity ratio`` is
``cpu/conn(plain) / cpu/conn(v)``, the throughput ratio the server would reach
where it, and not the client, is the bottleneck.

``--variant NAME=DIR`` (repeatable) adds servers that import
``gevent_proxyproto`` from ``DIR`` (a patched copy of the package's parent
directory) as the configurations ``v1@NAME`` and ``v2@NAME``, interleaved with
the others: how a proposed change is measured.

``floor-v1`` and ``floor-v2`` (``--no-floor`` to skip) are a reference, not a
product: a plain StreamServer whose handler peeks, consumes the header exactly
without validating it, then replies. It makes the same system calls as the
PROXY server with almost none of its Python: the gap from plain to floor is
what exact reads cost in the kernel, the gap from floor to v1/v2 is the
library's own work. ``--breakdown`` adds two steps between them, for v1:
``parse-v1`` (the floor plus ``parse()`` of the peeked bytes) and
``reader-v1`` (``read_header()`` on the plain gevent socket, no ProxySocket,
no server wrappers).

Reproduce (from the repository root)::

    python bench/connections.py                  # 9 rounds x 5000 connections each
    python bench/connections.py --quick          # a smoke run
    python bench/connections.py --json /tmp/connections.json
    python bench/connections.py --work-us 100    # a handler that does 100 us of work per request
    python bench/connections.py --breakdown      # where the time goes, piece by piece
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from _common import (
    REQUEST,
    Server,
    fmt,
    machine,
    parse_variant,
    percentile,
    raise_fd_limit,
    ratio_summary,
    rotated,
    run_load,
    summarize,
    write_json,
)

import gevent_proxyproto as gpp

SOURCE = ("203.0.113.7", 4242)
DESTINATION = ("192.0.2.1", 443)


def payloads() -> dict[str, bytes]:
    return {
        "plain": REQUEST,
        "v1": gpp.build_v1(SOURCE, DESTINATION) + REQUEST,
        "v2": gpp.build_v2(source=SOURCE, destination=DESTINATION) + REQUEST,
    }


def one_run(server: Server, payload: bytes, count: int, concurrency: int) -> dict[str, Any]:
    before = server.stats()
    load = run_load(server.address, payload, count, concurrency)
    after = server.stats()
    latencies = load["latencies"]
    done = max(1, len(latencies))
    cpu = (after["cpu_ns"] - before["cpu_ns"]) / 1e9
    return {
        "conn_per_s": len(latencies) / load["elapsed"],
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "server_cpu_us": cpu / done * 1e6,
        "server_utilization": cpu / load["elapsed"],
        "errors": load["errors"],
    }


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    options.add_argument("--quick", action="store_true", help="3 rounds of 1000 connections: a smoke run")
    options.add_argument("--rounds", type=int, help="rounds (default 9, --quick 3)")
    options.add_argument("--connections", type=int, help="connections per configuration and round (default 5000)")
    options.add_argument("--concurrency", type=int, default=16, help="connections in flight (default 16)")
    options.add_argument(
        "--work-us", type=float, default=0.0, help="CPU microseconds the handler burns per request (default 0)"
    )
    options.add_argument("--warmup", type=int, default=1000, help="connections thrown away first (default 1000)")
    options.add_argument(
        "--variant",
        metavar="[NAME=]DIR",
        action="append",
        default=[],
        help="also measure gevent_proxyproto imported from DIR (repeatable)",
    )
    options.add_argument("--no-floor", action="store_true", help="skip the floor-v1/floor-v2 reference servers")
    options.add_argument(
        "--breakdown", action="store_true", help="add parse-v1 and reader-v1: the library's pieces one at a time"
    )
    options.add_argument("--json", metavar="FILE", help="write every round's numbers to FILE")
    args = options.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 9)
    count = args.connections or (1000 if args.quick else 5000)
    raise_fd_limit()

    data = payloads()
    # name -> (server kind, handler, library directory or None, payload)
    configs: dict[str, tuple[str, str, str | None, bytes]] = {
        "plain": ("plain", "reply", None, data["plain"]),
        "v1": ("proxy", "reply", None, data["v1"]),
        "v2": ("proxy", "reply", None, data["v2"]),
    }
    if not args.no_floor:
        configs["floor-v1"] = ("plain", "floor", None, data["v1"])
        configs["floor-v2"] = ("plain", "floor", None, data["v2"])
    if args.breakdown:
        configs["parse-v1"] = ("plain", "floor-parse", None, data["v1"])
        configs["reader-v1"] = ("plain", "floor-read-header", None, data["v1"])
    for variant in args.variant:
        name, directory = parse_variant(variant)
        configs[f"v1@{name}"] = ("proxy", "reply", directory, data["v1"])
        configs[f"v2@{name}"] = ("proxy", "reply", directory, data["v2"])
    names = list(configs)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in rotated(names, round_index):
            kind, handler, library, payload = configs[name]
            # A fresh server process for every run: two processes of the same
            # code differ by up to ~10% in CPU per connection (memory layout,
            # placement on the cores), a bias that would otherwise stick to
            # one configuration for the whole benchmark.
            extra = ["--work-us", str(args.work_us)] + (["--library", library] if library else [])
            with Server(kind, handler, extra=extra) as server:
                one_run(server, payload, args.warmup, args.concurrency)  # imports, pools, caches: thrown away
                results[name].append(one_run(server, payload, count, args.concurrency))
        print(f"  round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)

    report: dict[str, Any] = {
        "benchmark": "connections",
        "machine": machine(),
        "rounds": rounds,
        "connections_per_round": count,
        "concurrency": args.concurrency,
        "warmup_connections": args.warmup,
        "handler_work_us": args.work_us,
        "variants": args.variant,
        "header_bytes": {name: len(data[name]) - len(REQUEST) for name in ("v1", "v2")},
        "configs": {},
    }
    metrics = ("conn_per_s", "p50_ms", "p99_ms", "server_cpu_us", "server_utilization")
    print(
        f"{rounds} rounds x {count} connections, concurrency {args.concurrency}, handler work {args.work_us:g} us; "
        "median [IQR] (min-max)"
    )
    print(f"{'config':<11} {'conn/s':>28} {'p50 ms':>26} {'p99 ms':>26} {'server CPU us/conn':>26}")
    for name in names:
        entry: dict[str, Any] = {"errors": sum(run["errors"] for run in results[name])}
        for metric in metrics:
            entry[metric] = summarize([run[metric] for run in results[name]])
        report["configs"][name] = entry
        print(
            f"{name:<11} {fmt(entry['conn_per_s'], digits=0):>28} {fmt(entry['p50_ms']):>26} "
            f"{fmt(entry['p99_ms']):>26} {fmt(entry['server_cpu_us'], digits=1):>26}"
            + (f"  errors: {entry['errors']}" if entry["errors"] else "")
        )
    print()
    print("per-round ratios against plain gevent; median [IQR] (min-max)")
    print(f"{'config':<11} {'throughput':>24} {'capacity (CPU)':>24} {'p50 latency':>24} {'p99 latency':>24}")
    plain = results["plain"]
    for name in names[1:]:
        runs = results[name]
        ratios = {
            "throughput": ratio_summary([r["conn_per_s"] for r in runs], [r["conn_per_s"] for r in plain]),
            "capacity": ratio_summary([r["server_cpu_us"] for r in plain], [r["server_cpu_us"] for r in runs]),
            "p50": ratio_summary([r["p50_ms"] for r in runs], [r["p50_ms"] for r in plain]),
            "p99": ratio_summary([r["p99_ms"] for r in runs], [r["p99_ms"] for r in plain]),
        }
        report["configs"][name]["ratios"] = ratios
        print(
            f"{name:<11} {fmt(ratios['throughput']):>24} {fmt(ratios['capacity']):>24} "
            f"{fmt(ratios['p50']):>24} {fmt(ratios['p99']):>24}"
        )
    utilization = summarize([run["server_utilization"] for name in names for run in results[name]])
    print(f"\nserver CPU utilization during the runs: median {utilization['median']:.2f} of one core")
    print("goal (issue 16): throughput ratio >= 0.86 for v1 and v2 (the floor, two recv calls, is ~0.91-0.93)")
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
