"""nginx 1.22 stream (``proxy_protocol on;``) in front of ProxyStreamServer: v1 lines, and a relay's
mixed-family line."""

import logging
import socket
from collections.abc import Callable
from typing import Any

import gevent.socket
import pytest

import gevent_proxyproto as gpp

from ..support import needs_ipv6, read_all, read_line, wait_until
from .peers import Nginx, exchange, expected_address

pytestmark = pytest.mark.interop

LOOPBACKS = [pytest.param("127.0.0.1", id="ipv4"), pytest.param("::1", id="ipv6", marks=needs_ipv6)]


@pytest.mark.parametrize("backend_host", LOOPBACKS)
@pytest.mark.parametrize("client_host", LOOPBACKS)
def test_stream_proxy_protocol_v1(
    client_host: str, backend_host: str, nginx: Callable[..., Nginx], proxy_server: Any
) -> None:
    backend = proxy_server(backend_host)
    proxy = nginx(
        lambda fe: [f"listen {fe.nginx}; proxy_pass {backend.endpoint.nginx}; proxy_protocol on;"], fe=client_host
    )
    front = proxy["fe"]

    seen_by_client = exchange(front.address)

    client = seen_by_client.sockname[:2]
    kind = "TCP6" if ":" in client_host else "TCP4"
    [seen] = backend.recorder.seen
    assert seen["header"].raw == f"PROXY {kind} {client[0]} {front.host} {client[1]} {front.port}\r\n".encode()
    assert seen["address"] == seen["peer"] == expected_address(*client)
    assert seen["sock"] == expected_address(*front.address)
    assert seen["real_peer"][0] == backend_host
    assert seen_by_client.line == repr(expected_address(*client)).encode() + b"\n"
    assert seen_by_client.echo == b"hello through the proxy\n"


@pytest.mark.parametrize("allow_v4_in_tcp6", [False, True], ids=["default", "allow_v4_in_tcp6"])
def test_relay_mixed_family_line(
    allow_v4_in_tcp6: bool, nginx: Callable[..., Nginx], proxy_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An nginx relay: a ``proxy_protocol`` listener with realip in front, ``proxy_protocol on`` behind.

    nginx takes the client's IPv6 address from the incoming header but writes its own IPv4 local address
    beside it, in a ``TCP6`` line: ``PROXY TCP6 2001:db8::1 127.0.0.1 4242 <port>``. The spec says
    invalid (BAD_HDR); ``allow_v4_in_tcp6`` takes it, the IPv4 address v4-mapped.
    """
    backend = proxy_server(allow_v4_in_tcp6=allow_v4_in_tcp6)
    proxy = nginx(
        lambda fe: [
            f"listen {fe.nginx} proxy_protocol; set_real_ip_from 127.0.0.1;"
            f" proxy_pass {backend.endpoint.nginx}; proxy_protocol on;"
        ],
        fe="127.0.0.1",
    )
    front = proxy["fe"]
    # This test is the proxy in front of nginx: its header names an IPv6 client.
    upstream_header = b"PROXY TCP6 2001:db8::1 2001:db8::2 4242 443\r\n"
    relayed = f"PROXY TCP6 2001:db8::1 127.0.0.1 4242 {front.port}\r\n".encode()

    with gevent.socket.create_connection(front.address, timeout=5) as client:
        client.sendall(upstream_header + b"hello\n")
        if not allow_v4_in_tcp6:
            assert read_all(client) == b""  # we refused the relayed header; nginx closes its client
            wait_until(lambda: backend.server.failures[gpp.Reason.BAD_HDR] == 1)
            assert backend.recorder.seen == []
            [refusal] = [record for record in caplog.records if "refused" in record.getMessage()]
            assert refusal.levelno == logging.WARNING
            assert "BAD_HDR" in refusal.getMessage() and "'127.0.0.1'" in refusal.getMessage()
            return
        line = read_line(client)
        assert read_line(client) == b"hello\n"
    peer = ("2001:db8::1", 4242, 0, 0)
    assert line == repr(peer).encode() + b"\n"
    [seen] = backend.recorder.seen
    assert seen["header"].raw == relayed
    assert seen["header"].family == socket.AF_INET6
    assert seen["address"] == seen["peer"] == peer
    assert seen["sock"] == ("::ffff:127.0.0.1", front.port, 0, 0)
    assert backend.server.failures == {}
