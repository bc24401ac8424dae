"""ProxyRelay and ``gevent-proxyproto forward``: header first, both directions, half-close, shutdown."""

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event
import gevent.socket
import pytest

import gevent_proxyproto as gpp
from gevent_proxyproto._sending import header_for

from .conftest import REPO
from .support import CommandLine, Recorder, free_ports, needs_ipv6, open_fds, read_all, read_line, serving, wait_until


@contextlib.contextmanager
def relaying(upstream: Any, listener: Any = ("127.0.0.1", 0), **kwargs: Any) -> Iterator[gpp.ProxyRelay]:
    relay = gpp.ProxyRelay(listener, upstream, **kwargs)
    relay.start()
    try:
        yield relay
    finally:
        relay.stop(timeout=1)


def refused(address: tuple[str, int]) -> bool:
    """No longer accepting: refused, or reset (queued in the backlog when the listener closed)."""
    try:
        gevent.socket.create_connection(address, timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    return False


# -- in process ------------------------------------------------------------------------------------

ENDPOINTS = {
    # listen on, connect to, the host the relay sees for both ends
    "ipv4": ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
    "ipv6": ("::1", "::1", "::1"),
    # An IPv6 socket bound to a v4-mapped address takes IPv4 clients: both ends
    # are v4-mapped IPv6, and go into the header that way (as HAProxy's v4v6 binds do).
    "dual-stack": ("::ffff:127.0.0.1", "127.0.0.1", "::ffff:127.0.0.1"),
}
OPTIONS = {
    "v1": {"version": 1},
    "v2": {"version": 2},
    "v2-crc32c-tlvs": {"version": 2, "crc32c": True, "tlvs": [(0xE1, b"\x01\x02"), (gpp.TLVType.NOOP, b"")]},
}


@pytest.mark.parametrize("options", sorted(OPTIONS))
@pytest.mark.parametrize(
    "endpoints", [pytest.param(name, marks=needs_ipv6 if name != "ipv4" else ()) for name in sorted(ENDPOINTS)]
)
def test_the_client_address_reaches_the_proxy_server(endpoints: str, options: str) -> None:
    listen_host, connect_host, seen_host = ENDPOINTS[endpoints]
    recorder = Recorder()
    with serving(recorder) as server, relaying(server.address, (listen_host, 0), **OPTIONS[options]) as relay:
        with gevent.socket.create_connection((connect_host, relay.server_port), timeout=5) as client:
            own_port = client.getsockname()[1]
            line = read_line(client)
            client.sendall(b"hello\n")
            assert read_line(client) == b"hello\n"
    source, destination = (seen_host, own_port), (seen_host, relay.server_port)
    [seen] = recorder.seen
    assert seen["header"].raw == header_for(destination=destination, source=source, **OPTIONS[options])
    expected_peer = source if ":" not in seen_host else (*source, 0, 0)
    assert line == repr(expected_peer).encode() + b"\n"
    assert seen["address"] == expected_peer
    assert seen["real_peer"][0] == "127.0.0.1"  # the relay's own connection to the server


def test_client_half_close_reaches_upstream_and_the_answer_still_comes_back() -> None:
    def answer_after_eof(sock: Any, address: Any) -> None:
        request = read_all(sock)  # until the client's half-close arrives
        sock.sendall(b"got " + request)

    with serving(answer_after_eof) as server, relaying(server.address) as relay:
        with gevent.socket.create_connection(relay.address, timeout=5) as client:
            client.sendall(b"request")
            client.shutdown(socket.SHUT_WR)
            assert read_all(client) == b"got request"
        wait_until(lambda: len(relay.connections) == 0)


def test_upstream_half_close_reaches_the_client_which_can_still_send() -> None:
    received = gevent.event.AsyncResult()

    def greet_then_listen(sock: Any, address: Any) -> None:
        sock.sendall(b"greeting\n")
        sock.shutdown(socket.SHUT_WR)
        received.set(read_all(sock))

    with serving(greet_then_listen) as server, relaying(server.address) as relay:
        with gevent.socket.create_connection(relay.address, timeout=5) as client:
            assert read_all(client) == b"greeting\n"  # end of stream: the upstream's half-close
            client.sendall(b"after the end of stream")
            client.shutdown(socket.SHUT_WR)
            assert received.get(timeout=5) == b"after the end of stream"
        wait_until(lambda: len(relay.connections) == 0)


def _reset(sock: Any) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def test_a_reset_upstream_ends_the_client_connection() -> None:
    def reset(sock: Any, address: Any) -> None:
        sock.recv(5)
        _reset(sock)

    with serving(reset) as server, relaying(server.address) as relay:
        with gevent.socket.create_connection(relay.address, timeout=5) as client:
            client.sendall(b"hello")
            assert read_all(client) == b""
        wait_until(lambda: len(relay.connections) == 0)


def test_a_reset_client_ends_the_upstream_connection() -> None:
    ended = gevent.event.AsyncResult()

    def wait_for_the_end(sock: Any, address: Any) -> None:
        sock.sendall(b"ready\n")
        ended.set(read_all(sock))

    with serving(wait_for_the_end) as server, relaying(server.address) as relay:
        client = gevent.socket.create_connection(relay.address, timeout=5)
        assert read_line(client) == b"ready\n"
        _reset(client)
        assert ended.get(timeout=5) == b""
        wait_until(lambda: len(relay.connections) == 0)


def test_unreachable_upstream_closes_the_client_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    (nobody,) = free_ports(1)
    with relaying(("127.0.0.1", nobody)) as relay:
        with gevent.socket.create_connection(relay.address, timeout=5) as client:
            assert read_all(client) == b""
        wait_until(lambda: relay.upstream_failures == 1)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"cannot reach upstream 127.0.0.1:{nobody}" in warnings[0].getMessage()
    assert "Traceback" not in caplog.text


def test_bad_options_fail_before_anything_listens() -> None:
    with pytest.raises(ValueError):
        gpp.ProxyRelay(("127.0.0.1", 0), ("127.0.0.1", 1), version=1, crc32c=True)
    with pytest.raises(ValueError):
        gpp.ProxyRelay(("127.0.0.1", 0), ("127.0.0.1", 1), tlvs=[(256, b"")])


def test_stop_lets_open_connections_finish() -> None:
    with serving(Recorder()) as server:
        relay = gpp.ProxyRelay(("127.0.0.1", 0), server.address)
        relay.start()
        address = relay.address
        client = gevent.socket.create_connection(address, timeout=5)
        read_line(client)
        stopper = gevent.spawn(relay.stop, 10)
        wait_until(lambda: refused(address))  # no longer accepting...
        client.sendall(b"still here\n")  # ...while the open connection is served
        assert read_line(client) == b"still here\n"
        client.close()
        stopper.join(timeout=5)
        assert stopper.dead and len(relay.connections) == 0


def test_connections_open_after_the_grace_period_are_closed(caplog: pytest.LogCaptureFixture) -> None:
    with serving(Recorder()) as server:
        relay = gpp.ProxyRelay(("127.0.0.1", 0), server.address)
        relay.start()
        with gevent.socket.create_connection(relay.address, timeout=5) as client:
            read_line(client)
            relay.stop(timeout=0.2)
            assert read_all(client) == b""
    assert len(relay.connections) == 0
    assert "1 connection(s) still open after the grace period" in caplog.text


def test_no_descriptor_or_greenlet_left_behind() -> None:
    with serving(Recorder()) as server, relaying(server.address) as relay:
        before = open_fds()
        for _ in range(20):
            with gevent.socket.create_connection(relay.address, timeout=5) as client:
                read_line(client)
        wait_until(lambda: len(relay.connections) == 0 and len(server.failures) == 0 and open_fds() <= before)


def _until_end(sock: Any, echo: bool = False) -> tuple[bytes, str]:
    """Everything received (echoed if ``echo``), and how the stream ended: "end of stream" (a FIN) or "reset"."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return b"".join(chunks), "reset"
        if not chunk:
            return b"".join(chunks), "end of stream"
        chunks.append(chunk)
        if echo:
            sock.sendall(chunk)


def test_a_client_reset_reaches_the_upstream_as_a_reset() -> None:
    ended = gevent.event.AsyncResult()

    def wait_for_the_end(sock: Any, address: Any) -> None:
        sock.sendall(b"ready\n")
        ended.set(_until_end(sock))

    with serving(wait_for_the_end) as server, relaying(server.address) as relay:
        client = gevent.socket.create_connection(relay.address, timeout=5)
        assert read_line(client) == b"ready\n"
        _reset(client)
        assert ended.get(timeout=5) == (b"", "reset")
        wait_until(lambda: len(relay.connections) == 0)


def test_an_upstream_reset_in_mid_response_reaches_the_client_as_a_reset() -> None:
    def crash_mid_response(sock: Any, address: Any) -> None:
        sock.recv(7)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
        _reset(sock)  # as a crashed backend's kernel does

    with serving(crash_mid_response) as server, relaying(server.address) as relay:
        with gevent.socket.create_connection(relay.address, timeout=5) as client:
            client.sendall(b"request")
            received, ending = _until_end(client)
        wait_until(lambda: len(relay.connections) == 0)
    assert ending == "reset", received  # not a clean end that would make "partial" look complete


def test_a_half_close_stays_a_half_close_both_ways() -> None:
    ended = gevent.event.AsyncResult()

    def answer_then_close(sock: Any, address: Any) -> None:
        request = _until_end(sock)
        sock.sendall(b"answer")
        sock.shutdown(socket.SHUT_WR)
        ended.set(request)

    with serving(answer_then_close) as server, relaying(server.address) as relay:
        with gevent.socket.create_connection(relay.address, timeout=5) as client:
            client.sendall(b"request")
            client.shutdown(socket.SHUT_WR)
            assert _until_end(client) == (b"answer", "end of stream")
        assert ended.get(timeout=5) == (b"request", "end of stream")


def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    upstream_ended = gevent.event.AsyncResult()

    def echo_until_the_end(sock: Any, address: Any) -> None:
        upstream_ended.set(_until_end(sock, echo=True))

    with serving(echo_until_the_end) as server, relaying(server.address, idle_timeout=0.3) as relay:
        with gevent.socket.create_connection(relay.address, timeout=5) as client:
            client.sendall(b"still talking\n")
            assert read_line(client) == b"still talking\n"
            assert _until_end(client) == (b"", "end of stream")  # then silence: closed, with a FIN
        assert upstream_ended.get(timeout=5) == (b"still talking\n", "end of stream")
        wait_until(lambda: len(relay.connections) == 0)
    assert len(server.failures) == 0


# -- the command line, in subprocesses ---------------------------------------------------------


def _cli(*args: str) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(
        [sys.executable, "-m", "gevent_proxyproto", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@contextlib.contextmanager
def running(process: "subprocess.Popen[bytes]") -> Iterator["subprocess.Popen[bytes]"]:
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def whoami_behind_forward(tmp_path: Any, *forward_options: str) -> Iterator[tuple[int, int, Any]]:
    """``gevent-proxyproto serve`` (whoami on a PROXY port) with ``forward`` in front of it."""
    serve_port, forward_port = free_ports(2)
    config = tmp_path / "proxy.toml"
    config.write_text(textwrap.dedent(f"""
        proxy_ports = [{serve_port}]
        [proxy_port_mappings]
        {serve_port} = "whoami"
    """))  # fmt: skip
    # Ready when each says so (not when "something" listens on the port).
    with CommandLine("serve", "--config", str(config)) as serve:
        serve.wait_for(r"ready: ")
        forward = CommandLine("forward", "--listen", f"127.0.0.1:{forward_port}", "--to", f"127.0.0.1:{serve_port}",
                       *forward_options)  # fmt: skip
        with forward:
            forward.wait_for(r"^forwarding ", stream="out")
            yield serve_port, forward_port, forward


FORWARD_OPTIONS = {
    "v1": (["--proxy-protocol", "v1"], 1, []),
    "v2": ([], 2, []),
    "v2-crc32c-tlvs": (["--crc32c", "--tlv", "0xE1=cafe", "--tlv", "4="], 2, [0x03, 0xE1, 0x04]),
}


@pytest.mark.parametrize("case", sorted(FORWARD_OPTIONS))
def test_forward_in_front_of_serve_a_plain_client_sees_its_own_address(tmp_path: Any, case: str) -> None:
    options, version, tlv_types = FORWARD_OPTIONS[case]
    with whoami_behind_forward(tmp_path, *options) as (serve_port, forward_port, _):
        with gevent.socket.create_connection(("127.0.0.1", forward_port), timeout=5) as client:
            own = client.getsockname()
            document = json.loads(read_line(client))
            client.sendall(b"echoed\n")
            assert read_line(client) == b"echoed\n"
    assert document["peer"] == [own[0], own[1]]
    assert document["sock"] == ["127.0.0.1", forward_port]
    assert document["port"] == serve_port
    assert document["proxy"]["version"] == version and document["proxy"]["command"] == "PROXY"
    assert [tlv_type for tlv_type, _ in document["proxy"]["tlvs"]] == tlv_types
    if tlv_types:
        assert document["proxy"]["tlvs"][1:] == [[0xE1, "cafe"], [0x04, ""]]


def test_forward_shuts_down_gracefully_on_sigterm(tmp_path: Any) -> None:
    with whoami_behind_forward(tmp_path, "--grace-period", "5") as (_, forward_port, forward):
        open_connection = gevent.socket.create_connection(("127.0.0.1", forward_port), timeout=5)
        json.loads(read_line(open_connection))
        forward.send_signal(signal.SIGTERM)
        wait_until(lambda: refused(("127.0.0.1", forward_port)))  # stops accepting at once...
        open_connection.sendall(b"still here\n")  # ...while the open connection is relayed
        assert read_line(open_connection) == b"still here\n"
        open_connection.close()
        assert forward.wait() == 0
    assert f"forwarding 127.0.0.1:{forward_port} -> 127.0.0.1:" in "".join(forward.out)
    assert "SIGTERM" in forward.log and "Traceback" not in forward.log


def test_forward_a_second_sigterm_closes_open_connections_at_once(tmp_path: Any) -> None:
    with whoami_behind_forward(tmp_path, "--grace-period", "60") as (_, forward_port, forward):
        open_connection = gevent.socket.create_connection(("127.0.0.1", forward_port), timeout=5)
        json.loads(read_line(open_connection))
        forward.send_signal(signal.SIGTERM)
        wait_until(lambda: refused(("127.0.0.1", forward_port)))  # draining: the connection has 60 s...
        forward.send_signal(signal.SIGTERM)
        assert read_all(open_connection) == b""  # ...but the second signal closes it now
        open_connection.close()
        assert forward.wait() == 0
    assert "SIGTERM again: closing 1 open connection(s) now" in forward.log


def test_forward_idle_timeout_closes_a_silent_connection(tmp_path: Any) -> None:
    with whoami_behind_forward(tmp_path, "--idle-timeout", "0.3") as (_, forward_port, forward):
        with gevent.socket.create_connection(("127.0.0.1", forward_port), timeout=5) as client:
            assert json.loads(read_line(client))["service"] == "whoami"
            assert read_all(client) == b""  # silence, then the relay closes it
        forward.send_signal(signal.SIGTERM)
        assert forward.wait() == 0


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--tlv", "3=00000000"], "use --crc32c"),
        (["--tlv", "256=00"], "not TYPE=HEX"),
        (["--tlv", "0xe1=xyz"], "not TYPE=HEX"),
        (["--tlv", "0xe1"], "not TYPE=HEX"),
        (["--proxy-protocol", "v1", "--crc32c"], "need --proxy-protocol v2"),
        (["--proxy-protocol", "v3"], "invalid choice"),
        (["--listen", "::1:9000"], "[::1]:9000"),
        (["--listen", "127.0.0.1"], "not HOST:PORT"),
        (["--listen", "127.0.0.1:70000"], "not HOST:PORT"),
        (["--grace-period", "-1"], "not a positive number"),
        (["--idle-timeout", "0"], "not a positive number"),
    ],
    ids=["crc-as-tlv", "tlv-type", "tlv-hex", "tlv-no-value", "v1-crc", "v3", "ipv6-no-brackets", "no-port",
         "port-range", "grace", "idle"],
)  # fmt: skip
def test_forward_argument_errors_exit_2(arguments: list[str], message: str) -> None:
    defaults = {"--listen": "127.0.0.1:1", "--to": "127.0.0.1:2"}
    for name, value in defaults.items():
        if name not in arguments:
            arguments = [name, value, *arguments]
    with running(_cli("forward", *arguments)) as process:
        out, err = process.communicate(timeout=15)
    assert process.returncode == 2, (out, err)
    assert message in err.decode() and "Traceback" not in err.decode()


def test_forward_port_taken_exits_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with running(_cli("forward", "--listen", f"127.0.0.1:{port}", "--to", "127.0.0.1:1")) as process:
            out, err = process.communicate(timeout=15)
    assert process.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in err.decode() and "Traceback" not in err.decode()
