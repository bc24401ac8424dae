"""Benchmark: recv-family system calls per PROXY header, counted with strace.

What is measured
----------------
A server process (``bench/_server.py``, handler ``reply``: one ``recv`` of the
request, one reply) runs under ``strace -f``, tracing ``accept``/``accept4``,
``recvfrom``, ``recvmsg``, ``recvmmsg`` and ``read``, plus ``openat`` and
``close`` to know which file descriptor is a client connection at each moment.
Only calls on accepted connections count (not stdin, not the files a lazy
import reads). This process connects ``--connections`` times, one connection
at a time; each client sends its whole header and request in one ``send``
right after connecting (one segment), waits for the reply, then resets.

Configurations: ``plain`` (a plain gevent StreamServer, the request alone) and
the PROXY server with ``v1``, ``v2`` (28 bytes), ``v2-tlv`` (HAProxy's TLV set
with CRC32C, SSL details, ALPN, authority, unique id), ``v2-large`` (a 1 KiB
TLV: more than one peek's worth) and, for information, ``v1-split`` (the line
in two segments 20 ms apart, TCP_NODELAY).

Per connection: recv-family calls that returned bytes, that returned
``EAGAIN`` (the greenlet then waits for readability: not a spin, one per wait),
and end of file; and the calls the header cost: the configuration's total
minus plain's (whose one call is the handler's ``recv`` of the request, which
the PROXY handler makes too). Counts are exact, not timings: the machine's
noise does not move them, so one run of each suffices (``--rounds`` repeats to
show it).

Goal: at most 2 recv-family calls per header that arrives in one segment.

Reproduce (from the repository root; needs ``strace``)::

    python bench/syscalls.py
    python bench/syscalls.py --quick --json /tmp/syscalls.json
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from _common import LINGER_RESET, REQUEST, Server, machine, summarize, write_json

import gevent_proxyproto as gpp

TRACED = "accept,accept4,recvfrom,recvmsg,recvmmsg,read,openat,open,close,socket,dup,dup2,dup3,pipe2"
RECV_FAMILY = {"recvfrom", "recvmsg", "recvmmsg", "read"}
_LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(\w+)\((\d+)?(.*)\)\s+=\s+(-?\d+)(?:\s+(\w+))?")

SOURCE = ("203.0.113.7", 4242)
DESTINATION = ("192.0.2.1", 443)


def payloads() -> dict[str, list[bytes]]:
    """Per configuration: the segments the client sends."""
    haproxy_tlvs = [
        (gpp.TLVType.ALPN, b"h2"),
        (gpp.TLVType.AUTHORITY, b"www.example.com"),
        (gpp.TLVType.UNIQUE_ID, b"C0000201:DC04_C6336414:01BB_6740B2A1_0001:1A2B"),
        (gpp.TLVType.SSL, b"\x07\0\0\0\0" + b"\x21\x00\x07TLSv1.3" + b"\x23\x00\x16TLS_AES_256_GCM_SHA384"),
    ]
    v1 = gpp.build_v1(SOURCE, DESTINATION)
    return {
        "plain": [REQUEST],
        "v1": [v1 + REQUEST],
        "v2": [gpp.build_v2(source=SOURCE, destination=DESTINATION) + REQUEST],
        "v2-tlv": [gpp.build_v2(source=SOURCE, destination=DESTINATION, tlvs=haproxy_tlvs, crc32c=True) + REQUEST],
        "v2-large": [gpp.build_v2(source=SOURCE, destination=DESTINATION, tlvs=[(0xE1, b"x" * 1024)]) + REQUEST],
        "v1-split": [v1[:20], v1[20:] + REQUEST],
    }


def count_calls(trace_path: str) -> Counter[str]:
    """recv-family calls on accepted connections, by outcome: ``data``, ``eagain``, ``eof``, ``error``."""
    connections: set[int] = set()
    counts: Counter[str] = Counter()
    with open(trace_path, encoding="utf-8", errors="replace") as trace:
        for line in trace:
            match = _LINE.match(line)
            if match is None:
                continue
            name, fd_text, result_text, error = match.group(2), match.group(3), match.group(5), match.group(6)
            result = int(result_text)
            if name in ("accept", "accept4"):
                if result >= 0:
                    connections.add(result)
                continue
            if name in ("close",):
                if fd_text is not None:
                    connections.discard(int(fd_text))
                continue
            if name in ("openat", "open", "socket", "dup", "dup2", "dup3", "pipe2"):
                if result >= 0:
                    connections.discard(result)  # a reused number is no longer a client connection
                continue
            if name not in RECV_FAMILY or fd_text is None or int(fd_text) not in connections:
                continue
            counts["calls"] += 1
            if "MSG_PEEK" in line:
                counts["peeks"] += 1
            if result > 0:
                counts["data"] += 1
            elif result == 0:
                counts["eof"] += 1
            elif error == "EAGAIN":
                counts["eagain"] += 1
            else:
                counts["error"] += 1
    return counts


def run_config(segments: list[bytes], kind: str, count: int, strace: str, library: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        trace_path = os.path.join(directory, "trace")
        prefix = [strace, "-f", "-qq", "-e", f"trace={TRACED}", "-e", "signal=none", "-s", "0", "-o", trace_path]
        server = Server(kind, prefix=prefix, extra=["--library", library] if library else [])
        replies = 0
        try:
            for _ in range(count):
                with socket.create_connection(server.address, timeout=10) as client:
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    for index, segment in enumerate(segments):
                        if index:
                            time.sleep(0.02)  # a separate segment: the reader must wait for it
                        client.sendall(segment)
                    if client.recv(4096):
                        replies += 1
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        finally:
            server.close()
        counts = count_calls(trace_path)
    per_connection = {key: counts[key] / count for key in ("calls", "data", "eagain", "eof", "error", "peeks")}
    return {"replies": replies, "connections": count, **per_connection}


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    options.add_argument("--quick", action="store_true", help="50 connections per configuration")
    options.add_argument("--connections", type=int, help="connections per configuration (default 300)")
    options.add_argument("--rounds", type=int, default=1, help="repeat the whole run (counts are exact; default 1)")
    options.add_argument("--strace", default=shutil.which("strace") or "strace")
    options.add_argument("--library", metavar="DIR", help="import gevent_proxyproto from DIR (a patched copy)")
    options.add_argument("--json", metavar="FILE", help="write the numbers to FILE")
    args = options.parse_args(argv)
    if not shutil.which(args.strace):
        print("strace is not installed (apt-get install strace)", file=sys.stderr)
        return 2
    count = args.connections or (50 if args.quick else 300)
    data = payloads()
    names = list(data)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names:
            kind = "plain" if name == "plain" else "proxy"
            runs[name].append(run_config(data[name], kind, count, args.strace, args.library))
        print(f"  round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    report: dict[str, Any] = {"benchmark": "syscalls", "machine": machine(), "connections": count, "configs": {}}
    report["library"] = args.library
    print(f"recv-family calls per connection, {count} connections per configuration, one at a time")
    print(
        f"{'config':<10} {'bytes':>6} {'calls':>6} {'data':>6} {'EAGAIN':>7} {'EOF':>5} {'peeks':>6} {'header calls':>13}"
    )
    plain = runs["plain"]
    for name in names:
        entry: dict[str, Any] = {"header_and_request_bytes": sum(len(segment) for segment in data[name])}
        for key in ("calls", "data", "eagain", "eof", "peeks"):
            entry[key] = summarize([run[key] for run in runs[name]])
        entry["header_calls"] = summarize(
            [run["calls"] - base["calls"] for run, base in zip(runs[name], plain, strict=True)]
        )
        entry["header_data_calls"] = summarize(
            [run["data"] - base["data"] for run, base in zip(runs[name], plain, strict=True)]
        )
        entry["replies"] = sum(run["replies"] for run in runs[name])
        report["configs"][name] = entry
        header = "-" if name == "plain" else f"{entry['header_calls']['median']:.2f}"
        print(
            f"{name:<10} {entry['header_and_request_bytes']:>6} {entry['calls']['median']:>6.2f} "
            f"{entry['data']['median']:>6.2f} {entry['eagain']['median']:>7.2f} {entry['eof']['median']:>5.2f} "
            f"{entry['peeks']['median']:>6.2f} {header:>13}"
        )
    print("\nheader calls = calls of the configuration - calls of plain (the handler's own recv).")
    print("goal: header calls <= 2 for a header in one segment (v1, v2, v2-tlv, v2-large)")
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
