"""Robustness: what hostile headers and silent connections cost (issue 12, items 1 and 6).

What is measured
----------------
Three parts, each against a server child process of this script (``--child``),
driven over stdin (``stats``: its CPU time and refusals; ``quit``). Rounds
interleave a baseline and the hostile case, and every figure is also given as
a per-round ratio to its baseline (median [IQR] (min-max)).

* ``tcp``: a ``ProxyStreamServer`` (default policy: ``max_header_size`` 16384).
  One connection at a time, timed from connect to the server's close (or
  reply): a good v2 header + request (the baseline) against the worst header
  that fits the size cap, ``crc256``: 16,384 bytes, an INET block, a NOOP TLV
  as padding and 256 CRC32C TLVs (refused at the second CRC32C, before any
  checksum is computed). Also the server's CPU per connection, and a good
  client's round trip while an attacker process keeps ``--attackers`` (20)
  such headers in flight, against the same with HTTP requests in flight
  (refused at their first byte): a closed-loop flood of any bad connection
  saturates the server, the question is how much worse this header is.
* ``udp``: a ``ProxyDatagramServer`` (echo). The server's CPU per datagram for
  a good datagram, the ``crc256`` header as a datagram, and a 60,000-byte
  datagram (refused from its preamble: over ``max_header_size``).
* ``silent``: a listening ``ProxySocket`` (``max_pending`` 1024 by default,
  ``header_timeout`` 60 s) whose accept loop serves each connection in a
  greenlet. The attack opens ``--silent`` (5,000) connections that send
  nothing and stay open; then good clients, one at a time, are timed from
  connect to reply. The baseline is the same good clients with no silent
  connection. Also reported: how many silent connections the server evicted.

Reproduce (from the repository root)::

    python bench/hostile.py                       # 7 rounds of every part
    python bench/hostile.py --quick               # 3 rounds, fewer connections
    python bench/hostile.py --parts silent --max-pending 5000
    python bench/hostile.py --json /tmp/hostile.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

from _common import LINGER_RESET, REQUEST, fmt, machine, raise_fd_limit, ratio_summary, summarize, write_json

import gevent_proxyproto as gpp

REPLY = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
GOOD = gpp.build_v2(source=("203.0.113.7", 4242), destination=("192.0.2.1", 443))
MAX_HEADER_SIZE = 16384


def crc256_header(size: int = MAX_HEADER_SIZE) -> bytes:
    """``size`` bytes: INET block, a NOOP as padding, then 256 CRC32C TLVs (values zero)."""
    crcs = (b"\x03\x00\x04" + bytes(4)) * 256
    block = bytes(12)
    padding = size - 16 - len(block) - len(crcs) - 3
    body = block + b"\x04" + padding.to_bytes(2, "big") + bytes(padding) + crcs
    header = gpp.build_v2(source=("203.0.113.7", 4242), destination=("192.0.2.1", 443))[:14]
    data = header + len(body).to_bytes(2, "big") + body
    assert len(data) == size
    return data


CRC256 = crc256_header()
#: A datagram over max_header_size: its preamble declares 59,984 bytes after it.
OVERSIZE = GOOD[:13] + b"\x12" + (60000 - 16).to_bytes(2, "big") + bytes(60000 - 16)


# --------------------------------------------------------------------------- the server child


def child(kind: str, max_pending: int) -> int:
    import gevent
    import gevent.os
    import gevent.socket

    raise_fd_limit()
    server: Any = None
    state: dict[str, Any] = {}
    if kind == "tcp":

        def handle(sock: Any, address: Any) -> None:
            sock.recv(4096)
            sock.sendall(REPLY)

        server = gpp.ProxyStreamServer(("127.0.0.1", 0), handle, backlog=4096)
        server.start()
        port = server.address[1]
        state["failures"] = lambda: server.failures
    elif kind == "udp":

        def echo(data: bytes, address: Any) -> None:
            server.sendto(data, address)

        server = gpp.ProxyDatagramServer(("127.0.0.1", 0), echo)
        server.start()
        port = server.address[1]
        state["failures"] = lambda: server.failures
    else:
        listener = gpp.ProxySocket(socket.AF_INET, socket.SOCK_STREAM, max_pending=max_pending, header_timeout=60)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8192)
        port = listener.getsockname()[1]

        def serve(conn: Any) -> None:
            with conn:
                conn.recv(4096)
                conn.sendall(REPLY)

        def accept_forever() -> None:
            while True:
                conn, _ = listener.accept()
                gevent.spawn(serve, conn)

        gevent.spawn(accept_forever)
        state["failures"] = lambda: listener.failures
        state["pending"] = lambda: len(listener._acceptor.waiting) if listener._acceptor else 0
    sys.stdout.write(json.dumps({"port": port}) + "\n")
    sys.stdout.flush()
    fd = sys.stdin.fileno()
    gevent.os.make_nonblocking(fd)
    buffered = b""
    while True:
        while b"\n" not in buffered:
            chunk = gevent.os.nb_read(fd, 4096)
            if not chunk:
                return 0
            buffered += chunk
        line, buffered = buffered.split(b"\n", 1)
        if line.strip() == b"quit":
            return 0
        failures = {str(reason): count for reason, count in state["failures"]().items()}
        pending = state["pending"]() if "pending" in state else None
        sys.stdout.write(json.dumps({"cpu": time.process_time(), "failures": failures, "pending": pending}) + "\n")
        sys.stdout.flush()


class Child:
    """A server child process of this script."""

    def __init__(self, kind: str, max_pending: int = 1024) -> None:
        command = [sys.executable, __file__, "--child", kind, "--max-pending", str(max_pending)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        self.address = ("127.0.0.1", json.loads(self.process.stdout.readline())["port"])

    def stats(self) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(b"stats\n")
        self.process.stdin.flush()
        result: dict[str, Any] = json.loads(self.process.stdout.readline())
        return result

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"quit\n")
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --------------------------------------------------------------------------- clients (no gevent)


def connection(address: tuple[str, int], data: bytes) -> float:
    """Seconds from connect to the server's reply-and-close or refusal."""
    started = time.perf_counter()
    with socket.create_connection(address) as sock:
        sock.sendall(data)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
    return time.perf_counter() - started


#: What an attacker sends: the crc256 header, or an HTTP request (refused at its first byte: the cheapest refusal).
ATTACKS = {"crc256": CRC256, "http": REQUEST}


def tcp_attacker(address: tuple[str, int], data: bytes, in_flight: int, seconds: float) -> int:
    """Keep ``in_flight`` connections sending ``data`` open for ``seconds``; as each is refused, open the next."""
    import selectors

    selector = selectors.DefaultSelector()
    ends = time.monotonic() + seconds
    opened = 0

    def open_one() -> None:
        nonlocal opened
        sock = socket.create_connection(address)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.sendall(data)
        selector.register(sock, selectors.EVENT_READ)
        opened += 1

    for _ in range(in_flight):
        open_one()
    print("ready", flush=True)  # the parent measures from here
    while time.monotonic() < ends:
        for key, _ in selector.select(timeout=0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                reply = sock.recv(65536)
            except ConnectionResetError:
                reply = b""
            if not reply:  # refused: open the next one
                selector.unregister(sock)
                sock.close()
                open_one()
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    return opened


def good_latencies(address: tuple[str, int], count: int) -> list[float]:
    return [connection(address, GOOD + REQUEST) for _ in range(count)]


# --------------------------------------------------------------------------- the parts


def part_tcp(rounds: int, count: int, attackers: int) -> dict[str, Any]:
    server = Child("tcp")
    per_round: dict[str, list[float]] = {name: [] for name in ("good_ms", "crc256_ms", "good_cpu_us", "crc256_cpu_us",
                                                                "good_alone_ms", "good_under_crc256_ms",
                                                                "good_under_http_ms")}  # fmt: skip
    try:
        for round_index in range(rounds):
            for name in ("good", "crc256") if round_index % 2 == 0 else ("crc256", "good"):
                data = GOOD + REQUEST if name == "good" else CRC256
                before = server.stats()["cpu"]
                times = [connection(server.address, data) for _ in range(count)]
                per_round[f"{name}_cpu_us"].append((server.stats()["cpu"] - before) / count * 1e6)
                per_round[f"{name}_ms"].append(sorted(times)[len(times) // 2] * 1e3)
            # A good client's round trip, alone and with `attackers` bad connections in flight: crc256
            # headers, or HTTP requests (the cheapest refusal: any closed-loop flood saturates the server).
            alone = good_latencies(server.address, count)
            per_round["good_alone_ms"].append(sorted(alone)[len(alone) // 2] * 1e3)
            for attack in ("crc256", "http") if round_index % 2 == 0 else ("http", "crc256"):
                attacker = subprocess.Popen([sys.executable, __file__, "--attack-tcp", str(server.address[1]),
                                             "--attack", attack, "--attackers", str(attackers), "--seconds", "30"],
                                            stdout=subprocess.PIPE)  # fmt: skip
                try:
                    assert attacker.stdout is not None and attacker.stdout.readline() == b"ready\n"
                    attacked = good_latencies(server.address, count)
                finally:
                    attacker.terminate()
                    attacker.wait()
                per_round[f"good_under_{attack}_ms"].append(sorted(attacked)[len(attacked) // 2] * 1e3)
        failures = server.stats()["failures"]
    finally:
        server.close()
    return {
        "per_round": per_round,
        "failures": failures,
        "crc256_ms": summarize(per_round["crc256_ms"]),
        "good_ms": summarize(per_round["good_ms"]),
        "crc256_over_good_time": ratio_summary(per_round["crc256_ms"], per_round["good_ms"]),
        "crc256_cpu_us": summarize(per_round["crc256_cpu_us"]),
        "good_cpu_us": summarize(per_round["good_cpu_us"]),
        "crc256_over_good_cpu": ratio_summary(per_round["crc256_cpu_us"], per_round["good_cpu_us"]),
        "good_alone_ms": summarize(per_round["good_alone_ms"]),
        "good_under_crc256_ms": summarize(per_round["good_under_crc256_ms"]),
        "good_under_http_ms": summarize(per_round["good_under_http_ms"]),
        "crc256_attack_over_alone": ratio_summary(per_round["good_under_crc256_ms"], per_round["good_alone_ms"]),
        "crc256_attack_over_http_attack": ratio_summary(
            per_round["good_under_crc256_ms"], per_round["good_under_http_ms"]
        ),
    }


def udp_burst(client: socket.socket, server: Child, datagram: bytes, marker: bytes, count: int) -> float:
    """Server CPU seconds for ``count`` datagrams, in batches of 8 each closed by an echoed ``marker``.

    The marker's echo says its batch was read: the receive buffer never overflows.
    """
    before = server.stats()["cpu"]
    echoes = 0
    for sent in range(count):
        client.sendto(datagram, server.address)
        echoes += datagram is marker
        if sent % 8 == 7 or sent == count - 1:
            client.sendto(marker, server.address)
            for _ in range(echoes + 1):
                client.recvfrom(65536)
            echoes = 0
    return float(server.stats()["cpu"] - before)


def part_udp(rounds: int, count: int) -> dict[str, Any]:
    server = Child("udp")
    good = GOOD[:13] + b"\x12" + GOOD[14:] + b"ping"  # transport DGRAM
    bad = {"crc256": CRC256[:13] + b"\x12" + CRC256[14:], "oversize": OVERSIZE}
    batches = (count + 7) // 8
    per_round: dict[str, list[float]] = {"good": [], "crc256": [], "oversize": []}
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            for round_index in range(rounds):
                totals = {}
                for name in ("good", *bad) if round_index % 2 == 0 else (*bad, "good"):
                    totals[name] = udp_burst(client, server, good if name == "good" else bad[name], good, count)
                good_us = totals["good"] / (count + batches) * 1e6
                per_round["good"].append(good_us)
                for name in bad:  # less the markers' share
                    per_round[name].append((totals[name] * 1e6 - batches * good_us) / count)
        failures = server.stats()["failures"]
    finally:
        server.close()
    return {
        "per_round_cpu_us": per_round,
        "failures": failures,
        **{f"{name}_cpu_us": summarize(values) for name, values in per_round.items()},
        "crc256_over_good_cpu": ratio_summary(per_round["crc256"], per_round["good"]),
        "oversize_over_good_cpu": ratio_summary(per_round["oversize"], per_round["good"]),
    }


def part_silent(rounds: int, silent: int, good: int, max_pending: int) -> dict[str, Any]:
    raise_fd_limit()
    server = Child("silent", max_pending)
    alone_ms: list[float] = []
    attacked_ms: list[float] = []
    worst_ms: list[float] = []
    evicted: list[int] = []
    try:
        for round_index in range(rounds):
            for phase in ("alone", "attack") if round_index % 2 == 0 else ("attack", "alone"):
                if phase == "alone":
                    alone_ms.append(sorted(good_latencies(server.address, good))[good // 2] * 1e3)
                    continue
                before = server.stats()["failures"].get("TIMEOUT", 0)
                clients = []
                for _ in range(silent):
                    sock = socket.create_connection(server.address)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                    clients.append(sock)
                times = good_latencies(server.address, good)
                if max(times) > 1.0:  # the goal: never held back for more than about a second
                    print(f"  a good client waited {max(times):.1f} s: {server.stats()}", flush=True)
                evicted.append(server.stats()["failures"].get("TIMEOUT", 0) - before)
                for sock in clients:
                    sock.close()
                attacked_ms.append(sorted(times)[good // 2] * 1e3)
                worst_ms.append(max(times) * 1e3)
    finally:
        server.close()
    return {
        "silent": silent,
        "max_pending": max_pending,
        "good_alone_ms": summarize(alone_ms),
        "good_with_silent_ms": summarize(attacked_ms),
        "good_with_silent_worst_ms": summarize(worst_ms),
        "ratio": ratio_summary(attacked_ms, alone_ms),
        "evicted_per_round": evicted,
    }


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    options.add_argument("--parts", default="tcp,udp,silent")
    options.add_argument("--rounds", type=int, default=7)
    options.add_argument("--count", type=int, default=200, help="connections or datagrams per measurement")
    options.add_argument("--attackers", type=int, default=20)
    options.add_argument("--silent", type=int, default=5000)
    options.add_argument("--good", type=int, default=50, help="good clients per silent-attack phase")
    options.add_argument("--max-pending", type=int, default=1024)
    options.add_argument("--quick", action="store_true")
    options.add_argument("--json")
    options.add_argument("--child", choices=("tcp", "udp", "silent"), help=argparse.SUPPRESS)
    options.add_argument("--attack-tcp", type=int, metavar="PORT", help=argparse.SUPPRESS)
    options.add_argument("--attack", choices=sorted(ATTACKS), default="crc256", help=argparse.SUPPRESS)
    options.add_argument("--seconds", type=float, default=30, help=argparse.SUPPRESS)
    args = options.parse_args()
    if args.child:
        return child(args.child, args.max_pending)
    if args.attack_tcp:
        tcp_attacker(("127.0.0.1", args.attack_tcp), ATTACKS[args.attack], args.attackers, args.seconds)
        return 0
    if args.quick:
        args.rounds, args.count, args.silent, args.good = 3, 50, 1500, 20
    parts = args.parts.split(",")
    report: dict[str, Any] = {"machine": machine(), "options": vars(args)}
    print(f"parse() of the crc256 header in this process: {parse_cost_us():.1f} us (refused: "
          f"{refusal_reason()})")  # fmt: skip
    if "tcp" in parts:
        tcp = report["tcp"] = part_tcp(args.rounds, args.count, args.attackers)
        print(f"tcp  crc256 connection ms {fmt(tcp['crc256_ms'])}, good {fmt(tcp['good_ms'])}, "
              f"ratio {fmt(tcp['crc256_over_good_time'])}")  # fmt: skip
        print(f"tcp  server CPU us/conn crc256 {fmt(tcp['crc256_cpu_us'], digits=1)}, good "
              f"{fmt(tcp['good_cpu_us'], digits=1)}, ratio {fmt(tcp['crc256_over_good_cpu'])}")  # fmt: skip
        print(
            f"tcp  good RTT ms alone {fmt(tcp['good_alone_ms'])}; with {args.attackers} in flight: crc256 "
            f"{fmt(tcp['good_under_crc256_ms'])} (x{fmt(tcp['crc256_attack_over_alone'])} alone), http "
            f"{fmt(tcp['good_under_http_ms'])}; crc256/http {fmt(tcp['crc256_attack_over_http_attack'])}; "
            f"{tcp['failures']}"
        )
    if "udp" in parts:
        udp = report["udp"] = part_udp(args.rounds, args.count)
        print(
            f"udp  server CPU us/datagram good {fmt(udp['good_cpu_us'], digits=1)}, crc256 "
            f"{fmt(udp['crc256_cpu_us'], digits=1)} (x{fmt(udp['crc256_over_good_cpu'])}), oversize 60 KB "
            f"{fmt(udp['oversize_cpu_us'], digits=1)} (x{fmt(udp['oversize_over_good_cpu'])}); {udp['failures']}"
        )
    if "silent" in parts:
        silent = report["silent"] = part_silent(args.rounds, args.silent, args.good, args.max_pending)
        print(f"silent {args.silent} silent, max_pending {args.max_pending}: good ms "
              f"{fmt(silent['good_with_silent_ms'])} (worst {fmt(silent['good_with_silent_worst_ms'])}), alone "
              f"{fmt(silent['good_alone_ms'])}, ratio {fmt(silent['ratio'])}; evicted per round "
              f"{silent['evicted_per_round']}")  # fmt: skip
    write_json(args.json, report)
    return 0


def parse_cost_us() -> float:
    import timeit

    def attempt() -> None:
        try:
            gpp.parse(CRC256, max_header_size=MAX_HEADER_SIZE)
        except gpp.InvalidHeader:
            pass

    loops = 200
    return min(timeit.repeat(attempt, number=loops, repeat=7)) / loops * 1e6


def refusal_reason() -> str:
    try:
        gpp.parse(CRC256)
    except gpp.InvalidHeader as error:
        return str(error)
    return "accepted"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
