"""Benchmark: Python function calls per connection, ProxyStreamServer against a plain StreamServer.

What is measured
----------------
A plain gevent ``StreamServer`` and a ``ProxyStreamServer`` run in this
process with the same handler as ``bench/connections.py`` (one ``recv``, a
38-byte reply). Clients in the same process (gevent sockets) connect one at a
time, send a header (none for plain) and a request in one ``send``, and read
the reply. ``sys.setprofile`` counts the Python function calls (``call``
events) and the calls of C functions (``c_call``) while ``--connections``
connections are served, after a warm-up. The clients' calls are the same in
every configuration, so the difference from plain is the server's: what the
PROXY path adds per connection.

Counts, not timings: the machine's load does not move them. Per-connection
code runs cold on a real server (2-3x its warm cost), so a call fewer is
worth more than a warm microbenchmark says; ``bench/connections.py`` measures
the time.

Reproduce (from the repository root)::

    python bench/calls.py
    python bench/calls.py --library /tmp/patched     # a patched copy of the package
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

REPLY = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
HEADERS = {
    "plain": b"",
    "v1": b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n",
    "v2": bytes.fromhex("0d0a0d0a000d0a515549540a2111000cc0000201c6336401dc0401bb"),  # TCP4, 12 address bytes
}


def reply(sock: Any, address: Any) -> None:
    if sock.recv(1024):
        sock.sendall(REPLY)


def count_calls(kind: str, connections: int, warmup: int) -> tuple[float, float]:
    import gevent
    import gevent.socket
    from gevent.server import StreamServer

    from gevent_proxyproto import ProxyStreamServer

    server = (StreamServer if kind == "plain" else ProxyStreamServer)(("127.0.0.1", 0), reply)
    server.start()
    header = HEADERS[kind]

    def one() -> None:
        client = gevent.socket.create_connection(server.address)
        client.sendall(header + REQUEST)
        client.recv(1024)
        client.close()

    for _ in range(warmup):
        one()
    counts = {"call": 0, "c_call": 0}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event in counts:
            counts[event] += 1

    sys.setprofile(profile)
    try:
        for _ in range(connections):
            one()
        gevent.sleep(0.05)  # the last handler's greenlet ends
    finally:
        sys.setprofile(None)
    server.stop()
    return counts["call"] / connections, counts["c_call"] / connections


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    options.add_argument("--connections", type=int, default=300, help="connections counted per configuration")
    options.add_argument("--warmup", type=int, default=50, help="connections served first, not counted")
    options.add_argument("--library", metavar="DIR", help="import gevent_proxyproto from DIR (a patched copy)")
    options.add_argument("--json", metavar="FILE", help="write the numbers to FILE")
    args = options.parse_args()
    sys.path.insert(0, args.library or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import gevent_proxyproto

    print(f"gevent_proxyproto from {os.path.dirname(gevent_proxyproto.__file__)}; {args.connections} connections")
    results = {kind: count_calls(kind, args.connections, args.warmup) for kind in HEADERS}
    plain_python, plain_c = results["plain"]
    for kind, (python_calls, c_calls) in results.items():
        print(f"{kind:6} Python calls/conn {python_calls:6.1f} ({python_calls - plain_python:+.1f} over plain)"
              f"   C calls/conn {c_calls:6.1f} ({c_calls - plain_c:+.1f})")  # fmt: skip
    if args.json:
        with open(args.json, "w") as output:
            json.dump({kind: {"python_calls": p, "c_calls": c} for kind, (p, c) in results.items()}, output, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
