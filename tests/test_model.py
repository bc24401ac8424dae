"""The value objects: TLV accessors, SSLInfo, ProxyHeader's equality and immutability, the errors.

The sample headers come from test_parser.py's byte tables.
"""

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import gevent_proxyproto as gpp

from . import wire
from .test_parser import (
    AF_INET,
    ALPN_H2,
    AWS_TLV,
    BLOCK4,
    CRC4,
    CRC_AFTER_ALPN,
    DST4,
    PROXY_CMD,
    SRC4,
    SSL_FULL,
    STREAM,
    header,
)
from .wire import LOCAL, PROXY, ssl_value, tlv, v2

Reason = gpp.Reason
TLVType = gpp.TLVType

# TLV accessors (SPEC.md sections 4 and 7) ----------------------------------------------------------

AZURE_ID = 0x12345678
GCP_ID = 0x0123456789ABCDEF

ACCESSORS = [
    # (case id, TLVs, accessor, expected)
    ("alpn", [ALPN_H2], "alpn", b"h2"),
    ("alpn-absent", [], "alpn", None),
    ("alpn-first-of-duplicates", [(1, b"h2"), (1, b"http/1.1")], "alpn", b"h2"),
    ("authority", [(2, b"example.com")], "authority", "example.com"),
    ("authority-utf8", [(2, "bücher.example".encode())], "authority", "bücher.example"),
    ("authority-absent", [], "authority", None),
    ("unique-id", [(5, b"\x00id\xff")], "unique_id", b"\x00id\xff"),
    ("unique-id-absent", [], "unique_id", None),
    ("netns", [(0x30, b"blue")], "netns", "blue"),
    ("netns-absent", [(1, b"h2")], "netns", None),
    ("crc32c-absent", [], "crc32c", None),
    ("ssl-absent", [], "ssl", None),
    ("aws", [AWS_TLV], "aws_vpce_id", "vpce-0123456789abcdef0"),
    ("aws-wrong-subtype", [(0xEA, b"\x02vpce-0123")], "aws_vpce_id", None),
    ("aws-empty", [(0xEA, b"")], "aws_vpce_id", None),
    ("aws-absent", [], "aws_vpce_id", None),
    ("aws-first-wins", [(0xEA, b"\x02x"), AWS_TLV], "aws_vpce_id", None),
    ("azure", [(0xEE, b"\x01" + AZURE_ID.to_bytes(4, "little"))], "azure_link_id", AZURE_ID),
    ("azure-wrong-subtype", [(0xEE, b"\x02" + AZURE_ID.to_bytes(4, "little"))], "azure_link_id", None),
    ("azure-4-bytes", [(0xEE, b"\x01\x00\x00\x01")], "azure_link_id", None),
    ("azure-6-bytes", [(0xEE, b"\x01" + bytes(5))], "azure_link_id", None),
    ("azure-absent", [], "azure_link_id", None),
    ("gcp", [(0xE0, GCP_ID.to_bytes(8, "big"))], "gcp_psc_connection_id", GCP_ID),
    ("gcp-7-bytes", [(0xE0, bytes(7))], "gcp_psc_connection_id", None),
    ("gcp-9-bytes", [(0xE0, bytes(9))], "gcp_psc_connection_id", None),
    ("gcp-absent", [], "gcp_psc_connection_id", None),
]


@pytest.mark.parametrize(("tlvs", "accessor", "expected"), [pytest.param(*case[1:], id=case[0]) for case in ACCESSORS])
def test_accessor(tlvs: list[tuple[int, bytes]], accessor: str, expected: Any) -> None:
    data = v2(PROXY, 0x11, BLOCK4 + b"".join(tlv(t, value) for t, value in tlvs))
    parsed, _ = gpp.parse(data)
    assert getattr(parsed, accessor) == expected
    built = header(2, PROXY_CMD, AF_INET, STREAM, SRC4, DST4, tuple(tlvs))
    assert getattr(built, accessor) == expected


def test_authority_not_utf8_is_refused_by_parse_and_lossless_when_built() -> None:
    # SPEC.md section 4: AUTHORITY that is not valid UTF-8 is invalid on the wire; a header
    # built in code can still carry any bytes, and the accessor keeps them (surrogateescape).
    with pytest.raises(gpp.InvalidHeader) as refused:
        gpp.parse(v2(PROXY, 0x11, BLOCK4 + tlv(TLVType.AUTHORITY, b"ex\xffample")))
    assert refused.value.reason is Reason.BAD_HDR and "AUTHORITY" in refused.value.message
    built = header(2, PROXY_CMD, AF_INET, STREAM, SRC4, DST4, ((2, b"ex\xffample"),))
    assert built.authority == "ex\udcffample"


def test_generic_tlv_accessor_and_crc32c() -> None:
    parsed, _ = gpp.parse(CRC_AFTER_ALPN)
    assert parsed.tlv(TLVType.ALPN) == b"h2" and parsed.tlv(0x99) is None
    zeroed = CRC_AFTER_ALPN[:36] + bytes(4) + CRC_AFTER_ALPN[40:]
    assert parsed.crc32c == wire.crc32c_reference(zeroed) == int.from_bytes(CRC_AFTER_ALPN[36:40], "big")


SSL_ACCESSORS = [
    ("version", "TLSv1.3"),
    ("cn", "client.example"),
    ("cipher", "TLS_AES_256_GCM_SHA384"),
    ("sig_alg", "SHA256"),
    ("key_alg", "RSA2048"),
    ("group", "X25519"),
    ("sig_scheme", "rsa_pss_rsae_sha256"),
    ("client_cert", b"\x30\x82\x01\x0a"),
]


@pytest.mark.parametrize(("accessor", "expected"), SSL_ACCESSORS)
def test_ssl_sub_tlv_accessors(accessor: str, expected: Any) -> None:
    full, _ = gpp.parse(v2(PROXY, 0x11, BLOCK4 + tlv(TLVType.SSL, SSL_FULL)))
    assert full.ssl is not None and getattr(full.ssl, accessor) == expected
    empty, _ = gpp.parse(v2(PROXY, 0x11, BLOCK4 + tlv(TLVType.SSL, ssl_value(0x01, 0))))
    assert empty.ssl is not None and getattr(empty.ssl, accessor) is None


def test_ssl_fields_keep_wire_order_and_duplicates() -> None:
    value = ssl_value(0x01, 0x0A0B0C0D, (0x22, b"first"), (0x99, b"unknown"), (0x22, b"second"))
    parsed, _ = gpp.parse(v2(PROXY, 0x11, BLOCK4 + tlv(TLVType.SSL, value)))
    assert parsed.ssl == gpp.SSLInfo(
        gpp.SSLClient.SSL, 0x0A0B0C0D, ((0x22, b"first"), (0x99, b"unknown"), (0x22, b"second"))
    )
    assert parsed.ssl.cn == "first"


@pytest.mark.parametrize(
    ("client", "verify", "verified"),
    [
        (0x07, 0, True),  # TLS, certificate on this connection, verified
        (0x03, 0, True),
        (0x03, 1, False),  # certificate presented, verification failed
        (0x01, 0, False),  # HAProxy sends verify = 0 with no certificate: read the flags
        (0x05, 0, False),  # certificate in the session only, not on this connection
        (0x00, 0, False),
    ],
)
def test_ssl_client_flags_and_verified(client: int, verify: int, verified: bool) -> None:
    parsed, _ = gpp.parse(v2(PROXY, 0x11, BLOCK4 + tlv(TLVType.SSL, ssl_value(client, verify))))
    assert parsed.ssl is not None
    assert parsed.ssl.client == client and isinstance(parsed.ssl.client, gpp.SSLClient)
    assert parsed.ssl.verify == verify
    assert parsed.ssl.verified is verified


def test_ssl_client_flag_values() -> None:
    assert (gpp.SSLClient.SSL, gpp.SSLClient.CERT_CONN, gpp.SSLClient.CERT_SESS) == (0x01, 0x02, 0x04)
    assert gpp.SSLClient(0xFF) & gpp.SSLClient.CERT_CONN  # unknown bits do not break decoding


@pytest.mark.parametrize(
    "value", [b"", b"\x01\x00\x00\x00", ssl_value(1, 0) + b"\x21", ssl_value(1, 0) + b"\x21\x00\x01"]
)
def test_ssl_info_from_malformed_value_is_none(value: bytes) -> None:
    assert gpp.SSLInfo.from_value(value) is None


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_ssl_info_from_any_bytes_like_value(kind: type) -> None:
    # A header built in code may hold a bytearray; the compiled TLV framing takes only bytes.
    value = ssl_value(0x01, 0, (gpp.SSLSubType.VERSION, b"TLSv1.3"))
    header = gpp.ProxyHeader(2, gpp.Command.PROXY, AF_INET, STREAM, ("192.0.2.1", 1), ("192.0.2.2", 2), ((0x20, kind(value)),))
    assert header.ssl == gpp.SSLInfo.from_value(kind(value)) == gpp.SSLInfo.from_value(value)
    assert header.ssl is not None and header.ssl.version == "TLSv1.3"


# Value objects and errors --------------------------------------------------------------------------


def parsed_crc4() -> gpp.ProxyHeader:
    return gpp.parse(CRC4)[0]


def test_header_is_immutable() -> None:
    parsed = parsed_crc4()
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.source = ("203.0.113.9", 1)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.raw = None  # type: ignore[misc]
    assert parsed.ssl is None
    ssl_info = gpp.SSLInfo(gpp.SSLClient.SSL, 0, ())
    with pytest.raises(dataclasses.FrozenInstanceError):
        ssl_info.verify = 1  # type: ignore[misc]


def test_header_equality_and_hash_ignore_raw() -> None:
    parsed = parsed_crc4()
    rebuilt = dataclasses.replace(parsed)  # the same fields, built in code: no raw
    assert parsed.raw == CRC4 and rebuilt.raw is None
    assert parsed == rebuilt
    assert hash(parsed) == hash(rebuilt)
    assert len({parsed, rebuilt}) == 1
    assert "raw" not in repr(parsed)
    assert dataclasses.replace(parsed, source=("192.0.2.1", 1)) != parsed
    assert dataclasses.replace(parsed, tlvs=parsed.tlvs[1:]) != parsed


def test_a_changed_copy_of_a_parsed_header_has_no_stale_bytes() -> None:
    # replace() used to carry the parsed bytes over: to_bytes() then gave another header's wire form.
    parsed, _ = gpp.parse(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n")
    changed = dataclasses.replace(parsed, source=("203.0.113.9", 9))
    assert changed.raw is None
    with pytest.raises(ValueError, match="encode_header"):
        changed.to_bytes()
    assert gpp.parse(gpp.encode_header(changed))[0] == changed
    # Only the parser sets raw: not replace(), not the constructor.
    with pytest.raises((ValueError, TypeError), match="raw"):  # ValueError before Python 3.13, TypeError since
        dataclasses.replace(parsed, raw=b"PROXY UNKNOWN\r\n")
    with pytest.raises(TypeError, match="raw"):
        gpp.ProxyHeader(1, PROXY_CMD, AF_INET, STREAM, None, None, raw=b"PROXY UNKNOWN\r\n")  # type: ignore[call-arg]


def test_two_encodings_of_one_header_are_equal() -> None:
    first, _ = gpp.parse(b"PROXY TCP6 2001:DB8::1 ::ffff:192.0.2.1 1 2\r\n")
    second, _ = gpp.parse(b"PROXY TCP6 2001:db8:0::1 ::ffff:c000:201 1 2\r\n")
    assert first.raw != second.raw
    assert first == second and hash(first) == hash(second)


def test_addresses_used() -> None:
    assert parsed_crc4().addresses_used
    assert not gpp.parse(v2(LOCAL, 0x11, BLOCK4))[0].addresses_used
    assert not gpp.parse(b"PROXY UNKNOWN\r\n")[0].addresses_used


@pytest.mark.parametrize(
    "error", [gpp.InvalidHeader, gpp.IncompleteHeader, gpp.HeaderTimeout, gpp.ConnectionClosed, gpp.UntrustedSource]
)
def test_every_error_is_a_proxy_protocol_error(error: type[Exception]) -> None:
    assert issubclass(error, gpp.ProxyProtocolError)
    assert not issubclass(error, (ValueError, OSError))


def test_errors_carry_reason_and_message() -> None:
    invalid = gpp.InvalidHeader(Reason.BAD_HDR, "v1 port is malformed")
    assert (invalid.reason, invalid.message, str(invalid)) == (
        Reason.BAD_HDR,
        "v1 port is malformed",
        "BAD_HDR: v1 port is malformed",
    )
    incomplete = gpp.IncompleteHeader(3)
    assert (incomplete.reason, incomplete.needed) == (Reason.TRUNCATED, 3) and incomplete.message
    assert str(Reason.NOT_HDR) == "NOT_HDR" and Reason.CRC == "CRC"


# TLV accessors on anything that parses ---------------------------------------------------------------

_ACCESSED_TYPES = [int(kind) for kind in gpp.TLVType] + [0x00, 0xE1, 0xF0, 0xFF]


@given(
    st.lists(st.tuples(st.sampled_from(_ACCESSED_TYPES), st.binary(max_size=40)), max_size=6),
    st.sampled_from([wire.LOCAL, wire.PROXY]),
    st.booleans(),
)
def test_typed_accessors_never_raise(tlvs: list[tuple[int, bytes]], command: int, sealed: bool) -> None:
    body = wire.inet(("192.0.2.1", 1), ("192.0.2.2", 2)) + b"".join(wire.tlv(kind, value) for kind, value in tlvs)
    data = wire.v2(command, 0x11, body)
    if sealed:  # a CRC32C TLV first, correct: the header then stands or falls on its other TLVs
        data = wire.seal(wire.v2(command, 0x11, body[:12] + wire.tlv(0x03, bytes(4)) + body[12:]), 16 + 12 + 3)
    try:
        header, _ = gpp.parse(data)
    except gpp.InvalidHeader:
        return
    for name in (
        "alpn",
        "authority",
        "unique_id",
        "crc32c",
        "netns",
        "aws_vpce_id",
        "azure_link_id",
        "gcp_psc_connection_id",
    ):
        getattr(header, name)
    ssl = header.ssl
    if ssl is not None:
        for name in ("verified", "version", "cn", "cipher", "sig_alg", "key_alg", "group", "sig_scheme", "client_cert"):
            getattr(ssl, name)
    for kind in _ACCESSED_TYPES:
        header.tlv(kind)
    assert gpp.parse(header.to_bytes()) == (header, len(data))


def test_header_built_in_code_has_no_wire_bytes_of_its_own() -> None:
    # The value holds no encoder (it would import the builder): encode_header() does it.
    built = gpp.ProxyHeader(2, PROXY, AF_INET, STREAM, ("192.0.2.1", 1), ("192.0.2.2", 2))
    with pytest.raises(ValueError, match="encode_header"):
        built.to_bytes()
    data = gpp.encode_header(built)
    assert gpp.parse(data)[0].to_bytes() == data


@given(st.binary(max_size=64), st.integers(0, 64))
def test_tlvs_frame_agrees_with_split_tlvs(data: bytes, start: int) -> None:
    """The parser's framing-only walk (SSL sub-TLVs) and the splitting walk give one verdict."""
    from gevent_proxyproto._tlvs import split_tlvs, tlvs_frame

    start = min(start, len(data))
    assert tlvs_frame(data, start, len(data)) == (split_tlvs(data, start, len(data)) is not None)
    assert tlvs_frame(data, start, len(data)) == (wire.split_tlvs(data[start:]) is not None)
