"""HAProxy ``send-proxy-v2`` in front of the ``multiplex`` service: examples/multiplex.toml, for real.

One PROXY port, several protocols routed by their first bytes: curl over HTTP and HTTPS, a raw
XMPP stream opening, an echo. Each reaches its service with the client's own address.
"""

import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import gevent
import gevent.socket
import pytest

from gevent_proxyproto import _multiplex
from gevent_proxyproto._config import TLSConfig, load_config
from gevent_proxyproto._dispatch import Dispatcher
from gevent_proxyproto._multiplex import Multiplexer, Unmatched

from ..conftest import REPO
from ..support import needs_ipv6, read_all, wait_until
from .peers import Certificates, Endpoint, HAProxy, pick_endpoints, run
from .test_haproxy import relay

pytestmark = pytest.mark.interop

LOOPBACKS = [pytest.param("127.0.0.1", id="ipv4"), pytest.param("::1", id="ipv6", marks=needs_ipv6)]
XMPP_OPENING = (
    b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
)


@dataclasses.dataclass
class Multiplexed:
    endpoint: Endpoint
    multiplexer: Multiplexer


@pytest.fixture
def example(certificates: Certificates) -> Iterator[Multiplexed]:
    """examples/multiplex.toml served in-process, on a free port, with the test CA's server certificate."""
    config = load_config(str(REPO / "examples" / "multiplex.toml"))
    endpoint = pick_endpoints({"multiplex": "127.0.0.1"})["multiplex"]
    config = dataclasses.replace(
        config,
        proxy_ports=(endpoint.port,),
        proxy_port_mappings={endpoint.port: "multiplex"},
        tls={endpoint.port: TLSConfig(certificates.server_cert, certificates.server_key)},
    )
    dispatcher = Dispatcher(config)
    dispatcher.start()
    try:
        yield Multiplexed(endpoint, dispatcher.servers[endpoint.port].handle)
    finally:
        dispatcher.stop(grace_period=1)


@pytest.fixture
def front(example: Multiplexed, haproxy: Callable[..., HAProxy]) -> Callable[[str], Endpoint]:
    """HAProxy (mode tcp, send-proxy-v2, health checks) listening on a loopback host, in front of the example."""

    def start(host: str) -> Endpoint:
        return haproxy(relay(example.endpoint, "send-proxy-v2 check inter 200ms"), fe=host)["fe"]

    return start


def fetch(curl_path: str, url: str, *options: str) -> tuple[str, str]:
    """The body, and ``host:port`` of curl's own end of the connection (what HAProxy calls the client)."""
    # -q first: no ~/.curlrc; --noproxy: no proxy from the environment.
    argv = [curl_path, "-q", "-sS", "--noproxy", "*", "--max-time", "5", *options,
            "-w", r"\n%{local_ip} %{local_port}", url]  # fmt: skip
    result = run(argv)  # the hub, and so our server, keeps running meanwhile
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    body, local = result.stdout.decode().rsplit("\n", 1)
    host, port = local.split()
    return body, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe(address: Any) -> str:
    return f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"


def xmpp_answer(sock: Any) -> bytes:
    answer = b""
    while not answer.endswith(b"</stream:stream>"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer


@pytest.mark.parametrize("host", LOOPBACKS)
def test_one_proxy_port_three_protocols(
    host: str, front: Any, example: Multiplexed, curl: str, certificates: Certificates
) -> None:
    """curl over HTTP and HTTPS and an XMPP opening: each reaches its service with the client's own address."""
    fe = front(host)
    url_host = f"[{host}]" if ":" in host else host

    body, client = fetch(curl, f"http://{url_host}:{fe.port}/")
    assert body == f"http: you are {client}\n"

    body, client = fetch(curl, f"https://{url_host}:{fe.port}/", "--cacert", certificates.ca)
    assert body == f"https: you are {client}\n"

    with gevent.socket.create_connection(fe.address, timeout=5) as sock:
        sock.sendall(XMPP_OPENING)
        answer = xmpp_answer(sock)
        assert answer.startswith(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client'")
        assert f"who you are: {describe(sock.getsockname())}</text>".encode() in answer

    assert example.multiplexer.routed == {"http": 1, "https": 1, "xmpp": 1}
    assert example.multiplexer.tls_failures == 0


def test_echo_gets_back_exactly_the_bytes_sent(front: Any, example: Multiplexed) -> None:
    fe = front("127.0.0.1")
    payload = b"ECHO " + bytes(range(256)) * 64  # 16 KiB, far over multiplex_buffer_size
    with gevent.socket.create_connection(fe.address, timeout=5) as sock:
        sock.sendall(payload)
        echoed = b""
        while len(echoed) < len(payload):
            chunk = sock.recv(65536)
            assert chunk, "closed early"
            echoed += chunk
    assert echoed == payload
    assert example.multiplexer.routed == {"echo": 1}


def test_an_xmpp_opening_in_pieces(front: Any, example: Multiplexed) -> None:
    """``<?x``, then the rest once the server has seen it: still routed, with the client's address."""
    fe = front("127.0.0.1")
    peeked: list[bytes | None] = []
    peek = _multiplex._peek

    def recording_peek(raw: Any, size: int) -> bytes | None:
        data = peek(raw, size)
        peeked.append(data)
        return data

    with mock.patch.object(_multiplex, "_peek", recording_peek):
        with gevent.socket.create_connection(fe.address, timeout=5) as sock:
            sock.sendall(XMPP_OPENING[:3])
            wait_until(lambda: b"<?x" in peeked)  # through HAProxy, seen, nothing matched yet
            sock.sendall(XMPP_OPENING[3:])
            assert f"who you are: {describe(sock.getsockname())}</text>".encode() in xmpp_answer(sock)
    assert peeked.count(b"<?x") == 1  # looked at once, then waited
    assert example.multiplexer.routed == {"xmpp": 1}


def test_no_match_is_closed_counted_and_logged(
    front: Any, example: Multiplexed, caplog: pytest.LogCaptureFixture
) -> None:
    fe = front("127.0.0.1")
    caplog.set_level(logging.INFO, logger="gevent_proxyproto")
    with gevent.socket.create_connection(fe.address, timeout=5) as sock:
        own = describe(sock.getsockname())
        sock.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n" + b"\x00" * 2000)  # no SSH service here
        assert read_all(sock) == b""
    multiplexer = example.multiplexer
    wait_until(lambda: multiplexer.failures[Unmatched.BUFFER_FULL] == 1)
    assert not multiplexer.routed
    [line] = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert "no service matched after 1024 byte(s) b'SSH-2.0-OpenSSH_9.2p1\\r\\n" in line
    assert f"from {own} on " in line and ": buffer_full: " in line  # the shape of every refusal line
