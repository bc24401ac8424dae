"""The dispatcher's limits: ``max_connections`` per process, ``idle_timeout`` per service."""

import logging
from typing import Any

import gevent.socket
import pytest

from gevent_proxyproto._config import ConfigError, DispatcherConfig, ServiceConfig, config_from_mapping

from .support import V1_TCP4, free_ports, read_all, read_line, wait_until


def test_connections_over_max_connections_are_closed_at_once_with_one_warning(
    dispatcher_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    proxy, plain = free_ports(2)
    running = dispatcher_for(
        DispatcherConfig(
            max_connections=2,
            proxy_ports=(proxy,),
            proxy_port_mappings={proxy: "echo"},
            services={"e": ServiceConfig("e", "echo", (plain,))},
        )
    )
    # The cap counts every port of the process together.
    first = gevent.socket.create_connection(("127.0.0.1", proxy), timeout=5)
    first.sendall(V1_TCP4 + b"one\n")
    assert read_line(first) == b"one\n"
    second = gevent.socket.create_connection(("127.0.0.1", plain), timeout=5)
    second.sendall(b"two\n")
    assert read_line(second) == b"two\n"
    for port in (plain, proxy, plain):
        with gevent.socket.create_connection(("127.0.0.1", port), timeout=5) as refused:
            assert read_all(refused) == b""  # closed before any byte
    assert running.refused_connections == 3
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and ": max_connections: 2 connections are open" in warnings[0]
    first.close()
    wait_until(lambda: len(running.connections) < 2)
    with gevent.socket.create_connection(("127.0.0.1", plain), timeout=5) as third:
        third.sendall(b"three\n")
        assert read_line(third) == b"three\n"
    second.close()
    assert "Traceback" not in caplog.text


def test_a_refusal_warning_after_the_interval_counts_the_unlogged(
    dispatcher_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    (plain,) = free_ports(1)
    running = dispatcher_for(DispatcherConfig(max_connections=1, services={"e": ServiceConfig("e", "echo", (plain,))}))
    held = gevent.socket.create_connection(("127.0.0.1", plain), timeout=5)
    held.sendall(b"x\n")
    assert read_line(held) == b"x\n"
    for _ in range(3):
        with gevent.socket.create_connection(("127.0.0.1", plain), timeout=5) as refused:
            assert read_all(refused) == b""
    running.warning_interval = 0.0  # the interval has passed
    with gevent.socket.create_connection(("127.0.0.1", plain), timeout=5) as refused:
        assert read_all(refused) == b""
    held.close()
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 3 and warnings[1].endswith(": suppressed 2 more max_connections since the last warning")
    assert ": max_connections: " in warnings[2]
    assert running.refused_connections == 4


def test_a_service_idle_timeout_closes_a_silent_connection(dispatcher_for: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gevent_proxyproto")
    proxy, plain = free_ports(2)
    running = dispatcher_for(
        DispatcherConfig(
            proxy_ports=(proxy,),
            proxy_port_mappings={proxy: "quick"},
            services={
                "quick": ServiceConfig("quick", "echo", (plain,), idle_timeout=0.3),
            },
        )
    )
    for port, data in ((proxy, V1_TCP4), (plain, b"")):
        with gevent.socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(data + b"hello\n")
            assert read_line(client) == b"hello\n"
            assert read_all(client) == b""  # then silence: closed by the server
    assert caplog.text.count("idle for 0.3 s: closed") == 2
    wait_until(lambda: len(running.connections) == 0)
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"max_connections": 0}, "max_connections must be a whole number"),
        ({"max_connections": "10"}, "max_connections must be a whole number"),
        ({"max_connections": True}, "max_connections must be a whole number"),
        ({"services": {"e": {"handler": "echo", "idle_timeout": 0}}}, "services.e.idle_timeout must be a positive"),
        ({"services": {"e": {"handler": "echo", "idle_timeout": "5"}}}, "services.e.idle_timeout must be a positive"),
        ({"services": {"e": {"handler": "echo", "idle_timeout": float("inf")}}}, "idle_timeout must be a positive"),
    ],
    ids=["cap-zero", "cap-string", "cap-bool", "idle-zero", "idle-string", "idle-inf"],
)
def test_limit_errors_name_the_key(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(mapping)


def test_limits_from_toml_keys() -> None:
    config = config_from_mapping(
        {"max_connections": 500, "services": {"e": {"handler": "echo", "ports": [5222], "idle_timeout": 300}}}
    )
    assert config.max_connections == 500 and config.services["e"].idle_timeout == 300
