"""Our sending side against HAProxy 2.6's: the same addresses and options give the same header bytes.

HAProxy relays a client to a capture server (a ProxyStreamServer: a parsed header keeps its exact
bytes). ``header_for``, the code path of ``create_connection``, ``ProxyRelay`` and ``forward``, must
build those bytes from the same addresses and options; and a ProxyRelay on HAProxy's frontend address,
once HAProxy is gone, relaying a client from the same address and port, must send the same bytes.
"""

import contextlib
import socket
import struct
import time
import types
from collections.abc import Callable
from typing import Any

import gevent.server
import gevent.socket
import pytest

import gevent_proxyproto as gpp
from gevent_proxyproto._sending import header_for

from ..support import is_listening, needs_ipv6, wait_until
from .peers import Endpoint, HAProxy, exchange

pytestmark = pytest.mark.interop

V2_CRC = "send-proxy-v2 proxy-v2-options crc32c"
#: name: (frontend host, bind options, server options, header_for options)
CASES = {
    "v1-ipv4": ("127.0.0.1", "", "send-proxy", {"version": 1}),
    "v2-ipv4": ("127.0.0.1", "", "send-proxy-v2", {"version": 2}),
    "v2-ipv4-crc32c": ("127.0.0.1", "", V2_CRC, {"version": 2, "crc32c": True}),
    # An IPv6 client; HAProxy and the relay reach the capture server over IPv4.
    "v1-ipv6": ("::1", "", "send-proxy", {"version": 1}),
    "v2-ipv6": ("::1", "", "send-proxy-v2", {"version": 2}),
    "v2-ipv6-crc32c": ("::1", "", V2_CRC, {"version": 2, "crc32c": True}),
    # An IPv4 client on a dual-stack (v4v6) socket: both ends v4-mapped, TCP6 / INET6.
    "v1-dual-stack": ("::ffff:127.0.0.1", " v4v6", "send-proxy", {"version": 1}),
    "v2-dual-stack-crc32c": ("::ffff:127.0.0.1", " v4v6", V2_CRC, {"version": 2, "crc32c": True}),
}


def config(backend: Any, server_options: str, bind_options: str = "", frontend_lines: str = "") -> Callable[..., str]:
    def make(fe: Any) -> str:
        return (
            f"frontend fe\n    bind {fe.haproxy}{bind_options}\n{frontend_lines}    default_backend be\n"
            f"backend be\n    server s1 {backend.endpoint.haproxy} {server_options}\n"
        )

    return make


def connect_from(host: str, port: int, source_port: int) -> None:
    """A client on a fixed source port: reads the capture server's line, then resets (no TIME_WAIT)."""
    family = socket.AF_INET6 if ":" in host and not host.startswith("::ffff:") else socket.AF_INET
    connect_host = host.removeprefix("::ffff:")
    with gevent.socket.socket(family, socket.SOCK_STREAM) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        client.settimeout(5)
        client.bind((connect_host, source_port))
        client.connect((connect_host, port))
        assert client.recv(100) == b"recorded\n"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize(
    "case", [pytest.param(name, marks=needs_ipv6 if ":" in CASES[name][0] else ()) for name in sorted(CASES)]
)
def test_relay_headers_are_haproxys(case: str, haproxy: Callable[..., HAProxy], proxy_server: Any) -> None:
    """One client address and port, one frontend address and port: first HAProxy listens there, then the relay."""
    host, bind_options, server_options, options = CASES[case]
    headers: list[gpp.ProxyHeader] = []

    def capture(sock: Any, address: Any) -> None:
        headers.append(sock.proxy_header)
        sock.sendall(b"recorded\n")

    backend = proxy_server("127.0.0.1", handle=capture)
    proxy = haproxy(config(backend, server_options, bind_options), fe=host)
    front = proxy["fe"]
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        client_port = probe.getsockname()[1]

    connect_from(host, front.port, client_port)
    [by_haproxy] = headers
    # Our builder, from the same addresses and options: HAProxy's bytes.
    assert by_haproxy.raw == header_for(source=(host, client_port), destination=(host, front.port), **options)

    proxy.stop()
    wait_until(lambda: not is_listening(front.port))
    relay = gpp.ProxyRelay((host, front.port), backend.endpoint.address, **options)
    relay.start()
    try:
        connect_from(host, front.port, client_port)
    finally:
        relay.stop(timeout=1)
    [_, by_relay] = headers
    assert by_relay.raw == by_haproxy.raw


@needs_ipv6
@pytest.mark.parametrize("version", [1, 2], ids=["v1", "v2"])
def test_mixed_families_are_written_v4_mapped_as_haproxy_does(
    version: int, haproxy: Callable[..., HAProxy], proxy_server: Any
) -> None:
    """An IPv6 client whose destination HAProxy rewrites to IPv4: given the plain IPv4 address, we map it too."""
    backend = proxy_server("127.0.0.1")
    rewrite = "    tcp-request connection set-dst ipv4(192.0.2.1)\n"
    front = haproxy(config(backend, {1: "send-proxy", 2: "send-proxy-v2"}[version], frontend_lines=rewrite), fe="::1")["fe"]  # fmt: skip

    client_port = exchange(front.address).sockname[1]

    [seen] = backend.recorder.seen
    assert seen["header"].raw == header_for(version, ("::1", client_port), ("192.0.2.1", front.port))
    assert seen["header"].destination == ("::ffff:192.0.2.1", front.port)


def test_crc32c_first_then_the_tlvs_in_order_as_haproxy_does(
    haproxy: Callable[..., HAProxy], proxy_server: Any
) -> None:
    backend = proxy_server("127.0.0.1")
    front = haproxy(
        config(backend, "send-proxy-v2 proxy-v2-options crc32c,unique-id",
               frontend_lines="    unique-id-format %{+X}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid\n"),
        fe="127.0.0.1",
    )["fe"]  # fmt: skip

    client = exchange(front.address).sockname

    [seen] = backend.recorder.seen
    header = seen["header"]
    assert [tlv_type for tlv_type, _ in header.tlvs] == [gpp.TLVType.CRC32C, gpp.TLVType.UNIQUE_ID]
    tlvs = [(gpp.TLVType.UNIQUE_ID, header.unique_id)]
    assert header.raw == header_for(2, client, front.address, tlvs=tlvs, crc32c=True)


@pytest.mark.parametrize("crc32c", [False, True], ids=["plain", "crc32c"])
def test_no_source_is_haproxys_health_check(crc32c: bool, haproxy: Callable[..., HAProxy]) -> None:
    """``create_connection(source=None)`` sends LOCAL: HAProxy's ``check`` with ``send-proxy-v2``."""
    # A capture server that reads each header and nothing else: a PROXY server drops a check that
    # reset after its header before any handler sees it.
    headers: list[tuple[Any, gpp.ProxyHeader]] = []

    def capture(sock: Any, address: Any) -> None:
        with contextlib.suppress(gpp.ProxyProtocolError):
            headers.append((address, gpp.read_header(sock, time.monotonic() + 5)))
            sock.sendall(b"ok\n")

    server = gevent.server.StreamServer(("127.0.0.1", 0), capture)
    server.start()
    try:
        backend = types.SimpleNamespace(endpoint=Endpoint("127.0.0.1", server.address[1]))  # what config() reads
        options = V2_CRC if crc32c else "send-proxy-v2"
        haproxy(config(backend, f"{options} check inter 100ms"), fe="127.0.0.1")
        wait_until(lambda: any(header.command == gpp.Command.LOCAL for _, header in headers))
        check = next(header for _, header in headers if header.command == gpp.Command.LOCAL)
        assert check.raw == header_for(2, None, None, crc32c=crc32c)
        with gpp.create_connection(backend.endpoint.address, source=None, crc32c=crc32c, timeout=5) as ours:
            own = ours.getsockname()
            ours.recv(100)  # the capture's line: it has recorded the connection
        [mine] = [header for address, header in headers if address == own]
        assert mine.raw == check.raw
    finally:
        server.stop(timeout=1)
