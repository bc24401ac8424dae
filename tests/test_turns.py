"""Turns for mid-header reads (``_turns.py``): a burst of slow clients is read in slices.

Each test puts many connections in the middle of their header (the first
bytes read, the rest not sent), then sends the rest to all of them at once, so
that one poll makes them all ready, and counts how many headers each
event-loop iteration finished. A check watcher, which the loop runs once per
iteration after it polls, closes each iteration's count.
"""

import socket
import time
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.socket
import pytest

from gevent_proxyproto import ConnectionClosed, HeaderTimeout, _turns, read_header

from .support import V1_TCP4, wait_until

CONNECTIONS = 100


class IterationCounter:
    """Headers finished per event-loop iteration."""

    def __init__(self) -> None:
        self.per_iteration: list[int] = []
        self.current = 0
        loop = gevent.get_hub().loop
        self._check = loop.check(ref=False, priority=loop.MAXPRI)
        self._check.start(self._next_iteration)

    def _next_iteration(self) -> None:
        if self.current:
            self.per_iteration.append(self.current)
        self.current = 0

    def finished(self) -> None:
        self.current += 1

    def close(self) -> None:
        self._check.close()  # not only stop(): libuv frees an unclosed watcher it still links
        self._next_iteration()


@pytest.fixture
def mid_header() -> Iterator[tuple[list[Any], list[Any]]]:
    """CONNECTIONS socket pairs, each server side with the first 6 bytes of a v1 header read (mid-header)."""
    pairs = [gevent.socket.socketpair() for _ in range(CONNECTIONS)]
    yield [server for server, _ in pairs], [client for _, client in pairs]
    for server, client in pairs:
        server.close()
        client.close()


def start_readers(servers: list[Any], counter: IterationCounter, timeout: float = 10) -> list[Any]:
    def read(sock: Any) -> Any:
        header = read_header(sock, time.monotonic() + timeout)
        counter.finished()
        return header

    return [gevent.spawn(read, sock) for sock in servers]


def waiting_mid_header(servers: list[Any]) -> bool:
    """Every reader has consumed the first bytes (nothing left in the kernel): it waits mid-header."""
    for sock in servers:
        try:
            sock._sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        return False
    return True


def send_the_rest_at_once(clients: list[Any]) -> None:
    """The rest of every header, sent without yielding: one poll finds them all ready."""
    for client in clients:
        client.send(V1_TCP4[6:])


def parked_readers() -> list[Any]:
    turns = _turns._turns_by_hub.get(gevent.get_hub())
    return [] if turns is None else [entry.greenlet for entry in turns._parked if entry.greenlet is not None]


def test_a_burst_of_mid_header_reads_runs_a_budget_per_iteration(mid_header: Any) -> None:
    servers, clients = mid_header
    counter = IterationCounter()
    for client in clients:
        client.send(V1_TCP4[:6])  # "PROXY ": read, then the readers wait mid-header
    readers = start_readers(servers, counter)
    wait_until(lambda: waiting_mid_header(servers))
    send_the_rest_at_once(clients)
    gevent.joinall(readers, timeout=10, raise_error=True)
    counter.close()
    assert all(reader.value.source == ("203.0.113.7", 4242) for reader in readers)
    # Without turns one iteration would finish all CONNECTIONS headers.
    assert max(counter.per_iteration) == _turns.READS_PER_ITERATION
    assert len(counter.per_iteration) >= CONNECTIONS // _turns.READS_PER_ITERATION


def test_a_reader_killed_while_parked_is_skipped(mid_header: Any, monkeypatch: Any) -> None:
    servers, clients = mid_header
    monkeypatch.setattr(_turns, "READS_PER_ITERATION", 0)  # no turn: every woken read parks
    counter = IterationCounter()
    for client in clients:
        client.send(V1_TCP4[:6])
    readers = start_readers(servers, counter)
    wait_until(lambda: waiting_mid_header(servers))
    send_the_rest_at_once(clients)
    wait_until(lambda: len(parked_readers()) == CONNECTIONS)
    killed = parked_readers()[::10]
    gevent.killall(killed)
    monkeypatch.setattr(_turns, "READS_PER_ITERATION", 1)
    gevent.joinall(readers, timeout=10)
    counter.close()
    assert all(reader.successful() for reader in readers if reader not in killed)
    assert max(counter.per_iteration) == 1
    assert sum(counter.per_iteration) == CONNECTIONS - len(killed)


def test_a_parked_reader_still_times_out_at_its_deadline(mid_header: Any, monkeypatch: Any) -> None:
    servers, clients = mid_header
    monkeypatch.setattr(_turns, "READS_PER_ITERATION", 0)  # no turn ever: every woken read parks
    counter = IterationCounter()
    for client in clients[:5]:
        client.send(V1_TCP4[:6])
    readers = start_readers(servers[:5], counter, timeout=0.2)
    wait_until(lambda: waiting_mid_header(servers[:5]))
    send_the_rest_at_once(clients[:5])
    gevent.joinall(readers, timeout=5)
    counter.close()
    assert all(isinstance(reader.exception, HeaderTimeout) for reader in readers)
    wait_until(lambda: not _turns._turns_by_hub[gevent.get_hub()]._parked)  # the stale entries are dropped


def test_a_socket_closed_while_its_reader_is_parked_ends_the_read(mid_header: Any, monkeypatch: Any) -> None:
    servers, clients = mid_header
    monkeypatch.setattr(_turns, "READS_PER_ITERATION", 0)
    counter = IterationCounter()
    clients[0].send(V1_TCP4[:6])
    reader = start_readers(servers[:1], counter)[0]
    wait_until(lambda: waiting_mid_header(servers[:1]))
    send_the_rest_at_once(clients[:1])
    wait_until(lambda: parked_readers() == [reader])
    servers[0].close()  # by another greenlet, as a server's stop does
    monkeypatch.setattr(_turns, "READS_PER_ITERATION", 1)
    reader.join(timeout=5)
    counter.close()
    assert isinstance(reader.exception, ConnectionClosed)


def test_a_socket_closed_while_its_reader_waits_mid_header_ends_the_read(mid_header: Any) -> None:
    """gevent's cancel_wait throws into the watcher callback's owner: the read ends, as with gevent's own wait."""
    servers, clients = mid_header
    counter = IterationCounter()
    clients[0].send(V1_TCP4[:6])
    reader = start_readers(servers[:1], counter)[0]
    # Consumed: the reader ran on into its wait in the same turn (no switch in between).
    wait_until(lambda: waiting_mid_header(servers[:1]))
    assert servers[0]._read_event.callback is not None
    servers[0].close()
    reader.join(timeout=5)
    counter.close()
    assert isinstance(reader.exception, ConnectionClosed)


def test_reads_parked_first_resume_first(mid_header: Any, monkeypatch: Any) -> None:
    """Fresh wake-ups queue behind parked reads: they cannot take every turn and starve them."""
    servers, clients = mid_header
    monkeypatch.setattr(_turns, "READS_PER_ITERATION", 0)
    counter = IterationCounter()
    for client in clients[:10]:
        client.send(V1_TCP4[:6])
    finished: list[int] = []

    def read(index: int) -> None:
        read_header(servers[index], time.monotonic() + 10)
        counter.finished()
        finished.append(index)

    readers = [gevent.spawn(read, index) for index in range(10)]
    wait_until(lambda: waiting_mid_header(servers[:10]))
    send_the_rest_at_once(clients[:5])
    wait_until(lambda: len(parked_readers()) == 5)  # 0-4 parked
    send_the_rest_at_once(clients[5:10])  # 5-9 wake up fresh, with turns to take
    monkeypatch.setattr(_turns, "READS_PER_ITERATION", 1)
    gevent.joinall(readers, timeout=10, raise_error=True)
    counter.close()
    assert sorted(finished[:5]) == [0, 1, 2, 3, 4]
    assert max(counter.per_iteration) == 1
