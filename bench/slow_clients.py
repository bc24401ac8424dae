"""Robustness: slow and silent clients against ProxyStreamServer, and the good clients' latency meanwhile.

What is measured
----------------
One PROXY server process (``bench/_server.py``, handler ``reply``) with
``header_timeout`` T (5 s; 3 s with ``--quick``). Each round has two phases,
interleaved (baseline, attack, baseline, attack, ...):

* ``baseline``: good clients only, for ``--duration`` seconds: an open loop
  (one new connection every 1/``--rate`` s, whatever the server's pace), each
  sending a v2 header and a request and timing connect-to-reply;
* ``attack``: an attacker process first opens ``--trickle`` connections that
  send a header one byte every 200 ms (half v1, half v2: 8.8 s and 5.6 s for
  the whole header, both longer than T) and ``--silent`` connections that send
  nothing; once the server holds them all (it has accepted every one: its
  open file descriptors say so), the same good-client load runs for the same
  duration: the attack sustained, not the burst of its 1,000 connects (whose
  accepts and the garbage collections their objects set off would land in
  the first milliseconds of the load; ``ramp`` reports how long the server
  took to hold them). By default every trickling connection sends its byte at the
  same moment (the worst case: one burst of 500 reads every 200 ms);
  ``--groups N`` spreads them over the 200 ms in N groups, as unsynchronised
  clients would. The attacker watches every bad connection (epoll) and
  records when the server closed it.

The server runs on one CPU and the clients (this script's load and the
attacker) on the others, as clients on other machines would: on a machine
with 2 CPUs, sharing them, the attacker's 500 sends in one instant (with the
receive work loopback does in the sender) and the load process take the
CPUs the server needs, and the p99 measures the scheduler more than the
server (BENCHMARKS.md). ``--shared-cpus`` leaves placement to the scheduler.

Reported: the good clients' p50/p99 per phase and, per round, the ratio
attack/baseline (goal: p99 within 2x); for the bad connections, how long the
server took to close them, as a multiple of T (goal: closed at T: none
earlier, none much later), and the server's TIMEOUT count.

Reproduce (from the repository root)::

    python bench/slow_clients.py                # 7 rounds, 500 + 500 bad connections, T = 5 s
    python bench/slow_clients.py --quick        # 3 rounds, 200 + 200, T = 3 s
    python bench/slow_clients.py --json /tmp/slow_clients.json
    python bench/slow_clients.py --shared-cpus  # server and clients on any CPU
    python bench/slow_clients.py --server plain # the reference: plain gevent, no turns
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import time
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

TRICKLE_INTERVAL = 0.2
V1 = gpp.build_v1(("203.0.113.7", 4242), ("192.0.2.1", 443))
V2 = gpp.build_v2(source=("203.0.113.7", 4242), destination=("192.0.2.1", 443))


def attacker(port: int, trickle: int, silent: int, header_timeout: float, groups: int) -> int:
    """The bad clients (run as a child process): connect, report "ready", trickle, watch the closes.

    The trickling connections form ``groups`` groups that send in turn, evenly
    spread over each 200 ms; one group (the default) sends all its bytes at
    once, the worst case for the good clients.
    """
    raise_fd_limit()
    address = ("127.0.0.1", port)
    poller = select.epoll()
    bad: dict[int, dict[str, Any]] = {}
    for index in range(trickle + silent):
        sock = socket.create_connection(address, timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        header = (V1 if index % 2 else V2) if index < trickle else b""
        bad[sock.fileno()] = {
            "sock": sock, "header": header, "sent": 0, "opened": time.monotonic(), "closed": None,
            "group": index % groups,
        }  # fmt: skip
        poller.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
    print("ready", flush=True)
    next_tick = time.monotonic()
    tick = 0
    give_up = time.monotonic() + header_timeout * 2 + 5
    open_count = len(bad)
    while open_count and time.monotonic() < give_up:
        now = time.monotonic()
        if now >= next_tick:
            group = tick % groups
            tick += 1
            for entry in bad.values():
                if entry["group"] == group and entry["closed"] is None and entry["sent"] < len(entry["header"]):
                    try:
                        entry["sock"].send(entry["header"][entry["sent"] : entry["sent"] + 1])
                        entry["sent"] += 1
                    except OSError:
                        pass  # closed by the server: epoll reports it
            next_tick += TRICKLE_INTERVAL / groups
        for fd, _ in poller.poll(max(0.0, min(next_tick, give_up) - time.monotonic())):
            entry = bad[fd]
            if entry["closed"] is not None:
                continue
            try:
                data = entry["sock"].recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                continue  # a reply: this one was served (it should not be)
            entry["closed"] = time.monotonic()
            poller.unregister(fd)
            open_count -= 1
    closes = []
    for entry in bad.values():
        closes.append(None if entry["closed"] is None else entry["closed"] - entry["opened"])
        entry["sock"].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        entry["sock"].close()
    print(json.dumps({"closes": closes, "trickle": trickle, "silent": silent}), flush=True)
    return 0


def good_phase(server: Server, rate: float, duration: float) -> dict[str, Any]:
    before = server.stats()
    load = run_load(server.address, V2 + REQUEST, int(rate * duration), 64, time_limit=duration + 30, rate=rate)
    after = server.stats()
    latencies = load["latencies"]
    return {
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "max_ms": max(latencies) * 1e3 if latencies else float("nan"),
        "served": len(latencies),
        "errors": load["errors"],
        "server_utilization": (after["cpu_ns"] - before["cpu_ns"]) / 1e9 / load["elapsed"],
    }


def wait_until_held(server: Server, fds: int, time_limit: float = 30.0) -> float:
    """Poll the server until it has ``fds`` open file descriptors; returns the seconds that took."""
    started = time.monotonic()
    while server.stats()["fds"] < fds:
        if time.monotonic() - started > time_limit:
            raise RuntimeError(f"the server did not accept the bad connections within {time_limit} s")
        time.sleep(0.005)
    return time.monotonic() - started


def attack_phase(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    before = server.stats()
    timeouts_before = before["failures"].get("TIMEOUT", 0)
    command = [
        sys.executable, __file__, "--attacker", str(server.port), "--trickle", str(args.trickle),
        "--silent", str(args.silent), "--header-timeout", str(args.header_timeout), "--groups", str(args.groups),
    ]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    try:
        ready = child.stdout.readline().strip()
        if ready != "ready":
            raise RuntimeError(f"attacker failed: {ready!r}")
        # Sustained: the good load starts once the server holds every bad
        # connection. The attacker is "ready" once the kernel has completed its
        # connections; the server may still be accepting them, and the garbage
        # collections their new objects set off are the burst's, not the trickle's.
        ramp = wait_until_held(server, before["fds"] + args.trickle + args.silent)
        good = good_phase(server, args.rate, args.duration)
        closes = json.loads(child.stdout.readline())["closes"]
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    timeouts = server.stats()["failures"].get("TIMEOUT", 0) - timeouts_before
    closed = [seconds for seconds in closes if seconds is not None]
    multiples = [seconds / args.header_timeout for seconds in closed]
    return {
        **good,
        "ramp_s": ramp,
        "bad": len(closes),
        "bad_never_closed": len(closes) - len(closed),
        "bad_closed_early": sum(1 for multiple in multiples if multiple < 0.98),
        "close_at_T_median": summarize(multiples)["median"] if multiples else float("nan"),
        "close_at_T_min": min(multiples, default=float("nan")),
        "close_at_T_max": max(multiples, default=float("nan")),
        "server_timeouts": timeouts,
    }


def pin_cpus(server: Server) -> dict[str, list[int]] | None:
    """The server on the first CPU this script may use, this script (and the attacker it starts) on the rest.

    None where there is one CPU, or no ``sched_setaffinity`` (not Linux): nothing is pinned.
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    os.sched_setaffinity(server.pid, cpus[:1])
    os.sched_setaffinity(0, cpus[1:])
    return {"server": cpus[:1], "clients": cpus[1:]}


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    options.add_argument("--quick", action="store_true", help="3 rounds, 200 + 200 bad connections, T = 3 s")
    options.add_argument("--rounds", type=int, help="rounds (default 7, --quick 3)")
    options.add_argument("--trickle", type=int, help="trickling connections (default 500)")
    options.add_argument("--silent", type=int, help="silent connections (default 500)")
    options.add_argument("--header-timeout", type=float, help="the server's header_timeout (default 5, --quick 3)")
    options.add_argument("--rate", type=float, default=300.0, help="good connections per second (default 300)")
    options.add_argument("--duration", type=float, help="seconds of good load per phase (default T - 1.5)")
    options.add_argument(
        "--groups", type=int, default=1,
        help="trickle in N groups spread over each 200 ms (default 1: every byte at once, the worst case)",
    )  # fmt: skip
    options.add_argument(
        "--server", choices=("proxy", "plain"), default="proxy",
        help="ProxyStreamServer (default), or plain gevent reading a 28-byte preamble by the deadline (a reference)",
    )  # fmt: skip
    options.add_argument(
        "--shared-cpus", action="store_true",
        help="let the scheduler place the server and the clients (default: the server on one CPU, the clients on the rest)",
    )  # fmt: skip
    options.add_argument("--json", metavar="FILE", help="write every round's numbers to FILE")
    options.add_argument("--attacker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = options.parse_args(argv)
    args.trickle = args.trickle if args.trickle is not None else (200 if args.quick else 500)
    args.silent = args.silent if args.silent is not None else (200 if args.quick else 500)
    args.header_timeout = args.header_timeout or (3.0 if args.quick else 5.0)
    if args.attacker:
        return attacker(args.attacker, args.trickle, args.silent, args.header_timeout, max(1, args.groups))
    args.duration = args.duration or max(0.5, args.header_timeout - 1.5)  # all within the attack
    rounds = args.rounds or (3 if args.quick else 7)
    raise_fd_limit()

    phases: dict[str, list[dict[str, Any]]] = {"baseline": [], "attack": []}
    kind, handler = ("proxy", "reply") if args.server == "proxy" else ("plain", "preamble")
    extra = ["--backlog", "4096", "--header-timeout", str(args.header_timeout)]
    with Server(kind, handler, extra=extra) as server:
        cpus = None if args.shared_cpus else pin_cpus(server)
        good_phase(server, args.rate, 0.5)  # warm-up
        for round_index in range(rounds):
            order = ("baseline", "attack") if round_index % 2 == 0 else ("attack", "baseline")
            for phase in order:
                if phase == "baseline":
                    phases[phase].append(good_phase(server, args.rate, args.duration))
                else:
                    phases[phase].append(attack_phase(server, args))
            print(f"  round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
        final = server.census()

    report: dict[str, Any] = {
        "benchmark": "slow_clients",
        "machine": machine(),
        "rounds": rounds,
        "header_timeout": args.header_timeout,
        "trickle": args.trickle,
        "silent": args.silent,
        "rate": args.rate,
        "duration": args.duration,
        "groups": args.groups,
        "server": args.server,
        "cpus": cpus or "shared",
        "phases": {},
        "server_failures": final["failures"],
    }
    print(
        f"{args.server} server, {rounds} rounds; good clients {args.rate:.0f}/s for {args.duration:.1f} s per phase; attack: "
        f"{args.trickle} trickling (1 byte / {TRICKLE_INTERVAL * 1e3:.0f} ms, in {args.groups} group(s)) + "
        f"{args.silent} silent, T = {args.header_timeout:.1f} s; "
        + (f"server on CPU {cpus['server']}, clients on {cpus['clients']}" if cpus else "CPUs shared")
    )
    print(f"{'phase':<9} {'p50 ms':>26} {'p99 ms':>26} {'max ms':>26} {'served':>7} {'errors':>7}")
    for phase, runs in phases.items():
        entry = {metric: summarize([run[metric] for run in runs]) for metric in ("p50_ms", "p99_ms", "max_ms")}
        entry["served"] = sum(run["served"] for run in runs)
        entry["errors"] = sum(run["errors"] for run in runs)
        entry["server_utilization"] = summarize([run["server_utilization"] for run in runs])
        report["phases"][phase] = entry
        print(
            f"{phase:<9} {fmt(entry['p50_ms']):>26} {fmt(entry['p99_ms']):>26} {fmt(entry['max_ms']):>26} "
            f"{entry['served']:>7} {entry['errors']:>7}"
        )
    attack, baseline = phases["attack"], phases["baseline"]
    p99_ratio = ratio_summary([run["p99_ms"] for run in attack], [run["p99_ms"] for run in baseline])
    p50_ratio = ratio_summary([run["p50_ms"] for run in attack], [run["p50_ms"] for run in baseline])
    report["p99_ratio"], report["p50_ratio"] = p99_ratio, p50_ratio
    # What the trickle costs the server: its extra CPU during the attack per byte trickled.
    trickled_per_s = args.trickle / TRICKLE_INTERVAL
    cost = [
        (run["server_utilization"] - base["server_utilization"]) / trickled_per_s * 1e6
        for run, base in zip(attack, baseline, strict=True)
    ]
    report["server_cpu_us_per_trickled_byte"] = summarize(cost)
    print(f"\nattack/baseline, per round: p50 {fmt(p50_ratio)}   p99 {fmt(p99_ratio)}   (goal: p99 <= 2)")
    print(
        f"server CPU: baseline {fmt(report['phases']['baseline']['server_utilization'])}, attack "
        f"{fmt(report['phases']['attack']['server_utilization'])} of a core; "
        f"{fmt(report['server_cpu_us_per_trickled_byte'], digits=1)} us per trickled byte"
    )
    bad = {
        "connections": sum(run["bad"] for run in attack),
        "never_closed": sum(run["bad_never_closed"] for run in attack),
        "closed_early": sum(run["bad_closed_early"] for run in attack),
        "server_timeouts": sum(run["server_timeouts"] for run in attack),
        "close_at_T_median": summarize([run["close_at_T_median"] for run in attack]),
        "close_at_T_min": min(run["close_at_T_min"] for run in attack),
        "close_at_T_max": max(run["close_at_T_max"] for run in attack),
    }
    report["bad"] = bad
    report["ramp_ms"] = summarize([run["ramp_s"] * 1e3 for run in attack])
    print(f"the server held every bad connection {fmt(report['ramp_ms'], digits=0)} ms after the attacker's connects")
    print(
        f"bad connections: {bad['connections']}, closed after {fmt(bad['close_at_T_median'])} x T per round "
        f"(all: {bad['close_at_T_min']:.2f}-{bad['close_at_T_max']:.2f} x T); closed before T: "
        f"{bad['closed_early']}; never closed: {bad['never_closed']}; server TIMEOUT count: {bad['server_timeouts']}"
    )
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
