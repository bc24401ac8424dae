"""The ``multiplex`` service: routing by first bytes, nothing consumed, no spinning, TLS after the match."""

import logging
import socket
import ssl
import struct
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import gevent
import gevent.socket
import gevent.ssl
import pytest

from gevent_proxyproto import _multiplex
from gevent_proxyproto._config import ConfigError, DispatcherConfig, ServiceConfig, TLSConfig, config_from_mapping
from gevent_proxyproto._dispatch import Dispatcher
from gevent_proxyproto._multiplex import Multiplexer, Unmatched

from .conftest import REPO
from .support import (
    V2_TCP4,
    client_tls_context,
    free_ports,
    live_greenlets,
    make_certificate,
    open_fds,
    read_all,
    read_line,
    wait_until,
)

PROXIED = ("203.0.113.7", 4242)  # the client V2_TCP4 names
XMPP_OPENING = (
    b"<?xml version='1.0'?><stream:stream to='example.test' xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
)
HTTP_REQUEST = b"GET /status HTTP/1.1\r\nHost: example.test\r\n\r\n"
#: Hub turns given to a waiting multiplexer: a greenlet that spun would peek on each.
HUB_TURNS = 100


class Seen:
    """Handlers that say which service got the connection, record it, then echo."""

    def __init__(self) -> None:
        self.connections: list[dict[str, Any]] = []

    def handler(self, name: str) -> Callable[[Any, Any], None]:
        def handle(sock: Any, address: Any) -> None:
            self.connections.append({
                "service": name,
                "address": address,
                "peer": sock.getpeername(),
                "rcvlowat": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT),
                "tls": sock.version() if hasattr(sock, "version") else None,
            })  # fmt: skip
            sock.sendall(f"{name} {address!r}\n".encode())
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                sock.sendall(data)

        return handle


def routes(seen: Seen) -> dict[str, ServiceConfig]:
    return {
        "xmpp": ServiceConfig("xmpp", seen.handler("xmpp"), multiplex_pattern=r"<\?xml|<stream:stream"),
        "http": ServiceConfig("http", seen.handler("http"), multiplex_pattern=r"(GET|HEAD|POST) /"),
        "echo": ServiceConfig("echo", "echo", multiplex_pattern="ECHO "),
    }


@pytest.fixture
def multiplexed() -> Iterator[Callable[..., tuple[int, Multiplexer, Seen]]]:
    """A dispatcher with one PROXY port mapped to multiplex: ``multiplexed(services, tls, **config fields)``.

    The services default to :func:`routes`; ``tls`` is the port's TLS.
    """
    started: list[Dispatcher] = []

    def start(
        services: dict[str, ServiceConfig] | None = None, tls: TLSConfig | None = None, **fields: Any
    ) -> tuple[int, Multiplexer, Seen]:
        seen = Seen()
        (port,) = free_ports(1)
        config = DispatcherConfig(
            proxy_ports=(port,),
            proxy_port_mappings={port: "multiplex"},
            services=services if services is not None else routes(seen),
            tls={port: tls} if tls is not None else {},
            **fields,
        )
        dispatcher = Dispatcher(config)
        dispatcher.start()
        started.append(dispatcher)
        multiplexer = dispatcher.servers[port].handle
        assert isinstance(multiplexer, Multiplexer)
        return port, multiplexer, seen

    yield start
    for dispatcher in started:
        dispatcher.stop(grace_period=1)


def connect(port: int, data: bytes = b"") -> gevent.socket.socket:
    client = gevent.socket.create_connection(("127.0.0.1", port))
    client.settimeout(10)
    if data:
        client.sendall(data)
    return client


def read_exactly(sock: Any, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize(
    "first_bytes, service",
    [
        (XMPP_OPENING, "xmpp"),
        (b"<stream:stream xmlns='jabber:client'>", "xmpp"),
        (HTTP_REQUEST, "http"),
        (b"POST /form HTTP/1.0\r\n\r\n", "http"),
    ],
    ids=["xml-declaration", "stream-opening", "http-get", "http-post"],
)
def test_routes_by_the_first_bytes_with_the_proxied_address(multiplexed: Any, first_bytes: bytes, service: str) -> None:
    port, multiplexer, seen = multiplexed()
    with connect(port, V2_TCP4 + first_bytes) as client:
        assert read_line(client) == f"{service} {PROXIED!r}\n".encode()
        # The handler reads the bytes the multiplexer matched: none was consumed.
        assert read_exactly(client, len(first_bytes)) == first_bytes
    [connection] = seen.connections
    assert connection["address"] == connection["peer"] == PROXIED
    assert multiplexer.routed == {service: 1}


def test_echo_gets_back_exactly_the_bytes_sent(multiplexed: Any) -> None:
    """More than the buffer, in one segment with the header: every byte reaches the handler."""
    port, multiplexer, _ = multiplexed()
    payload = b"ECHO " + bytes(range(256)) * 8  # 2053 bytes, over multiplex_buffer_size
    with connect(port, V2_TCP4 + payload) as client:
        assert read_exactly(client, len(payload)) == payload
        client.shutdown(socket.SHUT_WR)
        assert read_all(client) == b""  # and nothing more
    assert multiplexer.routed == {"echo": 1}


def test_first_match_in_config_order_wins(multiplexed: Any) -> None:
    seen = Seen()
    services = {
        "short": ServiceConfig("short", seen.handler("short"), multiplex_pattern="GET"),
        "long": ServiceConfig("long", seen.handler("long"), multiplex_pattern="GET /"),
    }
    port, _, _ = multiplexed(services)
    with connect(port, V2_TCP4 + HTTP_REQUEST) as client:
        assert read_line(client).startswith(b"short ")
    port, _, _ = multiplexed(dict(reversed(services.items())))
    with connect(port, V2_TCP4 + HTTP_REQUEST) as client:
        assert read_line(client).startswith(b"long ")


def give_the_hub_turns() -> None:
    # Not synchronisation: each turn lets the hub poll, so a waiter that was
    # woken without new bytes (a spin) would peek again, and be counted.
    for _ in range(HUB_TURNS):
        gevent.sleep(0)


def test_first_bytes_in_pieces_are_waited_for_without_spinning(multiplexed: Any) -> None:
    port, multiplexer, seen = multiplexed()
    pieces = [XMPP_OPENING[:3], XMPP_OPENING[3:4], XMPP_OPENING[4:]]  # "<?x", "m", "l version=..."
    with mock.patch.object(_multiplex, "_peek", wraps=_multiplex._peek) as peek:
        with connect(port, V2_TCP4 + pieces[0]) as client:
            wait_until(lambda: peek.call_count >= 1)  # "<?x" seen: no match yet, waiting
            give_the_hub_turns()
            assert peek.call_count == 1, "peeked again with nothing new: a busy wait"
            client.sendall(pieces[1])
            wait_until(lambda: peek.call_count >= 2)  # "<?xm": still waiting
            give_the_hub_turns()
            assert peek.call_count == 2, "peeked again with nothing new: a busy wait"
            client.sendall(pieces[2])
            assert read_line(client) == f"xmpp {PROXIED!r}\n".encode()
            assert read_exactly(client, len(XMPP_OPENING)) == XMPP_OPENING
    assert peek.call_count == 3  # one peek per piece: no busy wait
    [connection] = seen.connections
    assert connection["rcvlowat"] == 1  # restored before the handler runs


def test_a_client_that_hangs_up_before_a_match_is_closed_at_once(
    multiplexed: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Its FIN makes the socket readable with nothing new: closed, not spun on until the timeout."""
    port, multiplexer, _ = multiplexed(multiplex_timeout=60.0)
    with mock.patch.object(_multiplex, "_peek", wraps=_multiplex._peek) as peek:
        with connect(port, V2_TCP4 + b"<?") as client:
            wait_until(lambda: peek.call_count == 1)
            client.shutdown(socket.SHUT_WR)
            assert read_all(client) == b""
    assert peek.call_count == 2
    wait_until(lambda: multiplexer.failures[Unmatched.CLOSED] == 1)
    assert multiplexer.failures == {Unmatched.CLOSED: 1}
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_a_reset_before_a_match_is_counted_as_closed(multiplexed: Any) -> None:
    port, multiplexer, _ = multiplexed(multiplex_timeout=60.0)
    with mock.patch.object(_multiplex, "_peek", wraps=_multiplex._peek) as peek:
        client = connect(port, V2_TCP4 + b"<?")
        wait_until(lambda: peek.call_count == 1)  # waiting for more
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # an RST
        wait_until(lambda: multiplexer.failures[Unmatched.CLOSED] == 1)
    assert multiplexer.failures == {Unmatched.CLOSED: 1}


def test_no_match_by_the_buffer_limit_closes_counts_and_warns_once(
    multiplexed: Any, caplog: pytest.LogCaptureFixture
) -> None:
    port, multiplexer, seen = multiplexed(multiplex_buffer_size=16)
    caplog.set_level(logging.DEBUG, logger="gevent_proxyproto")
    fds, greenlets = open_fds(), live_greenlets()
    for attempt in range(1, 4):
        # SSH speaks first from the client too, and is not configured here.
        with connect(port, V2_TCP4 + b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n") as client:
            assert read_all(client) == b""
        wait_until(lambda: multiplexer.failures[Unmatched.BUFFER_FULL] == attempt)  # noqa: B023
    assert not seen.connections
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # rate-limited: the others at DEBUG
    assert "no service matched after 16 byte(s) b'SSH-2.0-OpenSSH_'" in warnings[0]
    assert "203.0.113.7:4242" in warnings[0] and "buffer_full" in warnings[0]
    assert "Traceback" not in caplog.text
    wait_until(lambda: open_fds() <= fds and live_greenlets() <= greenlets)


def test_no_match_by_the_deadline(multiplexed: Any, caplog: pytest.LogCaptureFixture) -> None:
    port, multiplexer, _ = multiplexed(multiplex_timeout=0.2)
    with connect(port, V2_TCP4 + b"<?") as client:  # could still become "<?xml": wait
        assert read_all(client) == b""
    wait_until(lambda: multiplexer.failures == {Unmatched.TIMEOUT: 1})
    assert "no service matched after 2 byte(s) b'<?'" in caplog.text and ": timeout: " in caplog.text


@pytest.fixture
def certificate(tmp_path: Any) -> TLSConfig:
    cert, key = make_certificate(str(tmp_path))
    return TLSConfig(cert, key)


def test_tls_and_plain_protocols_share_one_proxy_port(multiplexed: Any, certificate: TLSConfig) -> None:
    seen = Seen()
    services = {
        **routes(seen),
        "https": ServiceConfig("https", seen.handler("https"), multiplex_tls=True),
    }
    port, multiplexer, _ = multiplexed(services, certificate)
    with connect(port, V2_TCP4) as raw, client_tls_context().wrap_socket(raw) as client:
        assert read_line(client) == f"https {PROXIED!r}\n".encode()
        client.sendall(HTTP_REQUEST)
        assert read_exactly(client, len(HTTP_REQUEST)) == HTTP_REQUEST
    with connect(port, V2_TCP4 + HTTP_REQUEST) as client:
        assert read_line(client) == f"http {PROXIED!r}\n".encode()
    https, http = seen.connections
    assert https["peer"] == PROXIED and https["tls"] is not None and https["rcvlowat"] == 1
    assert http["peer"] == PROXIED and http["tls"] is None
    assert multiplexer.routed == {"https": 1, "http": 1}


def test_a_failed_tls_handshake_after_the_match_is_counted(
    multiplexed: Any, certificate: TLSConfig, caplog: pytest.LogCaptureFixture
) -> None:
    services = {"https": ServiceConfig("https", "echo", multiplex_tls=True)}
    port, multiplexer, _ = multiplexed(services, certificate)
    not_a_client_hello = b"\x16\x03\x01\x00\x05\x01" + b"\x00" * 64  # the record header, then garbage
    with connect(port, V2_TCP4 + not_a_client_hello) as client:
        assert read_all(client)[:1] in (b"", b"\x15")  # closed, perhaps after a TLS alert
    wait_until(lambda: multiplexer.tls_failures == 1)
    assert multiplexer.routed == {"https": 1}
    assert "TLS handshake for https failed from 203.0.113.7:4242" in caplog.text
    assert "Traceback" not in caplog.text


def test_starttls_inside_the_matched_service_keeps_the_proxied_address(
    multiplexed: Any, certificate: TLSConfig
) -> None:
    server_context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certificate.certfile, certificate.keyfile)
    upgraded: list[Any] = []

    def starttls(sock: Any, address: Any) -> None:
        assert read_exactly(sock, len(b"STARTTLS\r\n")) == b"STARTTLS\r\n"
        sock.sendall(b"GO\n")
        with server_context.wrap_socket(sock, server_side=True) as tls:
            upgraded.append(tls.getpeername())
            tls.sendall(f"{tls.getpeername()!r}\n".encode())

    port, _, _ = multiplexed({"starttls": ServiceConfig("starttls", starttls, multiplex_pattern="STARTTLS\r\n")})
    with connect(port, V2_TCP4 + b"STARTTLS\r\n") as raw:
        assert read_line(raw) == b"GO\n"
        with client_tls_context().wrap_socket(raw) as client:
            assert read_line(client) == f"{PROXIED!r}\n".encode()
    assert upgraded == [PROXIED]


def test_multiplex_on_a_plain_port() -> None:
    seen = Seen()
    (port,) = free_ports(1)
    services = {"mux": ServiceConfig("mux", "multiplex", ports=(port,)), **routes(seen)}
    dispatcher = Dispatcher(DispatcherConfig(services=services))
    dispatcher.start()
    try:
        with connect(port, HTTP_REQUEST) as client:
            assert read_line(client) == f"http {client.getsockname()!r}\n".encode()
            assert read_exactly(client, len(HTTP_REQUEST)) == HTTP_REQUEST
        assert dispatcher.servers[port].handle.routed == {"http": 1}
    finally:
        dispatcher.stop(grace_period=1)


def test_the_example_configuration() -> None:
    from gevent_proxyproto._config import load_config

    config = load_config(str(REPO / "examples" / "multiplex.toml"))
    assert [service.name for service, _ in config.multiplex_routes()] == ["xmpp", "http", "https", "echo"]
    assert config.multiplex_buffer_size == 1024 and config.is_multiplex(config.proxy_port_mappings[15280])


def test_keys_from_toml() -> None:
    config = config_from_mapping({
        "proxy_ports": [1000],
        "proxy_port_mappings": {"1000": "multiplex"},
        "multiplex_buffer_size": 64,
        "multiplex_timeout": 2.5,
        "services": {"web": {"handler": "echo", "multiplex_pattern": "GET "}},
    })  # fmt: skip
    assert (config.multiplex_buffer_size, config.multiplex_timeout) == (64, 2.5)
    [(web, pattern)] = config.multiplex_routes()
    assert web.name == "web" and pattern.match(b"GET /") and not pattern.match(b"PUT /")


MULTIPLEX_PORT = {"proxy_ports": [1000], "proxy_port_mappings": {"1000": "multiplex"}}
WEB = {"handler": "echo", "multiplex_pattern": "GET "}
TLS = {"certfile": "cert.pem"}


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({**MULTIPLEX_PORT, "multiplex_buffer_size": 0, "services": {"web": WEB}}, "multiplex_buffer_size must be"),
        ({**MULTIPLEX_PORT, "multiplex_buffer_size": 1 << 20, "services": {"web": WEB}}, "1..16384"),
        ({**MULTIPLEX_PORT, "multiplex_buffer_size": "1k", "services": {"web": WEB}}, "multiplex_buffer_size"),
        ({**MULTIPLEX_PORT, "multiplex_timeout": 0, "services": {"web": WEB}}, "multiplex_timeout must be"),
        ({**MULTIPLEX_PORT, "services": {"web": {**WEB, "multiplex_pattern": "GET ("}}},
         "services.web.multiplex_pattern is not a regular expression"),
        ({**MULTIPLEX_PORT, "services": {"web": {**WEB, "multiplex_pattern": 7}}},
         "services.web.multiplex_pattern is not a regular expression"),
        ({**MULTIPLEX_PORT, "services": {"web": {**WEB, "multiplex_tls": "yes"}}},
         "services.web.multiplex_tls must be true or false"),
        ({**MULTIPLEX_PORT, "services": {"web": {**WEB, "multiplex_tls": True}}, "tls": {"1000": TLS}},
         "give multiplex_pattern or multiplex_tls, not both"),
        ({**MULTIPLEX_PORT, "services": {"web": {"handler": "echo"}}}, "no service has a multiplex_pattern"),
        ({**MULTIPLEX_PORT, "services": {"tls": {"handler": "echo", "multiplex_tls": True}}},
         "tls.1000 must give the certificate"),
        ({**MULTIPLEX_PORT, "services": {"web": WEB}, "tls": {"1000": TLS}},
         "uses its TLS only for services with multiplex_tls = true"),
        ({**MULTIPLEX_PORT, "services": {"web": WEB, "mux": {"handler": "multiplex", "multiplex_pattern": "x"}}},
         "services.mux: the multiplex service cannot be a multiplex route itself"),
        ({**MULTIPLEX_PORT, "services": {"web": {**WEB, "multiplex_glob": "GET*"}}},
         "services.web: unknown key(s) 'multiplex_glob'"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_mapping(mapping)
    assert message in str(raised.value)
