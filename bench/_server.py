"""The server process the connection benchmarks start: a plain or a PROXY gevent StreamServer.

Not a benchmark on its own: ``bench/_common.py`` starts it as a child process
(``python bench/_server.py --kind proxy --handler reply``), reads one JSON line
from its stdout (``{"port": ..., "pid": ...}``), then drives it over stdin, one
command a line, one JSON line back per command:

* ``stats``: CPU time, RSS, open fds, connections handled, refusals by reason
  and the objects the cyclic garbage collector found so far;
* ``census``: ``stats`` plus live greenlets and gc-tracked objects (walks the
  heap: only between measurements);
* ``collect``: ``gc.collect()``, then ``census``;
* ``quit``: stop serving and exit 0.

Both kinds run the very same handler function; the PROXY server only reads the
header first. Handlers:

* ``reply``: one ``recv``, one reply, close (the connection benchmark);
* ``line``: read up to the first LF, reply, close (connections waiting in the
  middle of a request line: the memory baseline);
* ``floor`` (plain server only): peek, consume the header exactly without
  validating it, then ``reply``: the system calls of a PROXY server without
  its Python, a reference for what exact reads cost by themselves;
* ``floor-parse``, ``floor-read-header`` (plain server only): the floor plus
  ``parse()``, and ``read_header()`` alone: the library's pieces, one at a time;
* ``preamble`` (plain server only): read 28 bytes within ``--header-timeout``,
  then ``reply``: plain gevent against slow clients, for ``bench/slow_clients.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import socket
import sys
import time
from typing import Any

import gevent
import gevent.event
import gevent.os
import gevent.socket
from gevent.server import StreamServer

REPLY = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
_MSG_PEEK = socket.MSG_PEEK

handled = 0
gc_collected = 0
gc_collections = 0


#: Seconds of CPU the ``reply`` handler burns per request (``--work-us``): an application's own work.
work = 0.0


def reply(sock: Any, address: Any) -> None:
    global handled
    handled += 1
    try:
        if sock.recv(1024):
            if work:
                until = time.perf_counter() + work
                while time.perf_counter() < until:
                    pass
            sock.sendall(REPLY)
    except OSError:  # the client reset: not worth gevent's traceback
        pass


def line(sock: Any, address: Any) -> None:
    global handled
    handled += 1
    received = b""
    try:
        while b"\n" not in received:
            chunk = sock.recv(1024)
            if not chunk:
                return
            received += chunk
        sock.sendall(REPLY)
    except OSError:
        pass


def floor(sock: Any, address: Any) -> None:
    """The least any exact PROXY reader does, then ``reply``: no validation, happy path only.

    One peek, one exact read of the header (v1: up to the CRLF; v2: 16 + len),
    on a plain gevent socket: the system calls of a PROXY server without its
    Python. The gap between this and plain gevent is what reading exactly
    costs in the kernel; the gap between this and ProxyStreamServer is the
    library's own work.
    """
    data = sock.recv(512, _MSG_PEEK)
    if not data:
        return
    sock.recv(data.index(b"\r\n") + 2 if data[:1] == b"P" else 16 + (data[14] << 8 | data[15]))
    reply(sock, address)


#: The ``preamble`` handler's deadline (``--header-timeout``).
header_timeout = 5.0


def preamble(sock: Any, address: Any) -> None:
    """Plain gevent reading a fixed 28-byte preamble (a v2 TCP4 header's size) by the deadline, then ``reply``.

    What a server without the library does with trickling clients: a wait and
    a ``recv`` per byte, every one of them as soon as it arrives, no validation.
    ``bench/slow_clients.py --server plain`` compares it.
    """
    received = b""
    with gevent.Timeout(header_timeout, False):
        while len(received) < 28:
            chunk = sock.recv(28 - len(received))
            if not chunk:
                return
            received += chunk
        reply(sock, address)


#: gevent_proxyproto.parse and read_header, bound once the library's path is set (main).
library: dict[str, Any] = {}


def floor_parse(sock: Any, address: Any) -> None:
    """``floor`` plus ``parse()`` of the peeked bytes: what the parser adds, in place."""
    data = sock.recv(512, _MSG_PEEK)
    if not data:
        return
    sock.recv(library["parse"](data)[1])
    reply(sock, address)


def floor_read_header(sock: Any, address: Any) -> None:
    """``read_header()`` on the plain gevent socket, then ``reply``: the reader without ProxySocket or server."""
    library["read_header"](sock, time.monotonic() + 5)
    reply(sock, address)


HANDLERS = {
    "reply": reply,
    "line": line,
    "floor": floor,
    "floor-parse": floor_parse,
    "floor-read-header": floor_read_header,
    "preamble": preamble,
}


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    global gc_collected, gc_collections
    if phase == "stop":
        gc_collected += info["collected"]
        gc_collections += 1


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for entry in status:
            if entry.startswith("VmRSS:"):
                return int(entry.split()[1])
    return -1


def stats(server: Any, census: bool = False) -> dict[str, Any]:
    report: dict[str, Any] = {
        "cpu_ns": time.process_time_ns(),
        "wall_ns": time.monotonic_ns(),
        "rss_kib": _rss_kib(),
        "fds": len(os.listdir("/proc/self/fd")),
        "handled": handled,
        "failures": {str(reason): count for reason, count in getattr(server, "failures", {}).items()},
        "gc_collected": gc_collected,
        "gc_collections": gc_collections,
    }
    if census:
        import greenlet

        objects = gc.get_objects()
        report["greenlets"] = sum(1 for obj in objects if isinstance(obj, greenlet.greenlet) and not obj.dead)
        report["gc_objects"] = len(objects)
        del objects
    if "tracemalloc" in sys.modules:
        import tracemalloc

        if tracemalloc.is_tracing():
            report["traced_bytes"] = tracemalloc.get_traced_memory()[0]
    return report


def control(server: Any, done: gevent.event.Event) -> None:
    fd = sys.stdin.fileno()
    gevent.os.make_nonblocking(fd)
    buffered = b""
    while True:
        while b"\n" not in buffered:
            chunk = gevent.os.nb_read(fd, 4096)
            if not chunk:
                done.set()
                return
            buffered += chunk
        command, buffered = buffered.split(b"\n", 1)
        name = command.decode().strip()
        if name == "quit":
            done.set()
            return
        if name == "collect":
            gc.collect()
        report = stats(server, census=name in ("census", "collect"))
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    options.add_argument("--kind", choices=("plain", "proxy"), required=True)
    options.add_argument("--handler", choices=sorted(HANDLERS), default="reply")
    options.add_argument("--header-timeout", type=float, default=5.0)
    options.add_argument("--backlog", type=int, default=1024)
    options.add_argument("--tracemalloc", action="store_true", help="trace Python allocations (slow)")
    options.add_argument("--log-level", default="WARNING")
    options.add_argument("--work-us", type=float, default=0.0, help="CPU microseconds the reply handler burns")
    options.add_argument("--library", metavar="DIR", help="import gevent_proxyproto from DIR (a variant under test)")
    args = options.parse_args()

    # The bench measures the checkout it sits in, like bench/parse.py, or a variant.
    sys.path.insert(0, args.library or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()
    gc.callbacks.append(_on_gc)

    global work, header_timeout
    work = args.work_us / 1e6
    header_timeout = args.header_timeout
    handler = HANDLERS[args.handler]
    listener = ("127.0.0.1", 0)
    server: StreamServer
    if args.kind == "plain":
        server = StreamServer(listener, handler, backlog=args.backlog)
    else:
        from gevent_proxyproto import ProxyStreamServer

        server = ProxyStreamServer(listener, handler, backlog=args.backlog, header_timeout=args.header_timeout)
    server.start()
    import gevent_proxyproto

    library.update(parse=gevent_proxyproto.parse, read_header=gevent_proxyproto.read_header)
    hello = {"port": server.address[1], "pid": os.getpid(), "library": os.path.dirname(gevent_proxyproto.__file__)}
    sys.stdout.write(json.dumps(hello) + "\n")
    sys.stdout.flush()
    done = gevent.event.Event()
    gevent.spawn(control, server, done)
    done.wait()
    server.stop(timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
