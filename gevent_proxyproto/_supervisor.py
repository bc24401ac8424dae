"""Running ``gevent-proxyproto serve``: one process or supervised workers, reloaded on SIGHUP.

The shape is gunicorn's arbiter and nginx's master process:

- The process that starts holds every listening socket, bound once. Workers
  are forked from it and inherit them, so while one generation of workers
  replaces another the ports never stop listening: a client waits in the
  kernel's backlog, it is never refused.
- A worker that dies is replaced, with a log line; after a quick death the
  replacement waits, doubling from :data:`FIRST_RESTART_DELAY` up to
  :data:`MAX_RESTART_DELAY`, so a worker that dies at once every time cannot
  spin the machine.
- Every worker watches a pipe from the supervisor that nobody writes: its
  end of file means the supervisor died (even by SIGKILL), and the worker
  stops accepting and drains, so orphans never hold the ports.
- SIGHUP reloads: the configuration is read again and checked (handlers
  imported, certificates loaded, new ports bound) before anything changes;
  a mistake is logged and the old configuration keeps serving. Then a new
  generation starts, and once every new worker says it is ready the old
  ones get SIGTERM and drain for their ``grace_period``.
- Without workers, SIGHUP does the same in the process: a new
  :class:`Dispatcher` on the same sockets, the old one drains beside it.

Neither way reloads Python code: handlers come from modules already imported
(as gunicorn with ``preload_app``); a new handler version needs a restart.

The supervisor runs everything in one greenlet fed by a queue (signals, worker
exits, readiness), with hub callbacks as the only other sources: so no greenlet
of the supervisor's is ever copied into a forked worker.
"""

import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
import gevent.monkey
import gevent.os
import gevent.queue

from ._config import ConfigError, DispatcherConfig
from ._dispatch import Dispatcher, StartupError, _listen
from ._server import STOP_SIGNALS, serve_until_signal

log = logging.getLogger("gevent_proxyproto")

#: Seconds before replacing a worker that died soon after it started; doubled
#: for each further quick death in a row.
FIRST_RESTART_DELAY = 0.5
#: The longest wait before replacing a worker.
MAX_RESTART_DELAY = 30.0
#: A worker that ran this many seconds was healthy: its death is replaced at
#: once and the back-off starts again from the beginning.
HEALTHY_LIFETIME = 10.0

#: Reads the configuration again, for SIGHUP; raises ConfigError.
ConfigLoader = Callable[[], DispatcherConfig]

#: The stdlib's close: ``serve`` patches in gevent's, which closes a pipe only
#: on a later turn of the event loop; a worker must have dropped the
#: supervisor's end of the death pipe before anything else, or never sees EOF.
_close_now = gevent.monkey.get_original("os", "close")


def restart_delay(quick_deaths: int) -> float:
    """Seconds to wait before replacing a worker, after ``quick_deaths`` quick deaths in a row (0: at once)."""
    if quick_deaths <= 0:
        return 0.0
    return float(min(MAX_RESTART_DELAY, FIRST_RESTART_DELAY * 2 ** (quick_deaths - 1)))


class ListenerSet:
    """The listening sockets held by the process that started: bound once, shared by every generation."""

    def __init__(self) -> None:
        self._sockets: dict[tuple[str, int], socket.socket] = {}

    def bind(self, config: DispatcherConfig) -> dict[int, socket.socket]:
        """The sockets for ``config``'s ports, binding those not held yet (all or none of them).

        Raises:
            StartupError: naming the port that failed; the ones bound by this call are closed.
        """
        wanted = _addresses(config)
        bound: dict[tuple[str, int], socket.socket] = {}
        for address in sorted(wanted - set(self._sockets)):
            try:
                bound[address] = _listen(*address)
            except OSError as error:
                for listener in bound.values():
                    listener.close()
                raise StartupError(
                    f"cannot listen on {address[0]} port {address[1]}: {error.strerror or error}"
                ) from None
        self._sockets.update(bound)
        return {port: self._sockets[(host, port)] for host, port in wanted}

    def keep_only(self, configs: Iterable[DispatcherConfig]) -> None:
        """Close the sockets that none of ``configs`` uses (a removed port stops listening here)."""
        wanted = set().union(*(_addresses(config) for config in configs))
        for address in set(self._sockets) - wanted:
            self._sockets.pop(address).close()

    def close_all(self) -> None:
        for listener in self._sockets.values():
            listener.close()
        self._sockets.clear()


def _addresses(config: DispatcherConfig) -> set[tuple[str, int]]:
    return {(config.bind, port) for port in set(config.proxy_ports) | set(config.plain_ports)}


def _check(config: DispatcherConfig) -> None:
    """Everything a worker would find wrong at start-up, found here: handlers and certificates."""
    Dispatcher(config)  # imports the handlers and loads the certificates


# -- one process ---------------------------------------------------------------------------------


def serve_in_process(config: DispatcherConfig, load: ConfigLoader) -> int:
    """Serve ``config`` in this process until SIGTERM or SIGINT; SIGHUP reloads it from ``load``.

    A reload starts a new :class:`Dispatcher` on the same listening sockets
    (new ports bound, removed ones closed) and lets the old one drain for its
    ``grace_period``: no connection is refused or cut. A stop is
    :func:`~gevent_proxyproto._server.serve_until_signal`'s: a second
    SIGTERM or SIGINT closes the open connections at once.

    Raises:
        ConfigError, StartupError: the first start failed; nothing is left listening.
    """
    listeners = ListenerSet()
    try:
        current = _start_dispatcher(config, listeners)
        draining: list[tuple[Dispatcher, gevent.Greenlet]] = []
        stopped = gevent.event.Event()

        def say_ready() -> None:
            log.info("ready: process %d serving %d port(s)", os.getpid(), len(current.servers))

        def stop() -> None:
            listeners.close_all()  # the ports stop listening now, not after the drain
            current.stop()
            gevent.joinall([drain for _, drain in draining])
            stopped.set()

        def close_connections() -> int:
            return sum(dispatcher.close_connections() for dispatcher in (current, *(old for old, _ in draining)))

        def reload() -> None:
            nonlocal current
            try:
                replacement = _start_dispatcher(load(), listeners)
            except (ConfigError, StartupError) as error:
                listeners.keep_only([current.config])
                log.error("SIGHUP: the configuration was not reloaded, the old one keeps serving: %s", error)
                return
            log.info("SIGHUP: configuration reloaded; the old one's open connections have %.1f s",
                     current.config.grace_period)  # fmt: skip
            draining.append((current, gevent.spawn(current.stop)))
            current = replacement
            listeners.keep_only([current.config])
            say_ready()

        serve_until_signal(stop, close_connections, stopped, lambda: current.config.grace_period, say_ready, reload)
        return 0
    finally:
        listeners.close_all()


def _start_dispatcher(config: DispatcherConfig, listeners: ListenerSet) -> Dispatcher:
    # The dispatcher closes its sockets when it stops: it gets duplicates, and
    # the held ones keep the ports listening in between.
    own = {port: listener.dup() for port, listener in listeners.bind(config).items()}
    try:
        dispatcher = Dispatcher(config, own)
        dispatcher.start()
    except BaseException:
        for listener in own.values():
            listener.close()
        raise
    return dispatcher


# -- workers -------------------------------------------------------------------------------------


@dataclass
class _Worker:
    pid: int
    #: Which configuration it serves: the supervisor's count of reloads.
    generation: int
    started: float
    ready: bool = False
    #: Sent SIGTERM to drain: its exit is expected.
    retiring: bool = False


class Supervisor:
    """Run ``workers`` forked processes serving ``config``: replace the dead, reload on SIGHUP.

    Args:
        config: the checked configuration to start with.
        load: reads the configuration again, for SIGHUP.
        workers: how many processes serve at once.
    """

    def __init__(self, config: DispatcherConfig, load: ConfigLoader, workers: int) -> None:
        self.config = config
        self.load = load
        self.size = workers
        #: Reloads so far: the generation new workers belong to.
        self.generation = 0
        #: Live workers by pid, every generation.
        self.workers: dict[int, _Worker] = {}
        self.listeners = ListenerSet()
        self._events: gevent.queue.Queue[tuple[Any, ...]] = gevent.queue.Queue()
        self._restarts_due: list[float] = []  # monotonic times at which to fork a replacement
        self._quick_deaths = 0
        self._stopping = False
        self._failed_exits = 0
        self._ready_generation = -1  # the last generation that said "ready" as a whole
        self._parent_only: list[Any] = []  # signal handlers and watchers a worker must drop
        self._death_pipe = (-1, -1)
        self._ready_pipe = (-1, -1)
        self._ready_buffer = b""

    def run(self) -> int:
        """Bind, fork, supervise until SIGTERM or SIGINT; returns 0 if every worker then exited cleanly.

        Raises:
            ConfigError, StartupError: the first start failed; nothing is left listening.
        """
        _check(self.config)
        self.listeners.bind(self.config)
        # Nobody writes to the death pipe: only the supervisor holds its write
        # end, so a worker reads end of file exactly when the supervisor is gone.
        self._death_pipe = os.pipe()
        self._ready_pipe = os.pipe()
        gevent.os.make_nonblocking(self._ready_pipe[0])
        ready_watcher = gevent.get_hub().loop.io(self._ready_pipe[0], 1)
        ready_watcher.start(self._on_ready_pipe)
        handlers = [
            gevent.signal_handler(number, self._events.put, ("signal", number))
            for number in (*STOP_SIGNALS, signal.SIGHUP)
        ]
        self._parent_only = [ready_watcher, *handlers]
        try:
            for _ in range(self.size):
                self._spawn()
            return self._loop()
        finally:
            for item in self._parent_only:
                _cancel(item)
            for fd in (*self._death_pipe, *self._ready_pipe):
                os.close(fd)
            self.listeners.close_all()

    def _loop(self) -> int:
        while not (self._stopping and not self.workers):
            timeout = None
            if self._restarts_due and not self._stopping:
                timeout = max(0.0, min(self._restarts_due) - time.monotonic())
            try:
                event = self._events.get(timeout=timeout)
            except gevent.queue.Empty:
                now = time.monotonic()
                due = [when for when in self._restarts_due if when <= now]
                self._restarts_due = [when for when in self._restarts_due if when > now]
                for _ in due:
                    self._spawn()
                continue
            kind, value = event
            if kind == "exit":
                self._on_exit(value)
            elif kind == "ready":
                self._on_ready(value)
            elif value == signal.SIGHUP:
                self._reload()
            else:
                self._stop(value)
        return 1 if self._failed_exits else 0

    # -- forking and the worker's side

    def _spawn(self) -> None:
        config, generation = self.config, self.generation
        # gevent's fork: reinitialises gevent in the child, and in the parent
        # starts a child watcher whose callback runs in the hub.
        pid = gevent.os.fork_and_watch(callback=self._on_child_exit)
        if pid == 0:
            self._become_worker(config)  # never returns
        self.workers[pid] = _Worker(pid, generation, time.monotonic())
        log.info("worker %d started (configuration %d)", pid, generation)

    def _become_worker(self, config: DispatcherConfig) -> None:
        code = 1
        try:
            for item in self._parent_only:
                _cancel(item)
            # Reloading is the supervisor's: a SIGHUP to the whole process
            # group (a closed terminal) must not end the workers.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            _close_now(self._death_pipe[1])
            _close_now(self._ready_pipe[0])
            own = self.listeners.bind(config)  # all held already: binds nothing
            # A port the supervisor is removing must not stay open in a new worker.
            self.listeners.keep_only([config])
            _run_worker(Dispatcher(config, own), self._death_pipe[0], self._ready_pipe[1])
            code = 0
        except (ConfigError, StartupError) as error:
            log.error("worker %d: %s", os.getpid(), error)
            code = 2
        except Exception:
            log.exception("worker %d failed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)

    # -- events (the supervisor's greenlet)

    def _on_child_exit(self, watcher: Any) -> None:  # in the hub: must not block
        self._events.put_nowait(("exit", watcher.pid))

    def _on_ready_pipe(self) -> None:  # in the hub: must not block
        try:
            self._ready_buffer += os.read(self._ready_pipe[0], 4096)
        except BlockingIOError:
            return
        *lines, self._ready_buffer = self._ready_buffer.split(b"\n")
        for line in lines:
            self._events.put_nowait(("ready", int(line)))

    def _on_exit(self, pid: int) -> None:
        _, status = gevent.os.waitpid(pid, 0)  # already reaped by the watcher: returns at once
        code = os.waitstatus_to_exitcode(status)
        worker = self.workers.pop(pid, None)
        if worker is None:
            return
        how = _describe_exit(code)
        if self._stopping:
            if code != 0:
                self._failed_exits += 1
            log.info("worker %d %s", pid, how)
        elif worker.retiring or worker.generation < self.generation:
            log.info("worker %d (configuration %d) %s", pid, worker.generation, how)
        else:
            lived = time.monotonic() - worker.started
            self._quick_deaths = 0 if lived >= HEALTHY_LIFETIME else self._quick_deaths + 1
            delay = restart_delay(self._quick_deaths)
            log.warning("worker %d %s after %.1f s; starting a replacement %s", pid, how, lived,
                        f"in {delay:.1f} s" if delay else "now")  # fmt: skip
            self._restarts_due.append(time.monotonic() + delay)

    def _on_ready(self, pid: int) -> None:
        worker = self.workers.get(pid)
        if worker is None:
            return
        worker.ready = True
        log.info("worker %d ready", pid)
        current = [each for each in self.workers.values() if each.generation == self.generation]
        if (
            self._ready_generation == self.generation
            or len(current) < self.size
            or not all(each.ready for each in current)
        ):
            return
        self._ready_generation = self.generation
        old = [each for each in self.workers.values() if each.generation < self.generation and not each.retiring]
        for each in old:  # nginx's order: the new ones accept before the old ones stop
            each.retiring = True
            _terminate(each.pid)
        if old:
            log.info("old workers %s draining", ", ".join(str(each.pid) for each in old))
        self.listeners.keep_only([self.config])
        log.info("ready: %d workers serving %d port(s) (configuration %d; supervisor %d)", self.size,
                 len(_addresses(self.config)), self.generation, os.getpid())  # fmt: skip

    def _reload(self) -> None:
        try:
            config = self.load()
            _check(config)
            self.listeners.bind(config)
        except (ConfigError, StartupError) as error:
            self.listeners.keep_only([self.config])
            log.error("SIGHUP: the configuration was not reloaded, the old one keeps serving: %s", error)
            return
        self.config = config
        self.generation += 1
        self._restarts_due.clear()  # the new generation is started whole
        log.info("SIGHUP: configuration %d loaded; starting %d workers, the old ones drain once these are ready",
                 self.generation, self.size)  # fmt: skip
        for _ in range(self.size):
            self._spawn()

    def _stop(self, number: int) -> None:
        if self._stopping:
            # serve_until_signal's second signal, passed on: each worker closes its connections now.
            log.info("%s again: %d worker(s) close their open connections now", signal.Signals(number).name,
                     len(self.workers))  # fmt: skip
            for worker in self.workers.values():
                _terminate(worker.pid)
            return
        self._stopping = True
        self.listeners.close_all()  # the ports stop listening once the workers stop accepting
        log.info("%s: stopping %d worker(s); open connections have %.1f s", signal.Signals(number).name,
                 len(self.workers), self.config.grace_period)  # fmt: skip
        for worker in self.workers.values():
            if not worker.retiring:
                _terminate(worker.pid)


def _run_worker(dispatcher: Dispatcher, death_fd: int, ready_fd: int) -> None:
    """Serve in a worker: say when ready, stop on SIGTERM/SIGINT or when the supervisor dies."""
    supervisor = os.getppid()

    def say_ready() -> None:
        os.write(ready_fd, f"{os.getpid()}\n".encode())
        _close_now(ready_fd)

    def stop_when_orphaned() -> None:
        gevent.os.make_nonblocking(death_fd)
        while gevent.os.nb_read(death_fd, 1):
            pass  # never written: only end of file comes
        log.warning("worker %d: the supervisor (process %d) is gone; no longer accepting, open connections "
                    "have %.1f s", os.getpid(), supervisor, dispatcher.config.grace_period)  # fmt: skip
        dispatcher.stop()

    orphan_watch = gevent.spawn(stop_when_orphaned)
    try:
        dispatcher.serve_forever(on_ready=say_ready)
    finally:
        orphan_watch.kill()


def _cancel(item: Any) -> None:
    """Stop a signal handler or a watcher for good.

    A watcher is closed, not only stopped: libuv's loop frees the memory of
    a watcher dropped unclosed while it still links it (gevent's own
    ``signal.cancel()`` closes its watcher for the same reason).
    """
    (item.cancel if hasattr(item, "cancel") else item.close)()


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # exited already: its exit event is on the way


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


__all__ = ["ListenerSet", "Supervisor", "restart_delay", "serve_in_process"]
