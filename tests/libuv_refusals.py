"""A PROXY server refusing bad headers under libuv's loop, as a child process (tests/test_robustness.py).

Run with ``GEVENT_LOOP=libuv GEVENT_DEBUG=debug``. Each round refuses two
connections within the warning interval: the second is held back, and the
round waits for the report timer's line. A watcher dropped without ``close()``
is, under libuv, memory freed while the loop still links it: a crash later,
somewhere else. gevent's debug level reports each one as a ResourceWarning
("Failed to close watcher") when it is collected; this script counts them.
Prints ``refused N, unclosed watchers M``; exits 1 if M is not 0.
"""

import contextlib
import gc
import logging
import sys
import warnings

import gevent
import gevent.event
import gevent.socket

import gevent_proxyproto as gpp

ROUNDS = 20
#: Seconds between two WARNING lines: the second refusal of a round comes well within it.
WARNING_INTERVAL = 0.05


class _ReportSeen(logging.Handler):
    """Sets ``event`` at each "suppressed N more" line: the report timer has fired."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.event = gevent.event.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "suppressed" in record.getMessage():
            self.event.set()


def main() -> int:
    reports = _ReportSeen()
    library_log = logging.getLogger("gevent_proxyproto")
    library_log.addHandler(reports)
    library_log.propagate = False  # the refusals' lines: not what is tested
    if "libuv" not in type(gevent.get_hub().loop).__module__:
        print(f"not the libuv loop: {type(gevent.get_hub().loop)}", file=sys.stderr)
        return 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        server = gpp.ProxyStreamServer(("127.0.0.1", 0), lambda sock, address: None)
        server.warning_interval = WARNING_INTERVAL
        server.start()
        try:
            for _ in range(ROUNDS):
                reports.event.clear()
                for _ in range(2):  # one refusal warned, one held back: its report timer starts
                    with gevent.socket.create_connection(server.address) as client:
                        client.sendall(b"GET / HTTP/1.0\r\n\r\n")
                        with contextlib.suppress(ConnectionResetError):  # bytes left unread: a reset
                            client.recv(1)  # the server's close: the refusal is counted
                if not reports.event.wait(5):  # the report timer fires, reports, is let go
                    print("the held-back refusal was never reported", file=sys.stderr)
                    return 1
        finally:
            server.stop()
        gc.collect()
    unclosed = [str(w.message).splitlines()[0] for w in caught if str(w.message).startswith("Failed to close watcher")]
    for line in unclosed[:3]:
        print(line, file=sys.stderr)
    print(f"refused {server.failures[gpp.Reason.NOT_HDR]}, unclosed watchers {len(unclosed)}")
    return 1 if unclosed else 0


if __name__ == "__main__":
    sys.exit(main())
