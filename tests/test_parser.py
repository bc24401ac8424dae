"""parse(), from hand-written byte tables (SPEC.md sections 2-4 and 7).

Every valid header is fed whole, one byte at a time, split at every offset, by a
reader that takes exactly ``needed`` bytes, and with bytes after it. Invalid
headers carry the reason code the spec names. Properties hold that malformed
input raises only InvalidHeader or IncompleteHeader, and that verdicts never
change as more bytes arrive. The value objects are tested in test_model.py,
the checksum in test_crc32c.py.
"""

import itertools
import socket
from typing import Any
from unittest import mock

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import gevent_proxyproto as gpp
import gevent_proxyproto._v2
from gevent_proxyproto import _v1
from gevent_proxyproto._crc32c import crc32c_pure
from gevent_proxyproto._wire import V1_MAX_LENGTH, V1_MIN_LENGTH

from . import wire
from .wire import LOCAL, PROXY, SIG, inet, inet6, seal, ssl_value, tlv, unix, v2

AF_INET, AF_INET6, AF_UNIX, AF_UNSPEC = socket.AF_INET, socket.AF_INET6, socket.AF_UNIX, socket.AF_UNSPEC
STREAM, DGRAM = socket.SOCK_STREAM, socket.SOCK_DGRAM
Reason = gpp.Reason
TLVType = gpp.TLVType

#: Application bytes a client may send right after the header.
TRAILING = b"GET / HTTP/1.1\r\n\r\n\x00\r\n"


def ok(case_id: str, data: bytes, expected: gpp.ProxyHeader, **options: bool) -> Any:
    """A valid header: ``data`` is exactly the header, ``expected`` what parse() reports."""
    return pytest.param(data, expected, options, id=case_id)


def bad(case_id: str, data: bytes, reason: Reason, **options: bool) -> Any:
    """Bytes that can never be a header: parse() raises InvalidHeader with ``reason``."""
    return pytest.param(data, reason, options, id=case_id)


def header(
    version: int,
    command: gpp.Command,
    family: socket.AddressFamily,
    protocol: socket.SocketKind | None,
    source: gpp.Address | None = None,
    destination: gpp.Address | None = None,
    tlvs: tuple[tuple[int, bytes], ...] = (),
) -> gpp.ProxyHeader:
    return gpp.ProxyHeader(version, command, family, protocol, source, destination, tlvs)


def sized(length: int, data: bytes) -> bytes:
    """``data``, checked to be ``length`` bytes: the edge cases below depend on it."""
    assert len(data) == length, (length, len(data), data)
    return data


def outcome(data: bytes, **options: bool) -> tuple[Any, ...]:
    """parse()'s verdict as a tuple; any exception but Incomplete/InvalidHeader propagates."""
    try:
        result, length = gpp.parse(data, **options)
    except gpp.IncompleteHeader as incomplete:
        assert incomplete.needed >= 1 and incomplete.reason is Reason.TRUNCATED
        return ("incomplete", incomplete.needed)
    except gpp.InvalidHeader as invalid:
        assert isinstance(invalid.reason, Reason) and invalid.reason is not Reason.TRUNCATED
        assert isinstance(invalid.message, str) and invalid.message
        return ("invalid", invalid.reason)
    assert 0 < length <= len(data) and result.raw == bytes(data[:length])
    return ("ok", result, length)


# Version 1 (SPEC.md section 2) -------------------------------------------------------------------

PROXY_CMD = gpp.Command.PROXY
MAX_IPV6 = "ffff:" * 7 + "ffff"
# inet_pton accepts longer IPv6 text than inet_ntop writes: 45 and 36 characters.
LONG_IPV6_45 = "0000:0000:0000:0000:0000:ffff:255.255.255.255"
LONG_IPV6_36 = "000:0000:0000:0000:0000:ffff:1.2.3.4"


def tcp4(case_id: str, line: bytes, source: tuple[str, int], destination: tuple[str, int], **options: bool) -> Any:
    return ok(case_id, line, header(1, PROXY_CMD, AF_INET, STREAM, source, destination), **options)


def tcp6(case_id: str, line: bytes, source: tuple[str, int], destination: tuple[str, int], **options: bool) -> Any:
    return ok(case_id, line, header(1, PROXY_CMD, AF_INET6, STREAM, source, destination), **options)


def unknown(case_id: str, line: bytes) -> Any:
    return ok(case_id, line, header(1, PROXY_CMD, AF_UNSPEC, None))


V1_VALID = [
    tcp4("tcp4", b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", ("192.168.0.1", 56324), ("192.168.0.11", 443)),
    tcp4(
        "tcp4-extremes", b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", ("0.0.0.0", 0), ("255.255.255.255", 65535)
    ),
    tcp4(
        "tcp4-longest-56",
        sized(56, b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"),
        ("255.255.255.255", 65535),
        ("255.255.255.255", 65535),
    ),
    tcp4(
        "tcp4-unaffected-by-v4-in-tcp6-switch",
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n",
        ("10.0.0.1", 1),
        ("10.0.0.2", 2),
        allow_v4_in_tcp6=True,
    ),
    tcp6("tcp6", b"PROXY TCP6 2001:db8::1 2001:db8::2 4242 443\r\n", ("2001:db8::1", 4242), ("2001:db8::2", 443)),
    tcp6(
        "tcp6-reported-canonical",
        b"PROXY TCP6 2001:DB8::A 2001:0db8:0:0::b 1 2\r\n",
        ("2001:db8::a", 1),
        ("2001:db8::b", 2),
    ),
    tcp6(
        "tcp6-v4-mapped",
        b"PROXY TCP6 ::ffff:192.0.2.1 ::ffff:198.51.100.2 56324 443\r\n",
        ("::ffff:192.0.2.1", 56324),
        ("::ffff:198.51.100.2", 443),
    ),
    tcp6("tcp6-unspecified-and-loopback", b"PROXY TCP6 :: ::1 0 0\r\n", ("::", 0), ("::1", 0)),
    tcp6(
        "tcp6-longest-canonical-104",
        sized(104, f"PROXY TCP6 {MAX_IPV6} {MAX_IPV6} 65535 65535\r\n".encode()),
        (MAX_IPV6, 65535),
        (MAX_IPV6, 65535),
    ),
    tcp6(
        "tcp6-107-bytes-at-the-limit",
        sized(107, f"PROXY TCP6 {LONG_IPV6_45} {LONG_IPV6_36} 65535 65535\r\n".encode()),
        ("::ffff:255.255.255.255", 65535),
        ("::ffff:1.2.3.4", 65535),
    ),
    tcp6(
        "v4-in-tcp6-allowed",
        b"PROXY TCP6 192.0.2.1 2001:db8::2 56324 443\r\n",
        ("::ffff:192.0.2.1", 56324),
        ("2001:db8::2", 443),
        allow_v4_in_tcp6=True,
    ),
    tcp6(
        "v4-in-tcp6-allowed-both",
        b"PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n",
        ("::ffff:192.0.2.1", 1),
        ("::ffff:198.51.100.2", 2),
        allow_v4_in_tcp6=True,
    ),
    unknown("unknown-short-15", sized(15, b"PROXY UNKNOWN\r\n")),
    unknown("unknown-with-addresses", b"PROXY UNKNOWN 192.0.2.1 198.51.100.2 56324 443\r\n"),
    unknown("unknown-empty-rest", b"PROXY UNKNOWN \r\n"),
    unknown("unknown-rest-is-ignored", b"PROXY UNKNOWN \x00\xff  not even addresses\r\n"),
    unknown("unknown-longest-107", sized(107, f"PROXY UNKNOWN {MAX_IPV6} {MAX_IPV6} 65535 65535\r\n".encode())),
    unknown("unknown-any-107", sized(107, b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n")),
]

GOOD_TCP4 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443"
GOOD_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443"


def bad_v1(case_id: str, line: bytes, **options: bool) -> Any:
    return bad(case_id, line, Reason.BAD_HDR, **options)


V1_INVALID = [
    bad("lowercase-signature", GOOD_TCP4.lower() + b"\r\n", Reason.NOT_HDR),
    bad("signature-without-space", b"PROXY\r\n", Reason.NOT_HDR),
    bad_v1("lowercase-protocol", b"PROXY tcp4 192.0.2.1 198.51.100.2 56324 443\r\n"),
    bad_v1("protocol-tcp5", b"PROXY TCP5 192.0.2.1 198.51.100.2 56324 443\r\n"),
    bad_v1("unknownx", b"PROXY UNKNOWNX\r\n"),
    bad_v1("no-protocol", b"PROXY \r\n"),
    bad_v1("protocol-only", b"PROXY TCP4\r\n"),
    bad_v1("two-spaces-after-proxy", b"PROXY  TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"),
    bad_v1("two-spaces-between-fields", b"PROXY TCP4 192.0.2.1  198.51.100.2 56324 443\r\n"),
    bad_v1("space-before-crlf", GOOD_TCP4 + b" \r\n"),
    bad_v1("tab-separator", b"PROXY TCP4 192.0.2.1\t198.51.100.2 56324 443\r\n"),
    bad_v1("missing-port", b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"),
    bad_v1("extra-field", GOOD_TCP4 + b" 80\r\n"),
    bad_v1("octet-leading-zero", b"PROXY TCP4 192.0.2.01 198.51.100.2 56324 443\r\n"),
    bad_v1("octet-double-zero", b"PROXY TCP4 192.0.2.00 198.51.100.2 56324 443\r\n"),
    bad_v1("octet-256", b"PROXY TCP4 192.0.2.256 198.51.100.2 56324 443\r\n"),
    bad_v1("three-octets", b"PROXY TCP4 192.0.2 198.51.100.2 56324 443\r\n"),
    bad_v1("five-octets", b"PROXY TCP4 192.0.2.1.5 198.51.100.2 56324 443\r\n"),
    bad_v1("hex-octet", b"PROXY TCP4 0xc0.0.2.1 198.51.100.2 56324 443\r\n"),
    bad_v1("port-leading-zero", b"PROXY TCP4 192.0.2.1 198.51.100.2 056324 443\r\n"),
    bad_v1("port-double-zero", b"PROXY TCP4 192.0.2.1 198.51.100.2 00 443\r\n"),
    bad_v1("port-65536", b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n"),
    bad_v1("port-99999", b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 99999\r\n"),
    bad_v1("port-six-digits", b"PROXY TCP4 192.0.2.1 198.51.100.2 100000 443\r\n"),
    bad_v1("port-plus-sign", b"PROXY TCP4 192.0.2.1 198.51.100.2 +56324 443\r\n"),
    bad_v1("port-minus-sign", b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 443\r\n"),
    bad_v1("port-underscore", b"PROXY TCP4 192.0.2.1 198.51.100.2 56_324 443\r\n"),
    bad_v1("port-non-ascii-digits", "PROXY TCP4 192.0.2.1 198.51.100.2 ٥٦ 443\r\n".encode()),
    bad_v1("nul-in-line", b"PROXY TCP4 192.0.2.1\x00198.51.100.2 56324 443\r\n"),
    bad_v1("ipv6-in-tcp4", b"PROXY TCP4 2001:db8::1 198.51.100.2 56324 443\r\n"),
    bad_v1("ipv4-in-tcp6", b"PROXY TCP6 192.0.2.1 2001:db8::2 56324 443\r\n"),
    bad_v1("ipv4-in-tcp6-both", b"PROXY TCP6 192.0.2.1 198.51.100.2 56324 443\r\n"),
    bad_v1("zone-id", b"PROXY TCP6 fe80::1%eth0 2001:db8::2 56324 443\r\n"),
    bad_v1("zone-id-with-switch", b"PROXY TCP6 fe80::1%eth0 2001:db8::2 56324 443\r\n", allow_v4_in_tcp6=True),
    bad_v1("bracketed-ipv6", b"PROXY TCP6 [2001:db8::1] 2001:db8::2 56324 443\r\n"),
    bad_v1("two-double-colons", b"PROXY TCP6 1::2::3 2001:db8::2 56324 443\r\n"),
    bad_v1("triple-colon", b"PROXY TCP6 ::: 2001:db8::2 56324 443\r\n"),
    bad_v1("bad-octet-with-switch", b"PROXY TCP6 192.0.2.01 2001:db8::2 56324 443\r\n", allow_v4_in_tcp6=True),
    bad_v1("lone-lf", GOOD_TCP4 + b"\n"),
    bad_v1("lone-cr", GOOD_TCP4 + b"\rX"),
    bad_v1("cr-cr-lf", GOOD_TCP4 + b"\r\r\n"),
    bad_v1("lf-cr", GOOD_TCP4 + b"\n\r"),
    bad_v1("lone-lf-in-unknown", b"PROXY UNKNOWN\n"),
    bad_v1("lone-cr-in-unknown-text", b"PROXY UNKNOWN a\rb\r\n"),
    bad_v1("lone-lf-in-unknown-text", b"PROXY UNKNOWN a\nb\r\n"),
    bad_v1("unknown-108", sized(108, b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n")),
    bad_v1("tcp6-108", sized(108, f"PROXY TCP6 {LONG_IPV6_45} 0{LONG_IPV6_36} 65535 65535\r\n".encode())),
    bad_v1("no-crlf-in-107", sized(107, b"PROXY UNKNOWN " + b"x" * 93)),
    bad_v1("cr-at-byte-107", sized(107, b"PROXY UNKNOWN " + b"x" * 92 + b"\r")),
]


# Not PROXY traffic at all (SPEC.md section 3, detection) -------------------------------------------

NOT_HEADERS = [
    bad("http", b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", Reason.NOT_HDR),
    bad("http-put-starts-with-p", b"PUT / HTTP/1.1\r\n\r\n", Reason.NOT_HDR),
    bad("tls-client-hello", bytes.fromhex("1603010200010001fc0303"), Reason.NOT_HDR),
    bad("ssh", b"SSH-2.0-OpenSSH_9.6\r\n", Reason.NOT_HDR),
    bad("nul", b"\x00", Reason.NOT_HDR),
    bad("blank-lines", b"\r\n\r\n\r\n", Reason.NOT_HDR),
    bad("v2-bad-signature", SIG[:-1] + b"X\x21\x11\x00\x0c" + bytes(12), Reason.NOT_HDR),
]


# Version 2 (SPEC.md sections 3, 4 and 7) ----------------------------------------------------------

SRC4, DST4 = ("192.0.2.1", 56324), ("198.51.100.2", 443)
SRC6, DST6 = ("2001:db8::1", 4242), ("2001:db8::2", 443)
PATH_SRC, PATH_DST = "/var/run/client.sock", "/var/run/server.sock"
BLOCK4 = inet(SRC4, DST4)
BLOCK6 = inet6(SRC6, DST6)
BLOCK_UNIX = unix(PATH_SRC.encode(), PATH_DST.encode())
ALPN_H2 = (int(TLVType.ALPN), b"h2")
LOCAL_CMD = gpp.Command.LOCAL

#: Family nibble -> (family, address block, source, destination), with addresses
#: whose blocks do not frame as TLVs at byte 16 (so LOCAL reads TLVs after them).
FAMILY_NIBBLES = {
    0x0: (AF_UNSPEC, b"", None, None),
    0x1: (AF_INET, BLOCK4, SRC4, DST4),
    0x2: (AF_INET6, BLOCK6, SRC6, DST6),
    0x3: (AF_UNIX, BLOCK_UNIX, PATH_SRC, PATH_DST),
}
TRANSPORT_NIBBLES = {0x0: None, 0x1: STREAM, 0x2: DGRAM}


def combination(command: gpp.Command, family_nibble: int, transport_nibble: int) -> Any:
    """One family/transport/command header with an ALPN TLV after the address block.

    The addresses replace the real endpoints only for PROXY with a family and a
    transport; LOCAL and UNSPEC mode report None (SPEC.md sections 3 and 7).
    """
    family, block, source, destination = FAMILY_NIBBLES[family_nibble]
    protocol = TRANSPORT_NIBBLES[transport_nibble]
    addressed = command == PROXY_CMD and family != AF_UNSPEC and protocol is not None
    expected = header(
        2, command, family, protocol, source if addressed else None, destination if addressed else None, (ALPN_H2,)
    )
    data = v2(0x20 | command, family_nibble << 4 | transport_nibble, block + tlv(*ALPN_H2))
    return ok(f"{command.name}-{family.name}-{protocol.name if protocol else 'UNSPEC'}", data, expected)


V2_COMBINATIONS = [
    combination(command, family, transport)
    for command, family, transport in itertools.product(gpp.Command, FAMILY_NIBBLES, TRANSPORT_NIBBLES)
]


def proxy4(case_id: str, tlv_bytes: bytes, tlvs: tuple[tuple[int, bytes], ...]) -> Any:
    """A PROXY TCP4 header carrying ``tlv_bytes`` after its block, expected to parse as ``tlvs``."""
    return ok(case_id, v2(PROXY, 0x11, BLOCK4 + tlv_bytes), header(2, PROXY_CMD, AF_INET, STREAM, SRC4, DST4, tlvs))


def unix_case(case_id: str, source: bytes, destination: bytes, want_source: Any, want_destination: Any) -> Any:
    data = v2(PROXY, 0x31, unix(source, destination))
    return ok(case_id, data, header(2, PROXY_CMD, AF_UNIX, STREAM, want_source, want_destination))


def crc_first(ver_cmd: int, fam_tr: int, block: bytes, *rest: bytes) -> bytes:
    """A header whose first TLV after ``block`` is a correct CRC32C."""
    data = v2(ver_cmd, fam_tr, block + tlv(TLVType.CRC32C, bytes(4)) + b"".join(rest))
    return seal(data, 16 + len(block) + 3)


def crc_value(data: bytes, value_offset: int) -> tuple[int, bytes]:
    return (int(TLVType.CRC32C), data[value_offset : value_offset + 4])


AWS_TLV = (int(TLVType.AWS), b"\x01vpce-0123456789abcdef0")
CRC4 = crc_first(PROXY, 0x11, BLOCK4, tlv(*ALPN_H2))
CRC_AFTER_ALPN = seal(v2(PROXY, 0x11, BLOCK4 + tlv(*ALPN_H2) + tlv(TLVType.CRC32C, bytes(4))), 16 + 12 + 5 + 3)
CRC_LOCAL = crc_first(LOCAL, 0x11, b"", tlv(*AWS_TLV))
CRC_UNSPEC = crc_first(PROXY, 0x00, b"")
SSL_FULL = ssl_value(
    0x07,
    0,
    (0x21, b"TLSv1.3"),
    (0x22, b"client.example"),
    (0x25, b"RSA2048"),
    (0x24, b"SHA256"),
    (0x23, b"TLS_AES_256_GCM_SHA384"),
    (0x26, b"X25519"),
    (0x27, b"rsa_pss_rsae_sha256"),
    (0x28, b"\x30\x82\x01\x0a"),
)

V2_VALID = [
    ok("haproxy-health-check", v2(LOCAL, 0x00), header(2, LOCAL_CMD, AF_UNSPEC, None)),
    ok("local-inet-len-0", v2(LOCAL, 0x11), header(2, LOCAL_CMD, AF_INET, STREAM)),
    ok("local-unix-len-0", v2(LOCAL, 0x31), header(2, LOCAL_CMD, AF_UNIX, STREAM)),
    ok("local-shorter-than-block", v2(LOCAL, 0x21, b"\xff" * 5), header(2, LOCAL_CMD, AF_INET6, STREAM)),
    ok(
        "local-aws-nlb-tlvs-at-16",
        v2(LOCAL, 0x11, tlv(*AWS_TLV)),
        header(2, LOCAL_CMD, AF_INET, STREAM, tlvs=(AWS_TLV,)),
    ),
    ok(
        "local-tlvs-frame-at-neither-ignored",
        v2(LOCAL, 0x21, BLOCK6 + b"\x01\x00"),
        header(2, LOCAL_CMD, AF_INET6, STREAM),
    ),
    ok(
        # SPEC.md section 7: byte 16 wins whenever the bytes frame there, even
        # when they are really a zero address block.
        "local-zero-block-frames-at-16",
        v2(LOCAL, 0x11, inet(("0.0.0.0", 0), ("0.0.0.0", 0)) + tlv(*ALPN_H2)),
        header(2, LOCAL_CMD, AF_INET, STREAM, tlvs=((0, b""),) * 4 + (ALPN_H2,)),
    ),
    ok(
        # A block that frames at byte 16 but breaks a TLV rule (0.0.0.0:3 reads
        # as a 0-byte CRC32C) is read as the block it is: LOCAL is accepted.
        "local-block-framing-as-bad-tlvs",
        v2(LOCAL, 0x11, inet(("0.0.0.0", 3), ("0.0.0.0", 0)) + tlv(*ALPN_H2)),
        header(2, LOCAL_CMD, AF_INET, STREAM, tlvs=(ALPN_H2,)),
    ),
    ok(
        "unspec-family-tlvs-at-16",
        v2(PROXY, 0x00, tlv(TLVType.UNIQUE_ID, b"id-1")),
        header(2, PROXY_CMD, AF_UNSPEC, None, tlvs=((5, b"id-1"),)),
    ),
    ok("inet-exact-block", v2(PROXY, 0x11, BLOCK4), header(2, PROXY_CMD, AF_INET, STREAM, SRC4, DST4)),
    ok(
        "inet-extremes",
        v2(PROXY, 0x11, inet(("0.0.0.0", 0), ("255.255.255.255", 65535))),
        header(2, PROXY_CMD, AF_INET, STREAM, ("0.0.0.0", 0), ("255.255.255.255", 65535)),
    ),
    ok(
        "inet6-v4-mapped",
        v2(PROXY, 0x21, inet6(("::ffff:192.0.2.1", 1), ("::1", 2))),
        header(2, PROXY_CMD, AF_INET6, STREAM, ("::ffff:192.0.2.1", 1), ("::1", 2)),
    ),
    ok(
        "unspec-mode-inet6-len-above-block",
        v2(PROXY, 0x20, BLOCK6 + tlv(*ALPN_H2)),
        header(2, PROXY_CMD, AF_INET6, None, tlvs=(ALPN_H2,)),
    ),
    unix_case("unix-paths", PATH_SRC.encode(), PATH_DST.encode(), PATH_SRC, PATH_DST),
    unix_case("unix-abstract", b"\0client", b"\0server", b"\0client", b"\0server"),
    unix_case("unix-abstract-inner-nul-kept", b"\0a\0b", b"\0c", b"\0a\0b", b"\0c"),
    unix_case("unix-all-nul-is-empty-abstract", b"", b"\0", b"\0", b"\0"),
    unix_case("unix-path-108-bytes-no-nul", b"p" * 108, b"/d", "p" * 108, "/d"),
    unix_case("unix-path-not-utf8", b"/tmp/\xff.sock", b"/d", "/tmp/\udcff.sock", "/d"),
    unix_case("unix-path-ends-at-first-nul", b"/a\0junk", b"/d\0\0x", "/a", "/d"),
    proxy4("tlv-empty-value", tlv(TLVType.NOOP, b""), ((4, b""),)),
    proxy4("tlv-noop-padding", tlv(TLVType.NOOP, bytes(10)), ((4, bytes(10)),)),
    proxy4(
        "tlv-duplicates-in-order",
        tlv(1, b"h2") + tlv(0xF0, b"x") + tlv(1, b"http/1.1"),
        ((1, b"h2"), (0xF0, b"x"), (1, b"http/1.1")),
    ),
    proxy4(
        "tlv-experimental-and-future-kept-raw",
        tlv(0xF7, b"\x00") + tlv(0xFF, b"\xff"),
        ((0xF7, b"\0"), (0xFF, b"\xff")),
    ),
    proxy4("tlv-large-value", tlv(0x30, b"n" * 1000), ((0x30, b"n" * 1000),)),
    proxy4("authority-255", tlv(TLVType.AUTHORITY, b"a" * 255), ((2, b"a" * 255),)),
    proxy4("unique-id-128", tlv(TLVType.UNIQUE_ID, b"u" * 128), ((5, b"u" * 128),)),
    proxy4("ssl-full", tlv(TLVType.SSL, SSL_FULL), ((0x20, SSL_FULL),)),
    proxy4("ssl-no-sub-tlvs", tlv(TLVType.SSL, ssl_value(0, 0)), ((0x20, ssl_value(0, 0)),)),
    ok(
        "crc32c-first",
        CRC4,
        header(2, PROXY_CMD, AF_INET, STREAM, SRC4, DST4, (crc_value(CRC4, 31), ALPN_H2)),
    ),
    ok(
        "crc32c-after-alpn",
        CRC_AFTER_ALPN,
        header(2, PROXY_CMD, AF_INET, STREAM, SRC4, DST4, (ALPN_H2, crc_value(CRC_AFTER_ALPN, 36))),
    ),
    ok(
        "crc32c-in-local-at-16",
        CRC_LOCAL,
        header(2, LOCAL_CMD, AF_INET, STREAM, tlvs=(crc_value(CRC_LOCAL, 19), AWS_TLV)),
    ),
    ok("crc32c-unspec-family", CRC_UNSPEC, header(2, PROXY_CMD, AF_UNSPEC, None, tlvs=(crc_value(CRC_UNSPEC, 19),))),
    proxy4("authority-utf8-multibyte", tlv(TLVType.AUTHORITY, "bücher.例え".encode()), ((2, "bücher.例え".encode()),)),
    # The LOCAL rule of SPEC.md section 7, one case per branch (family INET: a 12-byte block).
    ok(
        # (1) byte 16 frames and obeys the rules: those are the TLVs, even though the
        # framing after the block (the last 12 bytes as two empty NOOPs + ...) exists too.
        "local-rule-1-byte-16-wins",
        v2(LOCAL, 0x11, tlv(TLVType.NOOP, bytes(9)) + tlv(*ALPN_H2)),
        header(2, LOCAL_CMD, AF_INET, STREAM, tlvs=((4, bytes(9)), ALPN_H2)),
    ),
    ok(
        # (2) byte 16 frames but breaks a rule (AUTHORITY not UTF-8), after the block is valid.
        "local-rule-2-after-the-block",
        v2(LOCAL, 0x11, tlv(TLVType.AUTHORITY, b"\xff" * 9) + tlv(*ALPN_H2)),
        header(2, LOCAL_CMD, AF_INET, STREAM, tlvs=(ALPN_H2,)),
    ),
    ok(
        # (2) with an empty framing after an exact block: a real block, no TLVs.
        "local-rule-2-exact-block",
        v2(LOCAL, 0x11, inet(("0.0.0.0", 3), ("0.0.0.0", 0))),
        header(2, LOCAL_CMD, AF_INET, STREAM),
    ),
    ok(
        # (4) shorter than the block (so no framing after it) and no framing at 16.
        "local-rule-4-short-frames-nowhere",
        v2(LOCAL, 0x11, b"\x01\x00\x09h2"),
        header(2, LOCAL_CMD, AF_INET, STREAM),
    ),
]


def flip_bit(data: bytes, index: int) -> bytes:
    """``data`` with the low bit of byte ``index`` flipped."""
    return data[:index] + bytes((data[index] ^ 0x01,)) + data[index + 1 :]


def bad_tlvs(case_id: str, tlv_bytes: bytes, reason: Reason = Reason.BAD_HDR) -> Any:
    """A PROXY TCP4 header whose TLV area is ``tlv_bytes``, which makes it invalid."""
    return bad(case_id, v2(PROXY, 0x11, BLOCK4 + tlv_bytes), reason)


V2_INVALID = [
    bad_tlvs("tlv-1-byte-tail", tlv(*ALPN_H2) + b"\x01"),
    bad_tlvs("tlv-2-byte-tail", tlv(*ALPN_H2) + b"\x01\x00"),
    bad_tlvs("tlv-overrun", b"\x01\x00\x05h2"),
    bad_tlvs("tlv-last-overruns-by-one", tlv(*ALPN_H2) + b"\x01\x00\x03h2"),
    bad("unspec-mode-tlv-tail", v2(PROXY, 0x10, BLOCK4 + b"\x01"), Reason.BAD_HDR),
    bad("crc32c-mismatch-in-tlv-after", flip_bit(CRC4, len(CRC4) - 1), Reason.CRC),
    bad("crc32c-mismatch-in-value", flip_bit(CRC4, 31), Reason.CRC),
    bad("crc32c-mismatch-in-address", flip_bit(CRC4, 16), Reason.CRC),
    bad("crc32c-mismatch-local", flip_bit(CRC_LOCAL, len(CRC_LOCAL) - 1), Reason.CRC),
    bad("crc32c-mismatch-before-it", flip_bit(CRC_AFTER_ALPN, 31), Reason.CRC),
    bad_tlvs("crc32c-3-bytes", tlv(TLVType.CRC32C, bytes(3))),
    bad_tlvs("crc32c-5-bytes", tlv(TLVType.CRC32C, bytes(5))),
    bad_tlvs("authority-256", tlv(TLVType.AUTHORITY, b"a" * 256)),
    bad_tlvs("unique-id-129", tlv(TLVType.UNIQUE_ID, b"u" * 129)),
    bad_tlvs("ssl-under-5-bytes", tlv(TLVType.SSL, b"\x01\x00\x00\x00")),
    bad_tlvs("ssl-sub-tlv-overrun", tlv(TLVType.SSL, ssl_value(1, 0) + b"\x21\x00\x09TLSv1.3")),
    bad_tlvs("ssl-sub-tlv-tail", tlv(TLVType.SSL, ssl_value(1, 0, (0x21, b"TLSv1.3")) + b"\x22")),
    bad("inet-len-11", v2(PROXY, 0x11, BLOCK4[:11]), Reason.BAD_HDR),
    bad("inet6-len-35", v2(PROXY, 0x21, BLOCK6[:35]), Reason.BAD_HDR),
    bad("unix-len-215", v2(PROXY, 0x31, BLOCK_UNIX[:215]), Reason.BAD_HDR),
    bad("unspec-mode-inet-len-11", v2(PROXY, 0x10, BLOCK4[:11]), Reason.BAD_HDR),
    bad("dgram-inet6-len-0", v2(PROXY, 0x22), Reason.BAD_HDR),
    # More than one CRC32C: refused before any checksum is computed (SPEC.md section 4).
    bad_tlvs("crc32c-twice", tlv(TLVType.CRC32C, bytes(4)) + tlv(TLVType.CRC32C, bytes(4))),
    bad("crc32c-twice-first-correct", crc_first(PROXY, 0x11, BLOCK4, tlv(TLVType.CRC32C, bytes(4))), Reason.BAD_HDR),
    bad_tlvs("crc32c-256-times", tlv(TLVType.CRC32C, bytes(4)) * 256),
    bad_tlvs("crc32c-twice-apart", tlv(TLVType.CRC32C, bytes(4)) + tlv(*ALPN_H2) + tlv(TLVType.CRC32C, bytes(4))),
    bad("crc32c-twice-local", v2(LOCAL, 0x00, tlv(TLVType.CRC32C, bytes(4)) * 2), Reason.BAD_HDR),
    # AUTHORITY must be UTF-8 (SPEC.md section 4).
    bad_tlvs("authority-not-utf8", tlv(TLVType.AUTHORITY, b"ex\xffample")),
    bad_tlvs("authority-overlong-encoding", tlv(TLVType.AUTHORITY, b"\xc0\xaf")),
    bad_tlvs("authority-surrogate", tlv(TLVType.AUTHORITY, b"\xed\xa0\x80")),
    bad_tlvs("authority-cut-multibyte", tlv(TLVType.AUTHORITY, "é".encode()[:1])),
    # The LOCAL rule, (3): one or more framings exist and every one breaks a rule.
    # A wrong CRC32C at byte 16, no room for a block: HAProxy refuses it too.
    bad("local-rule-3-wrong-crc-at-16-only", v2(LOCAL, 0x11, tlv(TLVType.CRC32C, b"abcd")), Reason.CRC),
    bad("local-rule-3-authority-at-16-only", v2(LOCAL, 0x21, tlv(TLVType.AUTHORITY, b"\xff")), Reason.BAD_HDR),
    bad("local-rule-3-unspec-family", v2(LOCAL, 0x00, tlv(TLVType.CRC32C, b"abcd")), Reason.CRC),
    bad("unspec-family-proxy-wrong-crc", v2(PROXY, 0x00, tlv(TLVType.CRC32C, b"abcd")), Reason.CRC),
    bad(
        # Both framings exist and both break a rule: the first one's reason.
        "local-rule-3-both-framings-bad",
        v2(LOCAL, 0x11, inet(("0.0.0.0", 3), ("0.0.0.0", 0)) + tlv(TLVType.AUTHORITY, b"\xff")),
        Reason.BAD_HDR,
    ),
    bad(
        "local-rule-3-crc-wrong-at-16-block-framing-bad",
        # At 16: a wrong CRC32C, then a NOOP whose value holds what frames at 28: bad AUTHORITY.
        v2(LOCAL, 0x11, tlv(TLVType.CRC32C, b"abcd") + tlv(TLVType.NOOP, b"\0\0" + tlv(TLVType.AUTHORITY, b"\xfe"))),
        Reason.CRC,
    ),
]

VALID = V1_VALID + V2_COMBINATIONS + V2_VALID
INVALID = V1_INVALID + NOT_HEADERS + V2_INVALID


# The tables through parse() ------------------------------------------------------------------------


def feed(stream: bytes, chunk_sizes: Any, **options: bool) -> tuple[gpp.ProxyHeader, int]:
    """Parse ``stream`` as it arrives in chunks of these sizes; every earlier attempt is incomplete."""
    received = b""
    for size in chunk_sizes:
        received += stream[len(received) : len(received) + size]
        try:
            return gpp.parse(received, **options)
        except gpp.IncompleteHeader as incomplete:
            assert incomplete.needed >= 1
    raise AssertionError(f"the stream ended inside the header after {len(received)} bytes")


@pytest.mark.parametrize(("data", "expected", "options"), VALID)
def test_valid_whole(data: bytes, expected: gpp.ProxyHeader, options: dict[str, bool]) -> None:
    result, length = gpp.parse(data, **options)
    assert (result, length) == (expected, len(data))
    assert result.raw == data and result.to_bytes() == data
    assert type(result.command) is gpp.Command


@pytest.mark.parametrize(("data", "expected", "options"), VALID)
def test_valid_every_strict_prefix_is_incomplete(
    data: bytes, expected: gpp.ProxyHeader, options: dict[str, bool]
) -> None:
    for cut in range(len(data)):
        with pytest.raises(gpp.IncompleteHeader) as info:
            gpp.parse(data[:cut], **options)
        # `needed` bytes are certainly header: a reader may take them without peeking.
        assert 1 <= info.value.needed <= len(data) - cut, cut
        assert info.value.reason is Reason.TRUNCATED and info.value.message


@pytest.mark.parametrize("trailing", [b"", TRAILING], ids=["alone", "trailing"])
@pytest.mark.parametrize(("data", "expected", "options"), VALID)
def test_valid_fed_in_pieces(data: bytes, expected: gpp.ProxyHeader, options: dict[str, bool], trailing: bytes) -> None:
    stream = data + trailing
    want = (expected, len(data))
    assert feed(stream, [len(stream)], **options) == want
    assert feed(stream, itertools.repeat(1), **options) == want
    for offset in range(1, len(stream)):
        assert feed(stream, [offset, len(stream) - offset], **options) == want, offset


@pytest.mark.parametrize(("data", "expected", "options"), VALID)
def test_valid_read_by_needed_stops_at_the_header_end(
    data: bytes, expected: gpp.ProxyHeader, options: dict[str, bool]
) -> None:
    # A reader that takes exactly `needed` bytes each time never reads past the header.
    stream = data + TRAILING
    received = b""
    while True:
        try:
            result = gpp.parse(received, **options)
            break
        except gpp.IncompleteHeader as incomplete:
            received += stream[len(received) : len(received) + incomplete.needed]
    assert result == (expected, len(data))
    assert received == data


@pytest.mark.parametrize("trailing", [b"\r\n", TRAILING, bytes(range(256)) * 300], ids=["crlf", "http", "76800-bytes"])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
@pytest.mark.parametrize(("data", "expected", "options"), VALID)
def test_valid_with_trailing_bytes_and_input_types(
    data: bytes, expected: gpp.ProxyHeader, options: dict[str, bool], kind: Any, trailing: bytes
) -> None:
    result, length = gpp.parse(kind(data + trailing), **options)
    assert (result, length) == (expected, len(data))
    assert type(result.raw) is bytes and result.raw == data


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
@pytest.mark.parametrize("trailing", [b"", b"\r\n", TRAILING], ids=["alone", "crlf", "http"])
@pytest.mark.parametrize(("data", "reason", "options"), INVALID)
def test_invalid(data: bytes, reason: Reason, options: dict[str, bool], trailing: bytes, kind: Any) -> None:
    with pytest.raises(gpp.InvalidHeader) as info:
        gpp.parse(kind(data + trailing), **options)
    assert info.value.reason is reason
    assert info.value.message and str(info.value).startswith(f"{reason.value}: ")


# Fail fast (SPEC.md section 7): invalid at the first byte that can no longer
# begin a valid header; every shorter prefix is incomplete.
FAIL_FAST = [
    bad("first-byte-http", b"G", Reason.NOT_HDR),
    bad("first-byte-tls", b"\x16", Reason.NOT_HDR),
    bad("first-byte-nul", b"\x00", Reason.NOT_HDR),
    bad("proxy-misspelt", b"PROXX", Reason.NOT_HDR),
    bad("proxy-no-space", b"PROXY\r", Reason.NOT_HDR),
    bad("v2-signature-third-byte", b"\r\n\n", Reason.NOT_HDR),
    bad("v2-signature-last-byte", SIG[:11] + b"\x00", Reason.NOT_HDR),
    bad("v2-version-1", SIG + b"\x11", Reason.BAD_PROTO),
    bad("v2-version-3", SIG + b"\x31", Reason.BAD_PROTO),
    bad("v2-family-4", SIG + b"\x21\x41", Reason.BAD_PROTO),
    bad("v2-transport-3", SIG + b"\x21\x13", Reason.BAD_PROTO),
    bad("v2-inet-len-below-block", SIG + b"\x21\x11\x00\x0b", Reason.BAD_HDR),
    bad("v2-inet6-len-below-block", SIG + b"\x21\x21\x00\x23", Reason.BAD_HDR),
    bad("v2-unix-len-below-block", SIG + b"\x21\x31\x00\xd7", Reason.BAD_HDR),
    bad("v2-unspec-mode-len-below-block", SIG + b"\x21\x10\x00\x0b", Reason.BAD_HDR),
    bad("v1-lone-lf", GOOD_TCP4 + b"\n", Reason.BAD_HDR),
    bad("v1-lone-lf-early", b"PROXY \n", Reason.BAD_HDR),
    bad("v1-lone-lf-in-unknown", b"PROXY UNKNOWN\n", Reason.BAD_HDR),
    bad("v1-lone-lf-in-unknown-text", b"PROXY UNKNOWN a\n", Reason.BAD_HDR),
    bad("v1-cr-without-lf", GOOD_TCP4 + b"\rX", Reason.BAD_HDR),
    bad("v1-cr-without-lf-in-unknown-text", b"PROXY UNKNOWN ab\rc", Reason.BAD_HDR),
    # 106 bytes without a CR: a CRLF can no longer end within 107 bytes.
    bad("v1-106-bytes-without-cr", sized(106, b"PROXY UNKNOWN " + b"x" * 92), Reason.BAD_HDR),
    bad(
        "v1-tcp6-106-bytes-without-cr",
        sized(106, f"PROXY TCP6 {LONG_IPV6_45} 0{LONG_IPV6_36} 65535 65535".encode()),
        Reason.BAD_HDR,
    ),
]


@pytest.mark.parametrize(("data", "reason", "options"), FAIL_FAST)
def test_fail_fast(data: bytes, reason: Reason, options: dict[str, bool]) -> None:
    with pytest.raises(gpp.InvalidHeader) as info:
        gpp.parse(data, **options)
    assert info.value.reason is reason and info.value.message
    for cut in range(len(data)):
        with pytest.raises(gpp.IncompleteHeader):
            gpp.parse(data[:cut], **options)


def test_incomplete_needed_is_exact_for_v2() -> None:
    body = BLOCK4 + tlv(*ALPN_H2)
    data = v2(PROXY, 0x11, body)
    cases = {1: 15, 5: 11, 15: 1, 16: len(body), 20: len(body) - 4, len(data) - 1: 1}
    for cut, needed in cases.items():
        with pytest.raises(gpp.IncompleteHeader) as info:
            gpp.parse(data[:cut])
        assert info.value.needed == needed, cut
    with pytest.raises(gpp.IncompleteHeader) as huge:
        gpp.parse(v2(LOCAL, 0x00, length=0xFFFF))
    assert huge.value.needed == 0xFFFF


def test_incomplete_says_whether_needed_is_exact() -> None:
    # v2 counts down exactly (the preamble, then the length it declares): a reader waits for just those bytes.
    data = v2(PROXY, 0x11, BLOCK4 + tlv(*ALPN_H2))
    for cut in range(1, len(data)):
        with pytest.raises(gpp.IncompleteHeader) as info:
            gpp.parse(data[:cut])
        boundary = 16 if cut < 16 else len(data)
        assert info.value.exact and info.value.needed == boundary - cut, cut
    # v1 (and no byte at all) knows only a lower bound until the CRLF.
    for cut in range(len(GOOD_TCP4) + 1):
        with pytest.raises(gpp.IncompleteHeader) as info:
            gpp.parse(GOOD_TCP4[:cut])
        assert not info.value.exact, cut
    assert gpp.IncompleteHeader(3).exact is False


def test_max_header_size_refuses_a_v2_header_from_its_preamble() -> None:
    # 16 bytes declaring a 1016-byte header: refused before the rest arrives or is parsed.
    preamble = SIG + bytes((PROXY, 0x11)) + (1000).to_bytes(2, "big")
    with pytest.raises(gpp.InvalidHeader) as refused:
        gpp.parse(preamble, max_header_size=1015)
    assert refused.value.reason is Reason.BAD_HDR and "1016" in refused.value.message
    for cut in range(len(preamble)):
        with pytest.raises(gpp.IncompleteHeader):
            gpp.parse(preamble[:cut], max_header_size=1015)
    with pytest.raises(gpp.IncompleteHeader):  # at the cap: wait for the rest
        gpp.parse(preamble, max_header_size=1016)
    # A header whose TLVs would be refused is refused for its size first: nothing after byte 15 is read.
    many_crcs = v2(PROXY, 0x11, BLOCK4 + tlv(TLVType.CRC32C, bytes(4)) * 256)
    with pytest.raises(gpp.InvalidHeader, match="header over 1000 bytes"):
        gpp.parse(many_crcs, max_header_size=1000)


def test_max_header_size_applies_to_v1_lines() -> None:
    line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
    assert gpp.parse(line, max_header_size=len(line))[1] == len(line)
    with pytest.raises(gpp.InvalidHeader) as refused:
        gpp.parse(line, max_header_size=len(line) - 1)
    assert refused.value.reason is Reason.BAD_HDR


#: The crc32c that parse_v2 calls: a global of the module that runs, _v2 or its
#: compiled build _gevent_c_v2, whose name _v2 takes when it adopts it (_accel.py).
V2_CRC32C = f"{gevent_proxyproto._v2.__name__}.crc32c"


def test_crc32c_is_computed_once_per_header() -> None:
    calls = []

    def counting(data: bytes) -> int:
        calls.append(len(data))
        return crc32c_pure(data)

    with mock.patch(V2_CRC32C, counting):
        gpp.parse(CRC4)
        assert len(calls) == 1
        calls.clear()
        with pytest.raises(gpp.InvalidHeader):
            gpp.parse(v2(PROXY, 0x11, BLOCK4 + tlv(TLVType.CRC32C, bytes(4)) * 256))
        assert calls == []  # the second CRC32C refuses the header before any checksum


@pytest.mark.parametrize(
    ("data", "shortest_end"),
    [
        (b"", b"PROXY UNKNOWN\r\n"),
        (b"P", b"ROXY UNKNOWN\r\n"),
        (b"PROXY ", b"UNKNOWN\r\n"),
        (b"PROXY TCP4 192.0.2.1 ", b"0.0.0.0 0 0\r\n"),
        (b"PROXY UNKNOWN\r", b"\n"),
        (sized(105, b"PROXY UNKNOWN " + b"x" * 91), b"\r\n"),
        (sized(106, b"PROXY UNKNOWN " + b"x" * 91 + b"\r"), b"\n"),
    ],
)
def test_incomplete_needed_never_passes_the_shortest_valid_end(data: bytes, shortest_end: bytes) -> None:
    gpp.parse(data + shortest_end)  # the table's completion is valid
    with pytest.raises(gpp.IncompleteHeader) as info:
        gpp.parse(data)
    assert 1 <= info.value.needed <= len(shortest_end)


@pytest.mark.parametrize("version", range(16))
def test_v2_every_bad_version_or_command_nibble(version: int) -> None:
    for command in range(16):
        if version == 2 and command in (0, 1):
            continue
        data = v2(version << 4 | command, 0x11, BLOCK4)
        for prefix in (data[:13], data):
            with pytest.raises(gpp.InvalidHeader) as info:
                gpp.parse(prefix)
            if version != 2:
                assert info.value.reason is Reason.BAD_PROTO
            else:  # the spec names no reason for a bad command
                assert info.value.reason in (Reason.BAD_HDR, Reason.BAD_PROTO)


@pytest.mark.parametrize("command", [LOCAL, PROXY])
def test_v2_every_bad_family_or_transport_nibble(command: int) -> None:
    for family, transport in itertools.product(range(16), range(16)):
        if family in FAMILY_NIBBLES and transport in TRANSPORT_NIBBLES:
            continue
        data = v2(command, family << 4 | transport, bytes(216))
        for prefix in (data[:14], data):
            with pytest.raises(gpp.InvalidHeader) as info:
                gpp.parse(prefix)
            assert info.value.reason is Reason.BAD_PROTO, (family, transport)


@pytest.mark.parametrize(
    "line", [b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n", b"PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n"]
)
def test_v4_in_tcp6_only_with_the_switch(line: bytes) -> None:
    with pytest.raises(gpp.InvalidHeader):
        gpp.parse(line)
    with pytest.raises(gpp.InvalidHeader):
        gpp.parse(line, allow_v4_in_tcp6=False)
    result, _ = gpp.parse(line, allow_v4_in_tcp6=True)
    assert isinstance(result.source, tuple) and result.source[0] == "::ffff:192.0.2.1"
    assert result.family == AF_INET6


@pytest.mark.parametrize("function", [gpp.crc32c, crc32c_pure], ids=["default", "pure"])
@pytest.mark.parametrize("case", ["crc32c-first", "crc32c-after-alpn", "crc32c-in-local-at-16", "crc32c-unspec-family"])
def test_parse_verifies_crc32c_with_either_implementation(function: Any, case: str) -> None:
    [(data, expected, _)] = [param.values for param in V2_VALID if param.id == case]
    [offset] = [i for i, (tlv_type, _) in enumerate(expected.tlvs) if tlv_type == TLVType.CRC32C]
    with mock.patch(V2_CRC32C, function):
        assert gpp.parse(data)[0] == expected
        value_offset = data.index(expected.tlvs[offset][1])
        with pytest.raises(gpp.InvalidHeader) as refused:
            gpp.parse(flip_bit(data, value_offset))
    assert refused.value.reason is Reason.CRC


# Properties ----------------------------------------------------------------------------------------

options_strategy = st.fixed_dictionaries({"allow_v4_in_tcp6": st.booleans()})


@given(st.one_of(wire.arbitrary_bytes, wire.mutated_headers()), options_strategy)
def test_malformed_input_raises_only_parser_errors(data: bytes, options: dict[str, bool]) -> None:
    # Its prefixes too: a reader shows parse() each of them on the way (the v1 ones in full).
    for cut in range(min(len(data), 110)):
        outcome(data[:cut], **options)
    verdict = outcome(data, **options)
    if verdict[0] == "ok":
        assert gpp.parse(verdict[1].to_bytes(), **options) == verdict[1:]


def _unterminated_verdict(judge: Any, data: bytes) -> tuple[Any, ...]:
    """``("incomplete", needed)``, or the refusal's reason and message."""
    try:
        return ("incomplete", judge(data))
    except gpp.InvalidHeader as invalid:
        return ("invalid", invalid.reason, invalid.message)


@given(st.one_of(wire.v1_like_lines, wire.mutated_headers(), wire.wire_headers, wire.arbitrary_bytes))
# Ports at the edge of the range, which random ones rarely hit.
@example(b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 65535")
@example(b"PROXY TCP6 ::1 ::2 65535 65539")
@example(b"PROXY TCP4 192.0.2.1 198.51.100.2 59999 70000")
def test_v1_partial_line_shortcut_decides_as_the_field_by_field_checks(line: bytes) -> None:
    """A trickled v1 line is judged by one match; it must agree with the slow path, which explains refusals."""
    for cut in range(min(len(line), 110) + 1):
        prefix = line[:cut]
        assert _unterminated_verdict(_v1._unterminated, prefix) == _unterminated_verdict(
            _v1._explain_unterminated, prefix
        ), prefix


@given(st.one_of(wire.tcp4_like_lines, wire.v1_like_lines, wire.mutated_headers(), wire.arbitrary_bytes))
@example(b"PROXY TCP4 1.2. 3")  # an address cut after a dot, then a space: incomplete for both
@example(b"PROXY TCP4 1.2.3.4.5")
@example(b"PROXY TCP4 1..2")
@example(b"PROXY TCP4 01.2")
@example(b"PROXY TCP4 1.2.3.256")
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536")
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 02")
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ")
@example(b"PROXY TCP4 1.2.3.4  5")
@example(b"PROXY TCP4  ")
def test_v1_tcp4_prefix_scan_never_takes_what_the_field_by_field_checks_refuse(line: bytes) -> None:
    """The compiled build's shortcut for a TCP4 line still arriving (tested here in whichever build runs).

    Each prefix it takes, the slow path finds incomplete too, with the same
    `needed`; a prefix it does not take, the pattern and the slow path judge.
    """
    for cut in range(min(len(line), V1_MAX_LENGTH - 2) + 1):
        prefix = line[:cut]
        if _v1._scan_tcp4_prefix(prefix):
            assert _unterminated_verdict(_v1._explain_unterminated, prefix) == (
                "incomplete",
                max(2, V1_MIN_LENGTH - len(prefix)),
            ), prefix


def test_v1_tcp4_prefix_scan_takes_a_trickling_clients_prefixes() -> None:
    """Every prefix of a valid TCP4 line short of its CR, from b"" on: else the scan would save nothing."""
    for line in (GOOD_TCP4, b"PROXY TCP4 255.255.255.255 0.0.0.0 0 65535", b"PROXY TCP4 1.2.3.4 10.0.0.1 65535 1"):
        for cut in range(len(line) + 1):
            assert _v1._scan_tcp4_prefix(line[:cut]), line[:cut]


def _tcp4_line_by_the_regex(data: bytes) -> tuple[Any, ...] | None:
    """What the scan must return, from the pure build's pattern: the fields of a strict TCP4 line, or None."""
    match = _v1._TCP4_LINE.match(data)
    if match is None or int(match.group(3)) > 0xFFFF or int(match.group(4)) > 0xFFFF:
        return None
    source, destination, source_port, destination_port = match.groups()
    return (source.decode(), int(source_port)), (destination.decode(), int(destination_port)), match.end()


@given(st.one_of(wire.tcp4_like_lines, wire.mutated_headers(), wire.v1_like_lines))
@example(b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n")
@example(b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n")
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 1\r\n")
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n")
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n")
@example(b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n")
@example(b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n")
@example(b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n")
@example(b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n")
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r")
def test_v1_tcp4_scan_accepts_exactly_what_the_pattern_accepts(line: bytes) -> None:
    """The compiled build's TCP4 scan (tested here in whichever build runs) against the regex it stands in for."""
    expected = _tcp4_line_by_the_regex(line)
    scanned = _v1._scan_tcp4_line(line)
    if expected is None:
        assert scanned is None, line
        return
    assert scanned is not None, line
    header, length = scanned
    assert (header.source, header.destination, length) == expected
    assert (header.version, header.command, header.family, header.protocol) == (1, PROXY_CMD, AF_INET, STREAM)
    assert header.tlvs == () and header.raw == line[:length]


def test_v1_partial_line_shortcut_takes_the_common_prefixes() -> None:
    """The shortcut matches the prefixes a trickling client sends (else it would save nothing)."""
    longest = b"PROXY TCP6 " + b" ".join([b"ffff:" * 7 + b"ffff"] * 2) + b" 65535 65535"
    for line in (GOOD_TCP4, GOOD_TCP6, b"PROXY TCP4 255.255.255.255 0.0.0.0 0 65535", longest):
        for cut in range(len(b"PROXY TCP4 "), len(line) + 1):
            assert _v1._PARTIAL_TCP_LINE.fullmatch(line[:cut]), line[:cut]


@given(
    st.one_of(wire.arbitrary_bytes, wire.mutated_headers(), wire.wire_headers),
    st.binary(min_size=1, max_size=64),
    options_strategy,
)
def test_verdicts_hold_as_more_bytes_arrive(data: bytes, more: bytes, options: dict[str, bool]) -> None:
    before = outcome(data, **options)
    after = outcome(data + more, **options)
    if before[0] == "ok":
        assert after == before  # bytes after a header are never looked at
    elif before[0] == "invalid":
        assert after == before  # fail fast never takes a verdict back
    else:
        # `needed` more bytes are certainly header: fewer cannot complete it.
        shorter = outcome(data + more[: before[1] - 1], **options)
        assert shorter[0] != "ok"


@given(wire.headers())
def test_header_built_in_code_round_trips(built: gpp.ProxyHeader) -> None:
    assert built.raw is None
    data = gpp.encode_header(built)
    parsed, length = gpp.parse(data)
    assert parsed == built and length == len(data)
    assert parsed.to_bytes() == data
    assert gpp.parse(data + TRAILING) == (parsed, length)


def test_address_texts_stay_right_and_bounded_across_many_distinct_addresses() -> None:
    # The parsers remember address texts (inet_ntop is costly): a few hundred
    # distinct clients fill and empty the memo; every text is still inet_ntop's.
    from gevent_proxyproto import _v1, _v2

    listener6 = ("2001:db8::443", 443)
    for index in range(3 * _v2._ADDRESS_TEXTS_MAX):
        # Varied zero runs, so the texts are compressed in different places.
        packed6 = bytes.fromhex("20010db8") + index.to_bytes(2, "big") * (index % 5) + bytes(12 - 2 * (index % 5))
        source6 = (socket.inet_ntop(socket.AF_INET6, packed6), 1024 + index)
        source4 = (f"192.0.{index // 256}.{index % 256}", 1024 + index)
        header6, _ = gpp.parse(gpp.build_v2(source=source6, destination=listener6))
        header4, _ = gpp.parse(gpp.build_v2(source=source4, destination=("198.51.100.1", 80)))
        line, _ = gpp.parse(f"PROXY TCP6 2001:DB8:0:{index:X}::0:1 2001:db8::443 {index} 443\r\n".encode())
        assert header6.source == source6 and header6.destination == listener6
        assert header4.source == source4
        expected = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, f"2001:db8:0:{index:x}::1"))
        assert line.source == (expected, index) and line.destination == listener6
        assert len(_v2._address_texts) <= _v2._ADDRESS_TEXTS_MAX
        assert len(_v1._ipv6_texts) <= _v1._IPV6_TEXTS_MAX


def test_remembered_v1_text_does_not_depend_on_allow_v4_in_tcp6() -> None:
    # IPv4 text in a TCP6 line is never remembered: without the switch it is refused every time.
    line = b"PROXY TCP6 192.0.2.1 2001:db8::1 1 2\r\n"
    for _ in range(2):
        assert gpp.parse(line, allow_v4_in_tcp6=True)[0].source == ("::ffff:192.0.2.1", 1)
        with pytest.raises(gpp.InvalidHeader, match="not IPv6"):
            gpp.parse(line)
