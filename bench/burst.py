"""Benchmark: how long the event loop is held by a burst of trickled header bytes (``_turns.py``).

What is measured
----------------
In one process, ``--connections`` socket pairs; on each, a greenlet runs
``read_header()`` and has read the first 6 bytes of a v1 line (it waits in
the middle of its header). Then every client sends its next byte in one loop,
without yielding: the next poll finds them all ready, as when trickling
clients send in the same instant (``bench/slow_clients.py``'s worst case).
A check watcher (run once the loop has polled) and a prepare watcher (run
before it polls again) time each loop iteration's busy part. Reported per
burst, median over ``--bursts``: the longest iteration (what a good client
ready meanwhile waits for, at worst), the number of iterations, and their sum
(the CPU the burst costs).

``--variant DIR`` also measures the package imported from DIR (for example a
checkout of the code before the turns), in a child process.

Reproduce (from the repository root)::

    python bench/burst.py
    python bench/burst.py --variant /tmp/before     # a checkout of other code, in a child of its own
    python bench/burst.py --quick --json /tmp/burst.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

HEADER = b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n"


def measure(connections: int, bursts: int) -> dict[str, Any]:
    import gevent
    import gevent.socket

    from gevent_proxyproto import read_header

    pairs = [gevent.socket.socketpair() for _ in range(connections)]
    for _, client in pairs:
        client.send(HEADER[:6])
    readers = [gevent.spawn(read_header, server, time.monotonic() + 60) for server, _ in pairs]
    gevent.sleep(0.1)  # every reader has read "PROXY " and waits mid-header
    loop = gevent.get_hub().loop
    busy: list[float] = []
    polled = [0.0]
    after_poll = loop.check(ref=False, priority=loop.MAXPRI)
    after_poll.start(lambda: polled.__setitem__(0, time.perf_counter()))
    before_poll = loop.prepare(ref=False)
    before_poll.start(lambda: busy.append(time.perf_counter() - polled[0]) if polled[0] else None)
    results = []
    for offset in range(6, 6 + bursts):
        busy.clear()
        polled[0] = 0.0
        for _, client in pairs:
            client.send(HEADER[offset : offset + 1])
        gevent.sleep(0.2)  # the burst is over long before
        iterations = [seconds for seconds in busy if seconds > 20e-6]  # not the idle ones
        results.append({"longest_ms": max(iterations) * 1e3, "iterations": len(iterations), "sum_ms": sum(iterations) * 1e3})
    after_poll.close()  # closed, not only stopped: libuv frees an unclosed watcher it still links
    before_poll.close()
    gevent.killall(readers)
    for server, client in pairs:
        server.close()
        client.close()
    return {key: statistics.median(result[key] for result in results) for key in results[0]}


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    options.add_argument("--connections", type=int, default=500, help="trickling connections (default 500)")
    options.add_argument("--bursts", type=int, default=9, help="bursts, one byte each (default 9, at most 30)")
    options.add_argument("--variant", metavar="DIR", help="also measure gevent_proxyproto imported from DIR")
    options.add_argument("--quick", action="store_true", help="200 connections, 3 bursts: a smoke run")
    options.add_argument("--json", metavar="FILE", help="write the results to FILE")
    options.add_argument("--child", metavar="DIR", help=argparse.SUPPRESS)
    args = options.parse_args()
    if args.child:
        sys.path.insert(0, args.child)
        print(json.dumps(measure(args.connections, min(args.bursts, 30))))
        return 0
    if args.quick:
        args.connections, args.bursts = min(args.connections, 200), 3
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = {"this tree": here}
    if args.variant:
        rows[args.variant] = args.variant
    print(f"{args.connections} connections mid-header, each sends one byte in the same instant; median of {args.bursts} bursts")
    print(f"{'package':30} {'longest iteration ms':>21} {'iterations':>11} {'sum ms':>8}")
    results = {}
    for name, directory in rows.items():
        command = [sys.executable, __file__, "--child", directory, "--connections", str(args.connections), "--bursts", str(args.bursts)]
        result = results[name] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        print(f"{name:30} {result['longest_ms']:21.2f} {result['iterations']:11.0f} {result['sum_ms']:8.2f}")
    if args.json:
        with open(args.json, "w") as output:
            json.dump({"connections": args.connections, "bursts": args.bursts, "results": results}, output, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
