"""Benchmark: CPU instructions per connection, counted (not timed), ProxyStreamServer against plain gevent.

What is measured
----------------
The servers of ``bench/connections.py`` (``bench/_server.py``, the same
handler: one ``recv``, a 38-byte reply, close), each run under valgrind's
callgrind, which counts every instruction the process executes in user space.
Connections come one at a time (header and request in one ``send``), so each
does the same work. Every configuration runs twice, serving ``N1`` and then
``N2`` connections after the same warm-up; ``(total(N2) - total(N1)) / (N2 -
N1)`` is what one connection costs, start-up and warm-up cancelled out.

Why: ``bench/connections.py`` times the same thing, but on a shared 2-core
machine two runs of the same code differ by 5-10%, more than a change to the
connection path moves it. A count does not move with the machine's load
(``PYTHONHASHSEED`` is fixed; repeated runs agree within ~0.1%), so a change of
one Python call per connection shows. What it does not see: the kernel's time
(the system calls, about half of a minimal connection's CPU), and cache misses
(code that runs cold costs more per instruction). The ratio here is therefore
the user-space share of the story; ``bench/connections.py`` tells the rest,
and has the last word: fewer instructions are not always less time. Compiling
``_socket`` and ``_server`` with Cython cut ~4,400 instructions per connection
here, and made connections slower there (0.82-0.84 of plain against 0.85-0.88
interpreted, two runs of 41 rounds), probably because the interpreter's
specialised bytecode does some of the same work in fewer cycles than the
generic calls of compiled code, and those modules add ~400 KB of cold code.

Configurations: ``plain`` (gevent's ``StreamServer``), ``v1`` and ``v2``
(``ProxyStreamServer``, the headers of ``bench/connections.py``), and with
``--variant [NAME=]DIR`` the same two from a copy of the package (a proposed
change). ``--floor`` adds ``floor-v1``, the peek and exact read without any
of the library's Python.

Reproduce (from the repository root; needs valgrind)::

    python bench/instructions.py                 # N1 = 500, N2 = 2500
    python bench/instructions.py --quick         # N1 = 100, N2 = 500
    python bench/instructions.py --variant new=/tmp/patched --json /tmp/instructions.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import Any

from _common import Server, machine, parse_variant, run_load, write_json
from connections import payloads

#: Connections served (and not counted) before either count, in both runs.
WARMUP = 200


def total_instructions(callgrind_output: str) -> int:
    """The ``totals:`` (or ``summary:``) line of a callgrind output file."""
    with open(callgrind_output) as lines:
        for line in lines:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {callgrind_output}")


def count(
    kind: str, handler: str, payload: bytes, connections: int, library: str | None, workdir: str, tag: str
) -> int:
    """Instructions of a server process that served WARMUP + ``connections`` connections, start to exit."""
    output = os.path.join(workdir, f"{tag}.{connections}.callgrind")
    prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={output}", "--quiet"]
    extra = ["--library", library] if library else []
    server = Server(kind, handler, prefix=prefix, extra=extra)
    try:
        for served in (WARMUP, connections):
            load = run_load(server.address, payload, served, 1, time_limit=1200)
            if load["errors"] or len(load["latencies"]) != served:
                raise RuntimeError(f"{tag}: {load['errors']} errors, {len(load['latencies'])} of {served} served")
    finally:
        server.close()
    return total_instructions(output)


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    options.add_argument("--quick", action="store_true", help="N1 = 100, N2 = 500: a smoke run")
    options.add_argument("--n1", type=int, help="connections of the first run (default 500)")
    options.add_argument("--n2", type=int, help="connections of the second run (default 2500)")
    options.add_argument("--floor", action="store_true", help="add floor-v1 (peek + exact read, no library Python)")
    options.add_argument(
        "--variant", metavar="[NAME=]DIR", action="append", default=[],
        help="also count gevent_proxyproto imported from DIR (repeatable)",
    )  # fmt: skip
    options.add_argument("--json", metavar="FILE", help="write the numbers to FILE")
    args = options.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    n1 = args.n1 or (100 if args.quick else 500)
    n2 = args.n2 or (500 if args.quick else 2500)
    os.environ["PYTHONHASHSEED"] = "0"  # the servers' dict layouts, the same every run

    data = payloads()
    # name -> (server kind, handler, library directory or None, payload)
    configs: dict[str, tuple[str, str, str | None, bytes]] = {
        "plain": ("plain", "reply", None, data["plain"]),
        "v1": ("proxy", "reply", None, data["v1"]),
        "v2": ("proxy", "reply", None, data["v2"]),
    }
    if args.floor:
        configs["floor-v1"] = ("plain", "floor", None, data["v1"])
    for variant in args.variant:
        name, directory = parse_variant(variant)
        for version in ("v1", "v2"):
            configs[f"{version}@{name}"] = ("proxy", "reply", directory, data[version])

    per_connection: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="instructions-") as workdir:
        for name, (kind, handler, library, payload) in configs.items():
            first = count(kind, handler, payload, n1, library, workdir, name)
            second = count(kind, handler, payload, n2, library, workdir, name)
            per_connection[name] = (second - first) / (n2 - n1)
            print(f"  {name}: {per_connection[name]:,.0f} instructions per connection", file=sys.stderr, flush=True)

    plain = per_connection["plain"]
    print(f"user-space instructions per connection (callgrind), {n2} - {n1} connections, one at a time")
    print(f"{'config':<16} {'instructions':>12} {'over plain':>11} {'plain / config':>15}")
    for name, instructions in per_connection.items():
        print(f"{name:<16} {instructions:>12,.0f} {instructions - plain:>+11,.0f} {plain / instructions:>15.3f}")
    report: dict[str, Any] = {
        "benchmark": "instructions",
        "machine": machine(),
        "n1": n1,
        "n2": n2,
        "warmup": WARMUP,
        "instructions_per_connection": per_connection,
        "plain_over_config": {name: plain / value for name, value in per_connection.items()},
    }
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
