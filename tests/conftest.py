"""Shared fixtures and helpers for the test suite."""

import json
import os
import pathlib
import signal
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent
#: The project's shared folder, beside the checkout (the workplace layout).
SHARED_VECTORS = REPO.parent / "shared" / "vectors" / "vectors.json"
VECTORS_FILE = TESTS / "vectors" / "vectors.json"
IN_CI = os.environ.get("CI", "").lower() == "true"

# Property tests: "ci" (the default) stays quick; HYPOTHESIS_PROFILE=long hunts
# harder. No deadline: a CI machine's hiccup is not a bug.
settings.register_profile("ci", max_examples=200, deadline=None, print_blob=True)
settings.register_profile("long", max_examples=20_000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Servers the tests start stop on SIGINT, as on Ctrl-C. A shell's background job
# (`pytest ... &`) starts with SIGINT ignored, and a child inherits that across exec:
# those servers would ignore it and be killed after STOP_TIMEOUT. A handled signal
# is reset to its default in a child, so handle it here.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def load_vectors() -> list[dict[str, Any]]:
    with open(VECTORS_FILE, encoding="utf-8") as file:
        vectors: list[dict[str, Any]] = json.load(file)
    return vectors


def require_tool(name: str, reason: str) -> None:
    """Skip a test for a tool missing on a developer's machine; in CI that is a failure."""
    if IN_CI:
        pytest.fail(f"{name} is missing in CI: {reason}")
    pytest.skip(f"{name} is not installed: {reason}")


def family(name: str) -> socket.AddressFamily:
    return getattr(socket, name)  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def gevent_timeout_guard(request: pytest.FixtureRequest) -> Any:
    """Every test runs under a gevent.Timeout: a hang fails instead of stalling the suite.

    20 s, or what a ``@pytest.mark.guard(seconds)`` marker says.
    """
    import sys

    if "gevent" not in sys.modules:  # pure core tests stay gevent-free
        yield
        return
    import gevent

    marker = request.node.get_closest_marker("guard")
    seconds = marker.args[0] if marker is not None else 20
    guard = gevent.Timeout.start_new(seconds, AssertionError(f"test took over {seconds} s (gevent.Timeout guard)"))
    try:
        yield
    finally:
        # close(), not cancel(): under GEVENT_LOOP=libuv a timer dropped
        # unclosed is freed while the loop still links it (a later crash).
        guard.close()


@pytest.fixture
def dispatcher_for() -> Iterator[Any]:
    """Start a Dispatcher for a config; every one started is stopped after the test."""
    from gevent_proxyproto import Dispatcher, DispatcherConfig

    started: list[Dispatcher] = []

    def start(config: DispatcherConfig) -> Dispatcher:
        dispatcher = Dispatcher(config)
        dispatcher.start()
        started.append(dispatcher)
        return dispatcher

    yield start
    for dispatcher in started:
        dispatcher.stop(grace_period=1)
