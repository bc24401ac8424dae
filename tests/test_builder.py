"""build_v1() and build_v2(): exact bytes, argument errors, and round trips through parse().

The expected bytes are written by hand (SPEC.md sections 2-4), never produced
by the builder itself.
"""

import socket
from typing import Any

import pytest
from hypothesis import given

import gevent_proxyproto as gpp

from . import wire
from .wire import SIG, seal

LOCAL, PROXY = gpp.Command.LOCAL, gpp.Command.PROXY
SRC4, DST4 = ("192.0.2.1", 56324), ("198.51.100.2", 443)
SRC6, DST6 = ("2001:db8::1", 4242), ("2001:db8::2", 443)
# The hand-written blocks: 192.0.2.1 -> c0000201, 56324 -> dc04, 443 -> 01bb.
BLOCK4_HEX = "c0000201" + "c6336402" + "dc04" + "01bb"
BLOCK6_HEX = "20010db8000000000000000000000001" + "20010db8000000000000000000000002" + "1092" + "01bb"


def path_field(path: bytes) -> str:
    return path.ljust(108, b"\0").hex()


V1_BYTES = [
    pytest.param((SRC4, DST4), b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n", id="tcp4"),
    pytest.param(
        (("0.0.0.0", 0), ("255.255.255.255", 65535)),
        b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
        id="tcp4-extremes",
    ),
    pytest.param((SRC6, DST6), b"PROXY TCP6 2001:db8::1 2001:db8::2 4242 443\r\n", id="tcp6"),
    pytest.param(
        (("2001:DB8:0::1", 1), ("2001:db8::2", 2)), b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n", id="tcp6-canonical"
    ),
    pytest.param((SRC4, DST6), b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 56324 443\r\n", id="mixed-maps-v4"),
    pytest.param((SRC6, DST4), b"PROXY TCP6 2001:db8::1 ::ffff:198.51.100.2 4242 443\r\n", id="mixed-maps-v4-dst"),
    pytest.param((None, None), b"PROXY UNKNOWN\r\n", id="unknown"),
]


@pytest.mark.parametrize(("endpoints", "expected"), V1_BYTES)
def test_build_v1_bytes(endpoints: Any, expected: bytes) -> None:
    assert gpp.build_v1(*endpoints) == expected


V2_BYTES = [
    pytest.param({"command": LOCAL}, "20000000", id="haproxy-health-check"),
    pytest.param({}, "21000000", id="proxy-unspec"),
    pytest.param({"source": SRC4, "destination": DST4}, "2111000c" + BLOCK4_HEX, id="tcp4"),
    pytest.param(
        {"source": SRC4, "destination": DST4, "protocol": socket.SOCK_DGRAM}, "2112000c" + BLOCK4_HEX, id="udp4"
    ),
    pytest.param({"source": SRC4, "destination": DST4, "protocol": None}, "2110000c" + BLOCK4_HEX, id="inet-unspec"),
    pytest.param({"command": LOCAL, "source": SRC4, "destination": DST4}, "2011000c" + BLOCK4_HEX, id="local-tcp4"),
    pytest.param({"source": SRC6, "destination": DST6}, "21210024" + BLOCK6_HEX, id="tcp6"),
    pytest.param(
        {"source": SRC4, "destination": DST6},
        "21210024" + "00000000000000000000ffffc0000201" + "20010db8000000000000000000000002" + "dc04" + "01bb",
        id="mixed-maps-v4",
    ),
    pytest.param(
        {"source": "/run/a.sock", "destination": b"\0abstract"},
        "213100d8" + path_field(b"/run/a.sock") + path_field(b"\0abstract"),
        id="unix",
    ),
    pytest.param(
        {
            "source": SRC4,
            "destination": DST4,
            "tlvs": [(gpp.TLVType.ALPN, b"h2"), (gpp.TLVType.AUTHORITY, b"example.com")],
        },
        "2111001f" + BLOCK4_HEX + "0100026832" + "02000b" + b"example.com".hex(),
        id="tlvs-in-order",
    ),
]


@pytest.mark.parametrize(("arguments", "expected_hex"), V2_BYTES)
def test_build_v2_bytes(arguments: dict[str, Any], expected_hex: str) -> None:
    assert gpp.build_v2(**arguments) == SIG + bytes.fromhex(expected_hex)


def test_haproxy_health_check() -> None:
    assert gpp.build_v2(command=LOCAL).hex() == "0d0a0d0a000d0a515549540a20000000"


@pytest.mark.parametrize(
    ("arguments", "block"),
    [
        ({}, b""),
        ({"command": LOCAL}, b""),
        ({"source": SRC4, "destination": DST4, "tlvs": [(1, b"h2")]}, bytes.fromhex(BLOCK4_HEX)),
        ({"source": "/a", "destination": "/b", "protocol": socket.SOCK_DGRAM}, bytes(216)),
    ],
)
def test_crc32c_goes_first_and_verifies(arguments: dict[str, Any], block: bytes) -> None:
    data = gpp.build_v2(crc32c=True, **arguments)
    crc_at = 16 + len(block)
    assert data[crc_at : crc_at + 3] == b"\x03\x00\x04"  # CRC32C, 4 bytes, right after the block
    assert data == seal(data, crc_at + 3)  # the hand-computed CRC over the zeroed header
    parsed, length = gpp.parse(data)
    assert length == len(data)
    assert parsed.crc32c == int.from_bytes(data[crc_at + 3 : crc_at + 7], "big")
    assert parsed.tlvs[0][0] == gpp.TLVType.CRC32C
    assert list(parsed.tlvs[1:]) == list(arguments.get("tlvs", []))


def test_crc32c_catches_any_changed_byte() -> None:
    data = gpp.build_v2(source=SRC4, destination=DST4, tlvs=[(1, b"h2")], crc32c=True)
    for index in range(16, len(data)):
        changed = data[:index] + bytes((data[index] ^ 0x20,)) + data[index + 1 :]
        try:
            parsed, _ = gpp.parse(changed)
        except gpp.InvalidHeader:
            continue
        # Only a changed TLV type byte gets through: the CRC32C TLV is gone.
        assert parsed.crc32c is None and data[index] == gpp.TLVType.CRC32C, index


def test_header_built_in_code_with_a_crc32c_tlv_gets_it_recomputed() -> None:
    placeholder = gpp.ProxyHeader(2, PROXY, socket.AF_INET, socket.SOCK_STREAM, SRC4, DST4, ((3, bytes(4)), (1, b"h2")))
    parsed, _ = gpp.parse(gpp.encode_header(placeholder))
    assert parsed.crc32c is not None and parsed.crc32c != 0
    assert parsed.tlvs[1:] == placeholder.tlvs[1:]
    assert parsed == gpp.ProxyHeader(2, PROXY, socket.AF_INET, socket.SOCK_STREAM, SRC4, DST4, parsed.tlvs)


def test_largest_header() -> None:
    # `len` is 16 bits: 65535 bytes after the preamble, not one more.
    data = gpp.build_v2(tlvs=[(0x04, bytes(65532))])
    assert len(data) == 16 + 0xFFFF
    assert gpp.parse(data)[1] == len(data)
    with pytest.raises(ValueError):
        gpp.build_v2(tlvs=[(0x04, bytes(65533))])


BAD_V1 = [
    pytest.param((SRC4, None), id="source-only"),
    pytest.param((None, DST4), id="destination-only"),
    pytest.param((("example.com", 1), DST4), id="host-name"),
    pytest.param((("192.0.2.01", 1), DST4), id="ipv4-leading-zero"),
    pytest.param((("fe80::1%eth0", 1), DST6), id="zone-id"),
    pytest.param((("192.0.2.1", -1), DST4), id="port-negative"),
    pytest.param((("192.0.2.1", 65536), DST4), id="port-65536"),
    pytest.param((("192.0.2.1", "80"), DST4), id="port-text"),
    pytest.param((("192.0.2.1", 80.0), DST4), id="port-float"),
    pytest.param((("192.0.2.1", True), DST4), id="port-bool"),
]


@pytest.mark.parametrize("endpoints", BAD_V1)
def test_build_v1_bad_arguments(endpoints: Any) -> None:
    with pytest.raises(ValueError):
        gpp.build_v1(*endpoints)


BAD_V2 = [
    pytest.param({"source": SRC4}, id="source-only"),
    pytest.param({"destination": "/b"}, id="destination-only"),
    pytest.param({"source": SRC4, "destination": "/b"}, id="ip-and-path"),
    pytest.param({"source": ("example.com", 1), "destination": DST4}, id="host-name"),
    pytest.param({"source": ("192.0.2.1", 65536), "destination": DST4}, id="port-65536"),
    pytest.param({"source": ("192.0.2.1", True), "destination": DST4}, id="port-bool"),
    pytest.param({"source": "", "destination": "/b"}, id="empty-path"),
    pytest.param({"source": "/a\0b", "destination": "/b"}, id="path-with-nul"),
    pytest.param({"source": "/" + "p" * 108, "destination": "/b"}, id="path-109-bytes"),
    pytest.param({"source": b"/not-abstract", "destination": "/b"}, id="bytes-without-leading-nul"),
    pytest.param({"source": b"\0" + b"a" * 108, "destination": "/b"}, id="abstract-109-bytes"),
    pytest.param({"tlvs": [(256, b"")]}, id="tlv-type-256"),
    pytest.param({"tlvs": [(-1, b"")]}, id="tlv-type-negative"),
    pytest.param({"tlvs": [(1, bytes(65536))]}, id="tlv-value-too-long"),
    pytest.param({"tlvs": [(1, bytes(40000)), (2, bytes(40000))]}, id="total-too-long"),
    pytest.param({"command": 2}, id="command-2"),
    pytest.param({"command": 0x11}, id="command-with-version-bits"),
    pytest.param({"protocol": socket.SOCK_RAW}, id="protocol-raw-no-addresses"),
    pytest.param({"source": SRC4, "destination": DST4, "protocol": socket.SOCK_RAW}, id="protocol-raw"),
]


@pytest.mark.parametrize("arguments", BAD_V2)
def test_build_v2_bad_arguments(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        gpp.build_v2(**arguments)


def test_builder_errors_are_not_protocol_errors() -> None:
    # A caller's mistake is not a peer's bad header.
    with pytest.raises(ValueError) as info:
        gpp.build_v1(("192.0.2.1", 70000), DST4)
    assert not isinstance(info.value, gpp.ProxyProtocolError)


# Round trips through parse() -----------------------------------------------------------------------


def expected_ip_pair(source: tuple[str, int], destination: tuple[str, int]) -> tuple[Any, Any, Any]:
    """The family and addresses a header reports for two (host, port): mixed families map IPv4 into IPv6."""
    if ":" not in source[0] and ":" not in destination[0]:
        return socket.AF_INET, source, destination
    return (
        socket.AF_INET6,
        (wire.canonical_ipv6(source[0]), source[1]),
        (wire.canonical_ipv6(destination[0]), destination[1]),
    )


@given(wire.v1_endpoints)
def test_build_v1_parses_back(endpoints: Any) -> None:
    data = gpp.build_v1(*endpoints)
    parsed, length = gpp.parse(data + b"\r\nSMTP")
    assert length == len(data) <= 107 and parsed.raw == data
    if endpoints == (None, None):
        assert parsed == gpp.ProxyHeader(1, PROXY, socket.AF_UNSPEC, None, None, None)
    else:
        family, source, destination = expected_ip_pair(*endpoints)
        assert parsed == gpp.ProxyHeader(1, PROXY, family, socket.SOCK_STREAM, source, destination)
    assert gpp.parse(parsed.to_bytes())[0] == parsed
    for cut in range(length):
        with pytest.raises(gpp.IncompleteHeader):
            gpp.parse(data[:cut])


BLOCK_SIZES = {socket.AF_UNSPEC: 0, socket.AF_INET: 12, socket.AF_INET6: 36, socket.AF_UNIX: 216}


def expected_unix(address: str | bytes) -> str | bytes:
    return wire.abstract_name(address) if isinstance(address, bytes) else address


@given(wire.build_v2_arguments())
def test_build_v2_parses_back(arguments: dict[str, Any]) -> None:
    data = gpp.build_v2(**arguments)
    # LOCAL reads TLVs at byte 16 whenever they frame there as valid TLVs
    # (SPEC.md section 7), which an address block may happen to do. A block
    # that frames but breaks a TLV rule (("0.0.0.0", 3) ends in a 0-byte
    # CRC32C) is read as the block it is.
    at_16 = wire.split_tlvs(data[16:]) if arguments["command"] == LOCAL else None
    block_read_as_tlvs = at_16 is not None and wire.tlvs_obey_the_rules(data, 16, at_16)
    parsed, length = gpp.parse(data + b"\r\nSMTP")
    assert length == len(data) and parsed.raw == data
    source, destination = arguments["source"], arguments["destination"]
    protocol = arguments["protocol"]
    if source is None:
        family, protocol = socket.AF_UNSPEC, None
    elif isinstance(source, tuple):
        family, source, destination = expected_ip_pair(source, destination)
    else:
        family, source, destination = socket.AF_UNIX, expected_unix(source), expected_unix(destination)
    addressed = arguments["command"] == PROXY and family != socket.AF_UNSPEC and protocol is not None
    assert (parsed.version, parsed.command, parsed.family, parsed.protocol) == (
        2,
        arguments["command"],
        family,
        protocol,
    )
    assert (parsed.source, parsed.destination) == ((source, destination) if addressed else (None, None))

    tlvs = list(arguments["tlvs"])
    if arguments["crc32c"]:
        crc_at = 16 + BLOCK_SIZES[family] + 3  # the value of the first TLV after the block
        assert data == seal(data, crc_at)
        tlvs.insert(0, (gpp.TLVType.CRC32C, data[crc_at : crc_at + 4]))
    assert list(parsed.tlvs) == (wire.split_tlvs(data[16:]) if block_read_as_tlvs else tlvs)
    assert gpp.parse(parsed.to_bytes())[0] == parsed
