"""HAProxy 2.6 in front of ProxyStreamServer: v1, v2, TLVs, TLS on both sides, health checks."""

import logging
import re
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import gevent.ssl
import pytest

import gevent_proxyproto as gpp

from ..support import needs_ipv6, wait_until
from .conftest import Backend
from .peers import Certificates, Endpoint, HAProxy, exchange, expected_address

pytestmark = pytest.mark.interop

LOOPBACKS = [pytest.param("127.0.0.1", id="ipv4"), pytest.param("::1", id="ipv6", marks=needs_ipv6)]
SEND_PROXY = {1: "send-proxy", 2: "send-proxy-v2"}
#: REAL-PEERS.md's format; ``+X`` writes every field in hex.
UNIQUE_ID_FORMAT = r"%{+X}o\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid"
TLVS = gpp.TLVType
SUB = gpp.SSLSubType


def relay(target: Endpoint, options: str, frontend_lines: str = "") -> Callable[..., str]:
    """A config: one frontend ``fe``, one backend whose server is ``target`` (any PROXY server) with ``options``."""

    def config(fe: Any) -> str:
        return (
            f"frontend fe\n    bind {fe.haproxy}\n{frontend_lines}    default_backend be\n"
            f"backend be\n    server s1 {target.haproxy} {options}\n"
        )

    return config


def wire(version: int, source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The exact header HAProxy sends for a plain TCP connection (no TLV)."""
    if version == 2:
        return gpp.build_v2(source=source, destination=destination)
    kind = "TCP6" if ":" in source[0] or ":" in destination[0] else "TCP4"
    return f"PROXY {kind} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


@pytest.mark.parametrize("backend_host", LOOPBACKS)
@pytest.mark.parametrize("client_host", LOOPBACKS)
@pytest.mark.parametrize("version", [1, 2], ids=["v1", "v2"])
def test_client_address_reaches_the_handler(
    version: int, client_host: str, backend_host: str, haproxy: Callable[..., HAProxy], proxy_server: Any
) -> None:
    """Client and frontend over one family, HAProxy to us over either: the header has the client's."""
    backend = proxy_server(backend_host)
    proxy = haproxy(relay(backend.endpoint, SEND_PROXY[version]), fe=client_host)
    front = proxy["fe"]

    seen_by_client = exchange(front.address)

    client = seen_by_client.sockname[:2]
    peer, local = expected_address(*client), expected_address(*front.address)
    assert seen_by_client.line == repr(peer).encode() + b"\n"
    assert seen_by_client.echo == b"hello through the proxy\n"
    [seen] = backend.recorder.seen
    assert seen["address"] == seen["peer"] == peer
    assert seen["sock"] == local
    assert seen["real_peer"][0] == backend_host  # HAProxy's own connection to us
    assert seen["header"].raw == wire(version, client, front.address)
    assert seen["header"].version == version and seen["header"].tlvs == ()


MIXED = {
    # An IPv6 client, the destination rewritten to IPv4: HAProxy writes it v4-mapped.
    "ipv6-client-ipv4-destination": ("::1", "    tcp-request connection set-dst ipv4(192.0.2.1)\n"),
    # An IPv4 client whose source is rewritten to IPv6: the frontend address goes v4-mapped.
    "ipv4-frontend-ipv6-source": ("127.0.0.1", "    tcp-request connection set-src ipv6(2001:db8::1)\n"),
}


@needs_ipv6
@pytest.mark.parametrize("case", sorted(MIXED))
@pytest.mark.parametrize("version", [1, 2], ids=["v1", "v2"])
def test_mixed_families_arrive_v4_mapped(
    version: int, case: str, haproxy: Callable[..., HAProxy], proxy_server: Any
) -> None:
    """Source and destination of different families: v1 ``TCP6`` / v2 INET6, the IPv4 side v4-mapped."""
    client_host, rewrite = MIXED[case]
    backend = proxy_server("127.0.0.1")  # HAProxy reaches us over IPv4 in both cases
    proxy = haproxy(relay(backend.endpoint, SEND_PROXY[version], rewrite), fe=client_host)
    front = proxy["fe"]

    seen_by_client = exchange(front.address)

    client_port = seen_by_client.sockname[1]
    if case == "ipv6-client-ipv4-destination":
        source, destination = ("::1", client_port), ("::ffff:192.0.2.1", front.port)
    else:
        source, destination = ("2001:db8::1", client_port), ("::ffff:127.0.0.1", front.port)
    [seen] = backend.recorder.seen
    assert seen["header"].raw == wire(version, source, destination)
    assert seen["header"].family == socket.AF_INET6
    assert seen["address"] == (*source, 0, 0)
    assert seen["sock"] == (*destination, 0, 0)
    assert seen_by_client.line == repr((*source, 0, 0)).encode() + b"\n"
    assert seen_by_client.echo == b"hello through the proxy\n"


def test_v2_crc32c_and_unique_id(haproxy: Callable[..., HAProxy], proxy_server: Any) -> None:
    """``proxy-v2-options crc32c,authority,unique-id`` on a plaintext frontend."""
    backend = proxy_server()
    proxy = haproxy(
        relay(
            backend.endpoint,
            "send-proxy-v2 proxy-v2-options crc32c,authority,unique-id",
            f"    unique-id-format {UNIQUE_ID_FORMAT}\n",
        ),
        fe="127.0.0.1",
    )
    front = proxy["fe"]
    started = int(time.time())

    seen_by_client = exchange(front.address)

    finished = int(time.time())
    client = seen_by_client.sockname[:2]
    [seen] = backend.recorder.seen
    header = seen["header"]
    assert seen["address"] == client
    # No AUTHORITY: HAProxy sends it only for a TLS client that sent SNI. CRC32C comes first.
    assert [tlv_type for tlv_type, _ in header.tlvs] == [TLVS.CRC32C, TLVS.UNIQUE_ID]
    assert header.authority is None

    # The checksum was verified by our parser; check it independently, and that a changed byte fails.
    raw = header.raw
    crc_offset = 16 + 12 + 3  # preamble, INET addresses, the first TLV's type and length
    zeroed = raw[:crc_offset] + bytes(4) + raw[crc_offset + 4 :]
    assert header.crc32c == gpp.crc32c(zeroed) != 0
    tampered = bytearray(raw)
    tampered[-1] ^= 0x01  # the unique id's last byte
    with pytest.raises(gpp.InvalidHeader) as refused:
        gpp.parse(bytes(tampered))
    assert refused.value.reason == gpp.Reason.CRC

    # %{+X}o %ci:%cp_%fi:%fp_%Ts_%rt:%pid, every field in hex.
    def ip_hex(host: str) -> str:
        return "".join(f"{int(part):02X}" for part in host.split("."))

    pattern = (
        f"{ip_hex(client[0])}:{client[1]:04X}_{ip_hex(front.host)}:{front.port:04X}"
        f"_(?P<ts>[0-9A-F]{{8}})_(?P<rt>[0-9A-F]{{4,}}):{proxy.pid:04X}"
    )
    unique_id = header.unique_id.decode("ascii")
    match = re.fullmatch(pattern, unique_id)
    assert match, f"{unique_id!r} does not match {pattern!r}"
    assert started <= int(match["ts"], 16) <= finished


@pytest.fixture
def tls_client(certificates: Certificates) -> Callable[..., ssl.SSLContext]:
    def make(maximum_version: ssl.TLSVersion, with_certificate: bool) -> ssl.SSLContext:
        context: ssl.SSLContext = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(certificates.ca)
        context.maximum_version = maximum_version
        context.set_alpn_protocols(["http/1.1"])
        if with_certificate:
            context.load_cert_chain(certificates.client_cert, certificates.client_key)
        return context

    return make


@pytest.mark.parametrize("with_certificate", [True, False], ids=["client-cert", "no-client-cert"])
@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
def test_tls_frontend_details_match_the_client_session(
    tls_version: ssl.TLSVersion,
    with_certificate: bool,
    haproxy: Callable[..., HAProxy],
    proxy_server: Any,
    certificates: Certificates,
    tls_client: Callable[..., ssl.SSLContext],
) -> None:
    """A TLS frontend with SNI, ALPN and an optional client certificate: the SSL TLV tells the truth."""
    backend = proxy_server()
    options = "send-proxy-v2 proxy-v2-options ssl,cert-cn,ssl-cipher,cert-sig,cert-key,authority,crc32c"

    def config(fe: Any) -> str:
        return (
            "frontend fe\n"
            f"    bind {fe.haproxy} ssl crt {certificates.server_pem} ca-file {certificates.ca}"
            " verify optional alpn h2,http/1.1\n"
            "    default_backend be\n"
            f"backend be\n    server s1 {backend.endpoint.haproxy} {options}\n"
        )

    proxy = haproxy(config, fe="127.0.0.1")
    context = tls_client(tls_version, with_certificate)

    seen_by_client = exchange(proxy["fe"].address, tls_context=context, server_hostname="app.example.test")

    [seen] = backend.recorder.seen
    header = seen["header"]
    assert seen["address"] == seen_by_client.sockname[:2]
    assert seen_by_client.line == repr(seen_by_client.sockname[:2]).encode() + b"\n"
    assert seen_by_client.echo == b"hello through the proxy\n"
    assert (
        seen_by_client.tls_version
        == {ssl.TLSVersion.TLSv1_3: "TLSv1.3", ssl.TLSVersion.TLSv1_2: "TLSv1.2"}[tls_version]
    )
    # HAProxy's order (REAL-PEERS.md), and each value as the client negotiated it.
    assert [tlv_type for tlv_type, _ in header.tlvs] == [TLVS.CRC32C, TLVS.ALPN, TLVS.AUTHORITY, TLVS.SSL]
    assert seen_by_client.alpn == "http/1.1" and header.alpn == seen_by_client.alpn.encode()
    assert header.authority == "app.example.test"
    info = header.ssl
    assert info is not None
    assert info.version == seen_by_client.tls_version
    assert info.cipher == seen_by_client.cipher
    # cert-sig and cert-key describe HAProxy's own certificate, not the client's.
    assert info.key_alg == Certificates.SERVER_KEY_ALG
    assert info.sig_alg == Certificates.SERVER_SIG_ALG
    if with_certificate:
        assert info.client == gpp.SSLClient.SSL | gpp.SSLClient.CERT_CONN | gpp.SSLClient.CERT_SESS
        assert info.verify == 0 and info.verified
        assert info.cn == Certificates.CLIENT_CN
        sub_tlvs = [SUB.VERSION, SUB.CN, SUB.KEY_ALG, SUB.SIG_ALG, SUB.CIPHER]
    else:
        # verify is 0 without a certificate too: only the flags tell (SPEC.md section 4).
        assert info.client == gpp.SSLClient.SSL
        assert info.verify == 0 and not info.verified
        assert info.cn is None
        sub_tlvs = [SUB.VERSION, SUB.KEY_ALG, SUB.SIG_ALG, SUB.CIPHER]
    assert [sub_type for sub_type, _ in info.tlvs] == sub_tlvs


@pytest.mark.parametrize("version", [1, 2], ids=["v1", "v2"])
def test_tls_to_our_server_after_the_header(
    version: int, haproxy: Callable[..., HAProxy], proxy_server: Any, certificates: Certificates
) -> None:
    """A plain client, HAProxy re-encrypting towards us: header in clear, then HAProxy's ClientHello."""
    context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates.server_cert, certificates.server_key)
    tls_seen: list[Any] = []
    backend: Backend | None = None

    def handle(sock: Any, address: Any) -> None:
        tls_seen.append((sock.version(), sock.cipher()))
        assert backend is not None
        backend.recorder(sock, address)

    backend = proxy_server(handle=handle, ssl_context=context)
    # HAProxy checks our certificate against the CA.
    proxy = haproxy(
        relay(backend.endpoint, f"{SEND_PROXY[version]} ssl verify required ca-file {certificates.ca}"), fe="127.0.0.1"
    )

    seen_by_client = exchange(proxy["fe"].address)

    client = seen_by_client.sockname[:2]
    assert seen_by_client.line == repr(client).encode() + b"\n"
    assert seen_by_client.echo == b"hello through the proxy\n"
    [seen] = backend.recorder.seen
    assert seen["address"] == seen["peer"] == client
    assert seen["header"].version == version
    assert seen["header"].source == client
    [(tls_version, cipher)] = tls_seen
    assert tls_version in ("TLSv1.2", "TLSv1.3") and cipher is not None
    assert backend.server.tls_failures == 0 and backend.server.failures == {}


CHECKS = {
    # send-proxy-v2 checks: the 16-byte LOCAL header, then a reset.
    "v2-local": "send-proxy-v2 check inter 100ms",
    # v1: a line naming the check's own socket, then a reset.
    "v1-check-send-proxy": "send-proxy check check-send-proxy inter 100ms",
}
LOCAL = bytes.fromhex("0d0a0d0a000d0a515549540a20000000")


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_health_checks_are_quiet_and_harmless(
    check: str,
    haproxy: Callable[..., HAProxy],
    proxy_server: Any,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG, logger="gevent_proxyproto")
    backend = proxy_server()
    proxy = haproxy(relay(backend.endpoint, CHECKS[check]), fe="127.0.0.1")
    records = backend.recorder.seen

    def is_check(seen: dict[str, Any]) -> bool:
        header = seen["header"]
        if check == "v2-local":
            return bool(header.raw == LOCAL and header.command == gpp.Command.LOCAL)
        # check-send-proxy: TCP4 from the check's own socket to our listener
        return bool(header.version == 1 and header.destination == backend.endpoint.address)

    def checks_seen() -> int:
        # A check that reset before its header was handed over ends with one
        # debug line and never reaches the handler; the others reach it.
        dropped = sum(1 for r in caplog.records if r.getMessage().startswith("health check from"))
        return dropped + sum(map(is_check, records))

    wait_until(lambda: checks_seen() >= 3)
    seen_by_client = exchange(proxy["fe"].address)  # still serving clients between checks
    wait_until(lambda: checks_seen() >= 5)  # and checks after the client

    client = seen_by_client.sockname[:2]
    assert seen_by_client.line == repr(client).encode() + b"\n"
    assert seen_by_client.echo == b"hello through the proxy\n"
    [ours] = [seen for seen in records if seen["header"].source == client]
    assert ours["address"] == client
    assert all(is_check(seen) for seen in records if seen is not ours)
    for seen in records:
        if check == "v1-check-send-proxy" and seen is not ours:
            # The check's own socket: the handler sees the same address as the real peer.
            assert seen["address"] == seen["header"].source
            assert seen.get("real_peer") in (None, seen["address"])  # None: already reset
    # HAProxy saw a healthy server all along.
    stat = proxy.show_stat()[("be", "s1")]
    assert (stat["status"], stat["check_status"]) == ("UP", "L4OK"), stat
    assert int(stat["chkfail"]) == 0 and int(stat["chkdown"]) == 0, stat
    # A reset check may end before or after its header is read: EMPTY/ABORT at DEBUG, nothing else.
    assert set(backend.server.failures) <= {gpp.Reason.EMPTY, gpp.Reason.ABORT}
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []
    assert "Traceback" not in capfd.readouterr().err
