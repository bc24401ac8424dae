"""Hand-written PROXY header bytes and hypothesis strategies for the core tests.

The encoders here are deliberately independent of ``gevent_proxyproto._builder``
and ``_crc32c``: a test whose input is built by the code under test proves
little. Everything follows SPEC.md sections 3 and 4 directly.
"""

import socket
import struct
from typing import Any

from hypothesis import strategies as st

import gevent_proxyproto as gpp

#: The v2 signature, bytes 0-11 (SPEC.md section 3).
SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")
#: Byte 12 for version 2 with each command.
LOCAL = 0x20
PROXY = 0x21
UNIX_PATH_SIZE = 108


def tlv(tlv_type: int, value: bytes) -> bytes:
    """One TLV: type(1) length(2, big-endian) value."""
    return struct.pack("!BH", tlv_type, len(value)) + value


def v2(ver_cmd: int, fam_tr: int, body: bytes = b"", *, length: int | None = None) -> bytes:
    """A v2 header: signature, bytes 12 and 13, ``len`` (default: the body's size), body."""
    return SIG + bytes((ver_cmd, fam_tr)) + struct.pack("!H", len(body) if length is None else length) + body


def inet(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The 12-byte INET address block."""
    return _ip_block(socket.AF_INET, source, destination)


def inet6(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The 36-byte INET6 address block."""
    return _ip_block(socket.AF_INET6, source, destination)


def _ip_block(family: socket.AddressFamily, source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    hosts = socket.inet_pton(family, source[0]) + socket.inet_pton(family, destination[0])
    return hosts + struct.pack("!HH", source[1], destination[1])


def unix(source: bytes, destination: bytes) -> bytes:
    """The 216-byte UNIX address block: two NUL-padded 108-byte fields."""
    return source.ljust(UNIX_PATH_SIZE, b"\0") + destination.ljust(UNIX_PATH_SIZE, b"\0")


def ssl_value(client: int, verify: int, *sub_tlvs: tuple[int, bytes]) -> bytes:
    """The value of an SSL TLV: client flags, verify (u32), sub-TLVs."""
    return bytes((client,)) + verify.to_bytes(4, "big") + b"".join(tlv(t, v) for t, v in sub_tlvs)


def crc32c_reference(data: bytes) -> int:
    """CRC32C bit by bit, straight from the definition (reflected 0x82F63B78): slow and obvious."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def seal(header: bytes, value_offset: int) -> bytes:
    """Write the CRC32C of ``header`` (4 zero bytes at ``value_offset``) at that offset."""
    zeroed = header[:value_offset] + bytes(4) + header[value_offset + 4 :]
    return zeroed[:value_offset] + crc32c_reference(zeroed).to_bytes(4, "big") + zeroed[value_offset + 4 :]


def split_tlvs(area: bytes) -> list[tuple[int, bytes]] | None:
    """The TLVs filling ``area`` exactly, or None: the framing rule of SPEC.md section 4."""
    tlvs = []
    while area:
        if len(area) < 3 or len(area) < 3 + (area[1] << 8 | area[2]):
            return None
        end = 3 + (area[1] << 8 | area[2])
        tlvs.append((area[0], area[3:end]))
        area = area[end:]
    return tlvs


def tlvs_obey_the_rules(header: bytes, start: int, tlvs: list[tuple[int, bytes]]) -> bool:
    """Whether ``tlvs`` (framed from ``header[start:]``) obey SPEC.md section 4's rules.

    CRC32C: at most one, 4 bytes and the right checksum; AUTHORITY at most 255
    bytes of UTF-8; UNIQUE_ID at most 128; SSL at least 5 bytes with sub-TLVs
    that frame.
    """
    if sum(1 for tlv_type, _ in tlvs if tlv_type == 0x03) > 1:
        return False
    position = start
    for tlv_type, value in tlvs:
        if tlv_type == 0x02 and not _is_utf8(value):
            return False
        if tlv_type == 0x03:
            zeroed = header[: position + 3] + bytes(4) + header[position + 7 :]
            if len(value) != 4 or crc32c_reference(zeroed) != int.from_bytes(value, "big"):
                return False
        elif tlv_type == 0x02 and len(value) > 255 or tlv_type == 0x05 and len(value) > 128:
            return False
        elif tlv_type == 0x20 and (len(value) < 5 or split_tlvs(value[5:]) is None):
            return False
        position += 3 + len(value)
    return True


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def canonical_ipv6(host: str) -> str:
    """An IPv6 host as the parser reports it (``inet_ntop``); IPv4 text becomes v4-mapped."""
    if ":" not in host:
        host = "::ffff:" + host
    return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, host))


def abstract_name(name: bytes) -> bytes:
    """An abstract AF_UNIX name as the parser reports it: trailing NULs stripped (SPEC.md section 7)."""
    return b"\0" + name[1:].rstrip(b"\0")


# Hypothesis strategies ---------------------------------------------------------------------------

ports = st.integers(0, 0xFFFF)
ipv4_hosts = st.ip_addresses(v=4).map(str)
#: IPv6 hosts in the parser's canonical text, v4-mapped ones included.
ipv6_hosts = st.one_of(
    st.ip_addresses(v=6).map(lambda address: address.packed),
    st.ip_addresses(v=4).map(lambda address: bytes(10) + b"\xff\xff" + address.packed),
).map(lambda packed: socket.inet_ntop(socket.AF_INET6, packed))
ip_hosts = st.one_of(ipv4_hosts, ipv6_hosts)
ip_pairs = st.tuples(st.tuples(ip_hosts, ports), st.tuples(ip_hosts, ports))
#: A path as the parser reports it: non-empty, no NUL, any bytes (surrogateescape).
unix_paths = st.binary(min_size=1, max_size=UNIX_PATH_SIZE).map(
    lambda path: path.replace(b"\0", b"/").decode("utf-8", "surrogateescape")
)
#: Abstract names as a caller may give them (trailing NULs included).
abstract_names = st.binary(max_size=UNIX_PATH_SIZE - 1).map(lambda name: b"\0" + name)
unix_addresses = st.one_of(unix_paths, abstract_names)

#: TLV types whose values parse() checks: generated on their own, with valid values.
_CHECKED_TYPES = frozenset((gpp.TLVType.CRC32C, gpp.TLVType.AUTHORITY, gpp.TLVType.UNIQUE_ID, gpp.TLVType.SSL))
ssl_values = st.builds(
    lambda client, verify, subs: ssl_value(client, verify, *subs),
    st.integers(0, 0xFF),
    st.integers(0, 0xFFFFFFFF),
    st.lists(st.tuples(st.integers(0, 0xFF), st.binary(max_size=16)), max_size=4),
)
tlv_items = st.one_of(
    st.tuples(st.integers(0, 0xFF).filter(lambda t: t not in _CHECKED_TYPES), st.binary(max_size=32)),
    st.tuples(
        st.just(int(gpp.TLVType.AUTHORITY)),
        st.text(max_size=255).map(lambda text: text.encode("utf-8", "surrogatepass")[:255]).filter(_is_utf8),
    ),
    st.tuples(st.just(int(gpp.TLVType.UNIQUE_ID)), st.binary(max_size=128)),
    st.tuples(st.just(int(gpp.TLVType.SSL)), ssl_values),
)
tlv_lists = st.lists(tlv_items, max_size=4).map(tuple)

#: Arguments of build_v1: two (host, port) pairs, or (None, None) for UNKNOWN.
v1_endpoints = st.one_of(st.just((None, None)), ip_pairs)
transports = st.sampled_from([socket.SOCK_STREAM, socket.SOCK_DGRAM, None])


@st.composite
def build_v2_arguments(draw: Any) -> dict[str, Any]:
    """Keyword arguments of a valid build_v2 call, every family and command."""
    source, destination = draw(st.one_of(st.just((None, None)), ip_pairs, st.tuples(unix_addresses, unix_addresses)))
    return {
        "command": draw(st.sampled_from(gpp.Command)),
        "source": source,
        "destination": destination,
        "protocol": draw(transports),
        "tlvs": draw(tlv_lists),
        "crc32c": draw(st.booleans()),
    }


def _addresses_of(family: socket.AddressFamily) -> Any:
    if family == socket.AF_INET:
        return st.tuples(st.tuples(ipv4_hosts, ports), st.tuples(ipv4_hosts, ports))
    if family == socket.AF_INET6:
        return st.tuples(st.tuples(ipv6_hosts, ports), st.tuples(ipv6_hosts, ports))
    normal = st.one_of(unix_paths, abstract_names.map(abstract_name))
    return st.tuples(normal, normal)


@st.composite
def headers(draw: Any) -> gpp.ProxyHeader:
    """A ProxyHeader built in code (no ``raw``), shaped as parse() would report it."""
    if draw(st.booleans()):
        family = draw(st.sampled_from([socket.AF_INET, socket.AF_INET6, socket.AF_UNSPEC]))
        if family == socket.AF_UNSPEC:
            return gpp.ProxyHeader(1, gpp.Command.PROXY, family, None, None, None)
        source, destination = draw(_addresses_of(family))
        return gpp.ProxyHeader(1, gpp.Command.PROXY, family, socket.SOCK_STREAM, source, destination)
    command = draw(st.sampled_from(gpp.Command))
    family = draw(st.sampled_from([socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6, socket.AF_UNIX]))
    protocol = draw(transports)
    source = destination = None
    if command == gpp.Command.PROXY and family != socket.AF_UNSPEC and protocol is not None:
        source, destination = draw(_addresses_of(family))
    return gpp.ProxyHeader(2, command, family, protocol, source, destination, draw(tlv_lists))


#: Valid headers on the wire, v1 and v2.
wire_headers = st.one_of(
    v1_endpoints.map(lambda pair: gpp.build_v1(*pair)),
    build_v2_arguments().map(lambda arguments: gpp.build_v2(**arguments)),
)


#: The bytes v1 lines are made of: mutations and garbage that reach deep into the grammar.
_V1_ALPHABET = "PROXY TCP46UNKOWN0123456789abcdefABCDEF:.%+-_ \r\n"
_some_byte = st.one_of(st.sampled_from(_V1_ALPHABET.encode()), st.integers(0, 0xFF))


@st.composite
def mutated_headers(draw: Any) -> bytes:
    """A valid header with a few bytes replaced, inserted or deleted."""
    data = bytearray(draw(wire_headers))
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(("replace", "insert", "delete")))
        if kind == "insert" or index == len(data):
            data.insert(index, draw(_some_byte))
        elif kind == "replace":
            data[index] = draw(_some_byte)
        else:
            del data[index]
    return bytes(data)


#: Starts that lead arbitrary bytes past the first checks, deep into both parsers.
_DEEP_STARTS = [
    b"",
    b"PROXY ",
    b"PROXY TCP4 ",
    b"PROXY TCP6 ",
    b"PROXY UNKNOWN",
    SIG,
    SIG + b"\x21",
    SIG + b"\x20\x11",
    SIG + b"\x21\x11\x00\x0c",
    SIG + b"\x21\x31\x00\xd8",
]
#: v1-shaped lines: real and broken fields, any separators and line ends.
v1_like_lines = st.builds(
    lambda protocol, fields, separator, end: b"PROXY " + separator.join([protocol, *fields]) + end,
    st.sampled_from([b"TCP4", b"TCP6", b"UNKNOWN", b"TCP"]),
    st.lists(
        st.one_of(
            ipv4_hosts.map(str.encode),
            ipv6_hosts.map(str.encode),
            ports.map(lambda port: str(port).encode()),
            st.text(_V1_ALPHABET, max_size=8).map(str.encode),
        ),
        max_size=5,
    ),
    st.sampled_from([b" ", b" ", b"  ", b"\t"]),
    st.sampled_from([b"\r\n", b"", b"\r", b"\n", b" \r\n", b"\r\r\n"]),
)
#: One field of a TCP4 line: valid octets and ports with the edges the grammar draws (leading
#: zeros, 255/256, 65535/65536, six digits) and a few bytes that are neither.
_decimal_texts = st.one_of(
    st.integers(0, 70000).map(lambda number: str(number).encode()),
    st.sampled_from([b"0", b"00", b"01", b"255", b"256", b"999", b"65535", b"65536", b"099999", b"100000", b""]),
    st.text("0123456789.+-x ", max_size=4).map(str.encode),
)
_dotted_texts = st.lists(_decimal_texts, min_size=1, max_size=5).map(b".".join)
#: TCP4 lines, valid and nearly valid, complete or cut short, sometimes with bytes after them.
tcp4_like_lines = st.builds(
    lambda source, destination, source_port, destination_port, separator, end, after: (
        b"PROXY TCP4 " + separator.join([source, destination, source_port, destination_port]) + end + after
    ),
    st.one_of(ipv4_hosts.map(str.encode), _dotted_texts),
    st.one_of(ipv4_hosts.map(str.encode), _dotted_texts),
    st.one_of(ports.map(lambda port: str(port).encode()), _decimal_texts),
    st.one_of(ports.map(lambda port: str(port).encode()), _decimal_texts),
    st.sampled_from([b" ", b" ", b" ", b"  ", b"\t"]),
    st.sampled_from([b"\r\n", b"\r\n", b"", b"\r", b"\n", b"\n\r", b" \r\n"]),
    st.sampled_from([b"", b"GET / HTTP/1.1\r\n", b"\r\n"]),
)
arbitrary_bytes = st.one_of(
    v1_like_lines,
    tcp4_like_lines,
    st.binary(max_size=300),
    st.tuples(st.sampled_from(_DEEP_STARTS), st.binary(max_size=300)).map(lambda parts: parts[0] + parts[1]),
    st.tuples(st.sampled_from(_DEEP_STARTS[1:5]), st.text(_V1_ALPHABET, max_size=110)).map(
        lambda parts: parts[0] + parts[1].encode()
    ),
)
