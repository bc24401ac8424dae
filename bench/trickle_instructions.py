"""Benchmark: CPU instructions per trickled header byte, counted (not timed), against plain gevent.

What is measured
----------------
One process under valgrind's callgrind (user-space instructions). ``--connections``
socket pairs; on each, a greenlet waits in the middle of a header (the first 6
bytes sent), half v1 and half v2. Then every client sends its next byte in one
loop (a synchronised burst, as in ``bench/burst.py``), the loop runs until the
burst is read, and this repeats. Every configuration runs twice, with
``--bursts`` and with 2 bursts; ``(total(B) - total(2)) / ((B - 2) x
connections)`` is what one trickled byte costs, start-up cancelled out. The
figure includes the client's ``send`` and a check that every byte was read
(the same for every configuration).

Configurations: ``ours`` (``read_header()``, the turns included), ``ours-no-turns``
(the same with ``READS_PER_ITERATION`` unbounded: what the turns cost), and
``plain`` (a gevent ``recv`` loop under one ``gevent.Timeout``: a wait and a
``recv`` per byte, no parse), the floor of a gevent server that reads a slow
client. With ``--variant [NAME=]DIR``, ``ours`` from a copy of the package.

Reproduce (from the repository root; needs valgrind)::

    python bench/trickle_instructions.py
    python bench/trickle_instructions.py --quick
    python bench/trickle_instructions.py --variant base=/tmp/before --json /tmp/trickle.json
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
from typing import Any

from _common import machine, parse_variant, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def child(kind: str, library: str, connections: int, bursts: int, pause: float) -> None:
    """The measured process: ``bursts`` synchronised bursts of one byte per connection."""
    import gevent
    import gevent.socket

    import gevent_proxyproto as gpp
    import gevent_proxyproto._turns

    if os.path.dirname(os.path.dirname(gpp.__file__)) != os.path.abspath(library):
        raise SystemExit(f"measuring {gpp.__file__}, not the package in {library}")

    if kind == "ours-no-turns":
        gevent_proxyproto._turns.READS_PER_ITERATION = 1 << 30
    v1 = gpp.build_v1(("203.0.113.7", 4242), ("192.0.2.1", 443))
    v2 = gpp.build_v2(source=("203.0.113.7", 4242), destination=("192.0.2.1", 443))
    pairs = [gevent.socket.socketpair() for _ in range(connections)]
    headers = [v1 if index % 2 else v2 for index in range(connections)]

    def plain(sock: Any) -> None:
        with gevent.Timeout(600):
            while sock.recv(64):
                pass

    def ours(sock: Any) -> None:
        gpp.read_header(sock, time.monotonic() + 600)

    def unread(sock: Any) -> int:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]

    for (_, client), header in zip(pairs, headers, strict=True):
        client.send(header[:6])
    readers = [gevent.spawn(plain if kind == "plain" else ours, server) for server, _ in pairs]
    gevent.sleep(pause)
    for offset in range(6, 6 + bursts):
        for (_, client), header in zip(pairs, headers, strict=True):
            client._sock.send(header[offset : offset + 1])
        gevent.sleep(pause)
        if any(unread(server) for server, _ in pairs):
            raise SystemExit(f"a burst was not read within {pause} s: raise --pause")
    if any(reader.dead for reader in readers):
        raise SystemExit("a reader ended before its header did")
    gevent.killall(readers)


def count(kind: str, library: str, connections: int, bursts: int, pause: float, workdir: str) -> int:
    # Imported here: instructions imports connections, which imports gevent_proxyproto,
    # and the child must import it from its --library, not from this checkout.
    from instructions import total_instructions

    output = os.path.join(workdir, f"{kind}.{bursts}.callgrind")
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={output}", "--quiet",
        sys.executable, __file__, "--child", kind, "--library", library,
        "--connections", str(connections), "--bursts", str(bursts), "--pause", str(pause),
    ]  # fmt: skip
    subprocess.run(command, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    return total_instructions(output)


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    options.add_argument("--quick", action="store_true", help="50 connections, 5 bursts: a smoke run")
    options.add_argument("--connections", type=int, help="trickling connections (default 200)")
    options.add_argument("--bursts", type=int, help="bursts counted against 2 (default 12, at most 20)")
    options.add_argument("--pause", type=float, default=0.3, help="seconds for a burst to be read (default 0.3)")
    options.add_argument(
        "--variant", metavar="[NAME=]DIR", action="append", default=[], help="also count DIR's package"
    )
    options.add_argument("--json", metavar="FILE", help="write the numbers to FILE")
    options.add_argument("--child", help=argparse.SUPPRESS)
    options.add_argument("--library", help=argparse.SUPPRESS)
    args = options.parse_args(argv)
    args.connections = args.connections or (50 if args.quick else 200)
    # Counted against 2 bursts: 3 at least. A v2 header is 28 bytes, 6 sent first: at most 20 more.
    args.bursts = max(3, min(args.bursts or (5 if args.quick else 12), 20))
    if args.child:
        sys.path.insert(0, args.library)
        child(args.child, args.library, args.connections, args.bursts, args.pause)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    configs = {"plain": ("plain", REPO), "ours": ("ours", REPO), "ours-no-turns": ("ours-no-turns", REPO)}
    for variant in args.variant:
        name, directory = parse_variant(variant)
        configs[f"ours@{name}"] = ("ours", directory)
    per_byte: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="trickle-") as workdir:
        for name, (kind, library) in configs.items():
            few = count(kind, library, args.connections, 2, args.pause, workdir)
            many = count(kind, library, args.connections, args.bursts, args.pause, workdir)
            per_byte[name] = (many - few) / ((args.bursts - 2) * args.connections)
            print(f"  {name}: {per_byte[name]:,.0f} instructions per trickled byte", file=sys.stderr, flush=True)
    plain = per_byte["plain"]
    print(
        f"user-space instructions per trickled byte (callgrind), {args.connections} connections, bursts {args.bursts} - 2"
    )
    print(f"{'config':<20} {'instructions':>12} {'/ plain':>8}")
    for name, instructions in per_byte.items():
        print(f"{name:<20} {instructions:>12,.0f} {instructions / plain:>8.2f}")
    write_json(
        args.json,
        {
            "benchmark": "trickle_instructions",
            "machine": machine(),
            "connections": args.connections,
            "bursts": args.bursts,
            "instructions_per_trickled_byte": per_byte,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
