"""Robustness: a server under bad and slow clients, and what they must not leak.

The quick versions of the scripts under ``bench/`` (``bad_connections.py``,
``slow_clients.py``): a few hundred bad connections instead of 10,000, tens of
slow clients instead of a thousand. The reader under any chunking is tested in
``test_socket.py``.
"""

import gc
import logging
import socket
import sys

import gevent
import gevent.event
import gevent.select
import gevent.socket
import pytest

import gevent_proxyproto as gpp

from .children import children
from .conftest import REPO
from .support import (
    V1_TCP4,
    V2_TCP4,
    V2_TCP6,
    connect,
    live_greenlets,
    open_fds,
    read_all,
    serving,
    still_open,
    wait_until,
)

RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() sends a reset


# The server under bad and slow clients ---------------------------------------------------------------

BAD_INPUTS: dict[str, tuple[bytes, str]] = {
    "http": (b"GET / HTTP/1.1\r\n\r\n", "close"),
    "v1-bad": (b"PROXY TCP4 203.0.113.7 192.0.2.1 04242 443\r\n", "close"),
    "v2-version": (bytes.fromhex("0d0a0d0a000d0a515549540a31110000"), "close"),
    "v2-crc": (bytes.fromhex("0d0a0d0a000d0a515549540a20000007030004deadbeef"), "close"),
    "reset-mid-header": (V1_TCP4[:20], "reset"),
    "fin-mid-header": (V2_TCP4[:20], "close"),
    "immediate-close": (b"", "close"),
    "immediate-reset": (b"", "reset"),
    "eof-first": (b"", "shutdown"),
}


def test_bad_connections_leave_no_fd_greenlet_cycle_or_traceback(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger="gevent_proxyproto")
    rounds = 30
    with serving(lambda sock, address: sock.sendall(b"ok\n"), header_timeout=1.0) as server:
        for data, _ in BAD_INPUTS.values():  # one of each first: lazy set-up happens before the baseline
            with connect(server, data or b"x"):
                pass
        wait_until(lambda: sum(server.failures.values()) == len(BAD_INPUTS))
        gc.collect()
        fds, greenlets = open_fds(), live_greenlets()
        gc.disable()  # every cycle a failure leaves stays until the collect below
        try:
            for _ in range(rounds):
                for data, ending in BAD_INPUTS.values():
                    client = connect(server, data)
                    if ending == "reset":
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                    elif ending == "shutdown":
                        client.shutdown(socket.SHUT_WR)
                        assert read_all(client) == b""
                    client.close()
            total = len(BAD_INPUTS) * (rounds + 1)
            wait_until(lambda: sum(server.failures.values()) == total)
            wait_until(lambda: open_fds() <= fds and live_greenlets() <= greenlets)
            cycles = gc.collect()
        finally:
            gc.enable()
        # SPEC.md section 8: a cycle per failure (an exception kept with its
        # traceback) turns a flood of bad connections into GC pauses.
        assert cycles < len(BAD_INPUTS) * rounds // 10, f"{cycles} objects in reference cycles"
        with connect(server, V2_TCP4) as client:  # and it still serves
            assert read_all(client) == b"ok\n"
    assert set(server.failures) <= {gpp.Reason.NOT_HDR, gpp.Reason.BAD_HDR, gpp.Reason.BAD_PROTO, gpp.Reason.CRC,
                                    gpp.Reason.EMPTY, gpp.Reason.ABORT}  # fmt: skip
    assert all(record.exc_info is None for record in caplog.records)
    assert "Traceback" not in caplog.text and "Traceback" not in capfd.readouterr().err


def test_close_in_the_middle_of_a_header_counts_as_abort() -> None:
    with serving(lambda sock, address: None) as server:
        with connect(server, V2_TCP4[:20]):
            pass  # 20 of 28 bytes, then FIN
        wait_until(lambda: sum(server.failures.values()) == 1)
        assert server.failures == {gpp.Reason.ABORT: 1}


def test_refusal_reports_close_their_timers_under_the_libuv_loop() -> None:
    """The report timer of held-back refusal lines is closed once it fired, not dropped.

    Under ``GEVENT_LOOP=libuv``, a watcher dropped unclosed is memory freed
    while the loop still links it: the process crashed later, elsewhere (at
    an SSLContext's lock, in the TLS tests). gevent's debug level reports
    each such watcher; the child counts them.
    """
    with children() as start:
        child = start(
            [sys.executable, str(REPO / "tests" / "libuv_refusals.py")],
            env={"GEVENT_LOOP": "libuv", "GEVENT_DEBUG": "debug"},
        )
        status = child.wait_exit(timeout=60)
        assert (status, child.output.splitlines()[-1:]) == (0, ["refused 40, unclosed watchers 0"]), child.output


def test_slow_and_silent_clients_are_closed_at_header_timeout_while_good_ones_are_served() -> None:
    timeout = 2.0
    pace = 0.1  # between two bytes of a trickler: no read waits long, yet a whole header takes over 4 s
    headers = [V1_TCP4 if index % 2 else V2_TCP6 for index in range(30)]
    sent = [0] * len(headers)  # bytes of its header each trickler sent before the server closed it
    answers: list[bytes] = [b"?"] * len(headers)  # what each trickler read at the end: b"" once closed
    silent: list[gevent.socket.socket] = []
    silent_open_when_a_trickler_closed: list[int] = []

    def trickle(index: int) -> None:
        header = headers[index]
        with connect(server) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                # A byte, then up to `pace` for the server to close the connection.
                while sent[index] < len(header) and not gevent.select.select([client], [], [], pace)[0]:
                    client.sendall(header[sent[index] : sent[index] + 1])
                    sent[index] += 1
            except OSError:
                pass  # reset by the server
            silent_open_when_a_trickler_closed.append(sum(still_open(client) for client in silent))
            answers[index] = read_all(client)

    with serving(lambda sock, address: sock.sendall(b"ok\n"), header_timeout=timeout) as server:
        tricklers = [gevent.spawn(trickle, index) for index in range(len(headers))]
        # The silent clients connect once every trickler has sent a few bytes: their deadlines
        # come later than every trickler's.
        wait_until(lambda: min(sent) >= 5)
        silent += [connect(server) for _ in range(30)]
        for _ in range(20):  # good clients meanwhile, one after the other
            with connect(server, V2_TCP4) as client:
                assert read_all(client) == b"ok\n"
        # Served while every slow client still waits for its header: nobody waited for them.
        assert not any(trickler.ready() for trickler in tricklers) and all(still_open(client) for client in silent)
        assert server.failures == {}
        gevent.joinall(tricklers, raise_error=True)
        assert [read_all(client) for client in silent] == [b""] * len(silent)  # closed by the server
        wait_until(lambda: sum(server.failures.values()) == 60)
        assert server.failures == {gpp.Reason.TIMEOUT: 60}
        for client in silent:
            client.close()
    # Each trickler was closed in the middle of its header, after several bytes that would each have
    # restarted a per-read timeout: the deadline is the whole header's, and trickling does not stretch it.
    assert answers == [b""] * len(headers)
    assert all(5 <= count < len(header) for count, header in zip(sent, headers, strict=True)), sent
    # And not earlier: the silent clients, whose deadlines come later, were all open at each of those closes.
    assert silent_open_when_a_trickler_closed == [len(silent)] * len(headers)
