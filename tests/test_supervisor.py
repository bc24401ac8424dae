"""``serve`` supervised: workers replaced, orphans stop, SIGHUP reloads; with real processes and signals."""

import json
import os
import signal
import socket
import textwrap
from collections.abc import Iterator
from typing import Any
from unittest import mock

import gevent
import gevent.socket
import pytest

from gevent_proxyproto._config import DispatcherConfig
from gevent_proxyproto._dispatch import Dispatcher
from gevent_proxyproto._supervisor import FIRST_RESTART_DELAY, MAX_RESTART_DELAY, restart_delay

from .support import V1_TCP4, CommandLine, free_ports, is_listening, read_all, read_line, wait_until

READY = r"ready: "
WORKER_READY = r"worker (\d+) ready"


def mapping(grace_period: float = 10.0, **ports: int) -> str:
    """A configuration: each named built-in service (whoami, echo) on its PROXY port."""
    lines = [f"grace_period = {grace_period}", f"proxy_ports = [{', '.join(str(port) for port in ports.values())}]"]
    lines += ["[proxy_port_mappings]", *(f'{port} = "{name.rstrip("_0123456789")}"' for name, port in ports.items())]
    return "\n".join(lines) + "\n"


@pytest.fixture
def config_file(tmp_path: Any) -> Any:
    return tmp_path / "serve.toml"


@pytest.fixture
def serve(config_file: Any) -> Iterator[Any]:
    """Start ``serve --config`` on ``config_file`` with extra arguments; killed at the end if still running."""
    started: list[CommandLine] = []

    def start(*extra: str) -> CommandLine:
        child = CommandLine("serve", "--config", str(config_file), "--log-level", "INFO", *extra)
        started.append(child)
        child.wait_for(READY)
        return child

    yield start
    for child in started:
        child.__exit__(None, None, None)


def whoami(port: int) -> dict[str, Any]:
    with gevent.socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(V1_TCP4)
        return json.loads(read_line(client))  # type: ignore[no-any-return]


def echoes(port: int) -> bool:
    """Whether the port runs echo (whoami would send its JSON line first)."""
    with gevent.socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(V1_TCP4 + b"ping\n")
        return read_line(client) == b"ping\n"


def worker_pids(child: CommandLine) -> list[int]:
    return [int(match[1]) for match in child.matches(WORKER_READY)]


def alive(pid: int) -> bool:
    """Running (a zombie left to a parent that does not reap is not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_restart_delays_double_up_to_the_maximum() -> None:
    assert restart_delay(0) == 0
    assert [restart_delay(n) for n in (1, 2, 3)] == [FIRST_RESTART_DELAY * factor for factor in (1, 2, 4)]
    assert restart_delay(100) == MAX_RESTART_DELAY


def test_a_killed_worker_is_replaced_with_a_log_line(config_file: Any, serve: Any) -> None:
    (port,) = free_ports(1)
    config_file.write_text(mapping(whoami=port))
    child = serve("--workers", "2")
    first, second = worker_pids(child)
    os.kill(first, signal.SIGKILL)
    [death] = child.wait_for(rf"worker {first} was killed by SIGKILL after [\d.]+ s; starting a replacement")
    assert "WARNING" in death.string
    child.wait_for(WORKER_READY, count=3)
    replacement = worker_pids(child)[2]
    assert alive(replacement) and alive(second) and not alive(first)
    for _ in range(10):
        assert whoami(port)["peer"] == ["203.0.113.7", 4242]
    child.send_signal(signal.SIGTERM)
    assert child.wait() == 0
    assert not alive(second) and not alive(replacement)


def test_a_worker_that_keeps_dying_is_restarted_ever_later(config_file: Any, serve: Any) -> None:
    (port,) = free_ports(1)
    config_file.write_text(mapping(whoami=port))
    child = serve("--workers", "1")
    # Each replacement is killed as soon as it is forked: a worker that dies at once, every time.
    for deaths in range(1, 4):
        pid = int(child.wait_for(r"worker (\d+) started", count=deaths)[-1][1])
        os.kill(pid, signal.SIGKILL)
        child.wait_for(rf"worker {pid} was killed by SIGKILL")
    delays = [float(match[1]) for match in child.matches(r"starting a replacement in ([\d.]+) s")]
    assert delays == [restart_delay(1), restart_delay(2), restart_delay(3)]
    child.wait_for(WORKER_READY, count=2)  # and once it lives, it serves
    assert whoami(port)["peer"] == ["203.0.113.7", 4242]


def test_workers_stop_when_the_supervisor_is_killed(config_file: Any, serve: Any) -> None:
    (port,) = free_ports(1)
    config_file.write_text(mapping(whoami=port))
    child = serve("--workers", "2")
    workers = worker_pids(child)
    child.process.kill()  # SIGKILL: the supervisor cannot tell anyone
    child.wait()
    wait_until(lambda: not any(alive(pid) for pid in workers), timeout=10)
    assert not is_listening(port)
    assert len(child.matches(r"worker \d+: the supervisor \(process \d+\) is gone")) == 2
    again = serve()  # the port is free for the next serve
    assert whoami(port)["peer"] == ["203.0.113.7", 4242]
    again.send_signal(signal.SIGTERM)
    assert again.wait() == 0


def _workers_option(workers: int) -> list[str]:
    """No --workers for 0: serve in the process."""
    return ["--workers", str(workers)] if workers else []


def _keep_connecting(port: int, outcomes: list[str]) -> None:
    """Connect again and again (until killed), noting each "answered" (by either service) or what went wrong."""
    while True:
        try:
            with gevent.socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                client.sendall(V1_TCP4 + b"ping\n")
                client.shutdown(socket.SHUT_WR)
                # Read to the end: closing with unread data would reset the connection.
                received = read_all(client)
                outcomes.append("answered" if received.endswith(b"ping\n") else f"answered {received!r}")
        except OSError as error:
            outcomes.append(repr(error))


@pytest.mark.parametrize("workers", [0, 1, 2], ids=["in-process", "one-worker", "two-workers"])
def test_sighup_reloads_the_configuration_and_drains_the_old(config_file: Any, serve: Any, workers: int) -> None:
    kept, added, removed = free_ports(3)
    config_file.write_text(mapping(whoami=kept, echo=removed))
    child = serve(*_workers_option(workers))
    old_workers = worker_pids(child)
    in_flight = gevent.socket.create_connection(("127.0.0.1", kept), timeout=5)
    in_flight.sendall(V1_TCP4)
    assert json.loads(read_line(in_flight))["service"] == "whoami"

    config_file.write_text(mapping(echo=kept, whoami_2=added))
    outcomes: list[str] = []
    prober = gevent.spawn(_keep_connecting, kept, outcomes)
    try:
        wait_until(lambda: len(outcomes) >= 3)
        child.send_signal(signal.SIGHUP)
        child.wait_for(READY, count=2)
        probed = len(outcomes)
        wait_until(lambda: len(outcomes) >= probed + 3)
    finally:
        prober.kill()
    assert set(outcomes) == {"answered"}, (
        outcomes,
        child.log,
    )  # never refused, never reset, while the generations changed
    assert echoes(kept)  # the new mapping
    assert whoami(added)["port"] == added  # a new port, bound by the reload
    # The connection accepted under the old configuration is still served by it.
    in_flight.sendall(b"still here\n")
    assert read_line(in_flight) == b"still here\n"
    in_flight.close()
    wait_until(lambda: not is_listening(removed))  # once the old ones stopped accepting
    if workers:
        for pid in old_workers:
            child.wait_for(rf"worker {pid} \(configuration 0\) exited with status 0")
    child.send_signal(signal.SIGTERM)
    assert child.wait() == 0
    assert "Traceback" not in child.log


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "two-workers"])
def test_an_invalid_configuration_on_sighup_keeps_the_old_one_serving(
    config_file: Any, serve: Any, workers: int
) -> None:
    port, taken_port = free_ports(2)
    config_file.write_text(mapping(whoami=port))
    child = serve(*_workers_option(workers))
    started = len(child.matches(r"worker \d+ started"))
    reloads = {
        "unknown key": "this_is_not_a_key = 1\n" + mapping(echo=port),
        "is not valid TOML": "proxy_ports = [\n",
        f"port {taken_port}": mapping(echo=port, whoami_2=taken_port),
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", taken_port))
        taken.listen()
        for count, (reason, text) in enumerate(reloads.items(), 1):
            config_file.write_text(textwrap.dedent(text))
            child.send_signal(signal.SIGHUP)
            [*_, error] = child.wait_for(r"ERROR .*SIGHUP: the configuration was not reloaded", count=count)
            assert reason in error.string
            assert whoami(port)["service"] == "whoami"  # the old configuration
    assert len(child.matches(r"worker \d+ started")) == started  # nothing was restarted
    assert len(child.matches(READY)) == 1
    child.send_signal(signal.SIGTERM)
    assert child.wait() == 0
    assert "Traceback" not in child.log


def test_a_connection_still_in_its_header_when_the_drain_starts_is_served() -> None:
    # gevent's close() drops server.handle: the handler must be taken when the connection starts.
    (port,) = free_ports(1)
    dispatcher = Dispatcher(DispatcherConfig(proxy_ports=(port,), proxy_port_mappings={port: "echo"}))
    dispatcher.start()
    with gevent.socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(V1_TCP4[:10])
        wait_until(lambda: len(dispatcher.connections) == 1)  # accepted, reading its header
        stopping = gevent.spawn(dispatcher.stop, 5)
        wait_until(lambda: not is_listening(port))
        client.sendall(V1_TCP4[10:] + b"after the stop\n")
        assert read_line(client) == b"after the stop\n"
    stopping.join(timeout=5)
    assert stopping.successful()


def test_a_connection_accepted_as_the_drain_starts_is_served() -> None:
    # The window between accept and the connection's greenlet starting is too
    # short to hit on time: do to the server what close() does (it removes
    # server.handle) right after the connection is spawned.
    (port,) = free_ports(1)
    dispatcher = Dispatcher(DispatcherConfig(proxy_ports=(port,), proxy_port_mappings={port: "echo"}))
    spawn = dispatcher._spawn_connection

    def spawn_then_lose_the_handle(*arguments: Any) -> Any:
        greenlet = spawn(*arguments)
        dispatcher.servers[port].__dict__.pop("handle")
        return greenlet

    with mock.patch.object(dispatcher, "_spawn_connection", spawn_then_lose_the_handle):
        dispatcher.start()
    try:
        with gevent.socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(V1_TCP4 + b"served\n")
            assert read_line(client) == b"served\n"
    finally:
        dispatcher.stop(grace_period=1)
