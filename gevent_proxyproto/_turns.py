"""Turns for header reads: a burst of slow clients cannot hold the event loop.

libev runs every watcher that became ready in one poll before it polls
again. When 500 trickling clients each send a byte in the same instant, their
500 header reads (tens of microseconds each) run back to back, and a good
client that became ready meanwhile (its connection to accept, its request to
read) waits for all of them, every time the burst comes
(``bench/slow_clients.py``, issue 16).

So a wait *in the middle of a header* (:func:`wait_readable`) ends with a
turn: at most :data:`READS_PER_ITERATION` such reads resume in one loop
iteration. The watcher's callback decides, in the hub: a read past the budget,
or woken while others are parked, is not resumed but parked (its watcher
stopped, so it does not fire again), which costs a callback, not a switch, a
read and a parse. A timer resumes the parked reads, oldest first, a budget per
iteration, after that iteration's io callbacks: whatever became ready in
between runs first. A connection's first
bytes never wait for a turn (the caller waits for those itself): a good
client's header arrives in one segment, and is read at once.

A parked read keeps its deadline and can still be killed (eviction at
``max_pending``, a server's stop); either leaves a stale entry that the timer
skips.
"""

import collections
import weakref
from typing import Any

from gevent import getcurrent
from gevent.exceptions import ConcurrentObjectUseError, InvalidSwitchError

from ._errors import HeaderTimeout

#: Reads resumed in the middle of a header per event-loop iteration: a few
#: hundred microseconds of them at most before the loop polls again.
READS_PER_ITERATION = 8

_RESUMED = object()


class _Turns:
    """One event loop's budget of mid-header reads, and the reads parked past it."""

    __slots__ = ("_parked", "_timer", "_new_iteration", "_used", "__weakref__")

    def __init__(self, loop: Any) -> None:
        self._parked: collections.deque[_Wait] = collections.deque()
        # The lowest priority: in its iteration, it runs after the io watchers
        # that the poll made ready (libev runs higher priorities first).
        self._timer = loop.timer(0.0, priority=loop.MINPRI)
        # Runs once the loop has polled again (libev: before the io watchers
        # the poll made ready, at the highest priority; libuv: after them):
        # the turns are counted per iteration. Not by the loop's time, which
        # starting a gevent Timeout updates; not a prepare watcher, which
        # gevent's libuv loop does not have.
        self._new_iteration = loop.check(ref=False, priority=loop.MAXPRI)
        self._used = 0

    def take(self) -> bool:
        """One turn in this loop iteration, if any is left."""
        if self._used >= READS_PER_ITERATION:
            return False
        if not self._used:
            self._new_iteration.start(self._reset)
        self._used += 1
        return True

    def _reset(self) -> None:
        self._used = 0
        self._new_iteration.stop()

    def admit(self, wait: "_Wait") -> bool:
        """Whether a read just woken may run now; if not, it is parked, behind those parked before it.

        Not before them: fresh wake-ups every iteration would otherwise take
        every turn, and a read parked earlier would wait for its deadline.
        """
        if not self._parked and self.take():
            return True
        self._parked.append(wait)
        if not self._timer.active:
            self._timer.start(self._resume_parked)
        return False

    def _resume_parked(self) -> None:
        """The timer: resume parked reads, oldest first, while this iteration has turns."""
        parked = self._parked
        while parked:
            waiting = parked[0].greenlet  # None: it timed out or was killed while parked
            if waiting is not None and not self.take():
                break
            parked.popleft()
            if waiting is not None:
                waiting.switch(_RESUMED)
        if parked:
            self._timer.start(self._resume_parked)


class _Wait:
    """One greenlet waiting, mid-header, for its socket; its callbacks run in the hub."""

    __slots__ = ("greenlet", "watcher", "turns")

    def __init__(self, greenlet: Any, watcher: Any, turns: _Turns) -> None:
        self.greenlet: Any = greenlet
        self.watcher = watcher
        self.turns = turns

    def ready(self) -> None:
        """The io watcher's callback: resume the read if it has its turn, else park it."""
        if self.turns.admit(self):
            self.greenlet.switch(_RESUMED)
        else:
            self.watcher.stop()  # parked: the socket stays readable, the watcher must not fire again

    def expire(self) -> None:
        """The deadline timer's callback."""
        self.greenlet.throw(HeaderTimeout)

    def throw(self, *args: Any) -> None:
        # gevent's hub.cancel_wait (the socket closed by another greenlet)
        # throws into the watcher callback's __self__: this object.
        if self.greenlet is not None:
            self.greenlet.throw(*args)


_turns_by_hub: "weakref.WeakKeyDictionary[Any, _Turns]" = weakref.WeakKeyDictionary()


def wait_readable(sock: Any, timeout: float) -> None:
    """Wait until ``sock``, a gevent socket in the middle of a header, is readable and has its turn.

    Raises:
        HeaderTimeout: after ``timeout`` seconds.
    """
    hub = sock.hub
    turns = _turns_by_hub.get(hub)
    if turns is None:
        turns = _turns_by_hub[hub] = _Turns(hub.loop)
    watcher = sock._read_event
    if watcher.callback is not None:
        raise ConcurrentObjectUseError(f"This socket is already used by another greenlet: {watcher.callback!r}")
    wait = _Wait(getcurrent(), watcher, turns)
    # A bare loop timer: a gevent Timeout costs more, and updates the loop's time.
    deadline = hub.loop.timer(timeout)
    watcher.start(wait.ready)
    deadline.start(wait.expire)
    try:
        result = hub.switch()
        if result is not _RESUMED:
            raise InvalidSwitchError(f"Invalid switch into {getcurrent()!r}: got {result!r} while reading a header")
    finally:
        watcher.stop()
        deadline.close()
        wait.greenlet = None  # a parked entry left behind is skipped
