"""Building PROXY headers: v1 lines and v2 binary headers, as HAProxy sends them.

Arguments are the caller's, not the network's: bad ones raise ``ValueError``
or ``TypeError``, never a :class:`ProxyProtocolError`.
"""

import socket
import struct
from collections.abc import Iterable

from ._crc32c import crc32c as _crc32c
from ._model import Address, Command, ProxyHeader, TLVType
from ._tlvs import TLV
from ._wire import CRC32C_SIZE, UNIX_PATH_SIZE, V2_FAMILIES, V2_PREAMBLE_LENGTH, V2_SIGNATURE, V2_TRANSPORTS, V2_VERSION

_FAMILY_NIBBLES = {family: nibble for nibble, (family, _) in V2_FAMILIES.items()}
_TRANSPORT_NIBBLES = {protocol: nibble for nibble, protocol in V2_TRANSPORTS.items()}
_BLOCK_SIZES = {family: size for family, size in V2_FAMILIES.values()}
_PORTS = struct.Struct("!HH")


def build_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """Build a v1 line.

    Args:
        source: the client's ``(host, port)``; None with ``destination`` None
            gives ``PROXY UNKNOWN\\r\\n``.
        destination: the ``(host, port)`` the client connected to.

    Returns:
        The line, CRLF included. ``TCP4`` when both hosts are IPv4, else
        ``TCP6`` with an IPv4 host written v4-mapped, as HAProxy does.

    Raises:
        ValueError: a host is not an IP address, a port is out of range, or
            only one address is given.
    """
    if source is None and destination is None:
        return b"PROXY UNKNOWN\r\n"
    if source is None or destination is None:
        raise ValueError("give both source and destination, or neither (UNKNOWN)")
    family, (source_host, destination_host) = _ip_hosts(source[0], destination[0])
    protocol = "TCP4" if family == socket.AF_INET else "TCP6"
    line = f"PROXY {protocol} {source_host} {destination_host} {_port(source[1])} {_port(destination[1])}\r\n"
    return line.encode("ascii")


def build_v2(
    command: Command = Command.PROXY,
    source: Address | None = None,
    destination: Address | None = None,
    protocol: socket.SocketKind | None = socket.SOCK_STREAM,
    tlvs: Iterable[tuple[int, bytes]] = (),
    crc32c: bool = False,
) -> bytes:
    """Build a v2 header.

    Args:
        command: PROXY, or LOCAL for a health check.
        source, destination: ``(host, port)`` pairs (the family follows the
            host text; mixed families map IPv4 to ``::ffff:a.b.c.d``), AF_UNIX
            paths (``str``, or ``bytes`` starting with NUL for an abstract
            name), or both None for family UNSPEC (no address block).
        protocol: ``socket.SOCK_STREAM``, ``socket.SOCK_DGRAM`` or None for
            UNSPEC. Without addresses the transport is always UNSPEC (byte 13
            is ``0x00``, as HAProxy sends for health checks).
        tlvs: ``(type, value)`` pairs, in the order to send them.
        crc32c: add a CRC32C TLV with the correct checksum. It goes first,
            where HAProxy puts it; its position does not change its value.

    Returns:
        The header's bytes.

    Raises:
        ValueError: the command, protocol, an address, port, TLV or the total
            size is out of range.
    """
    command = Command(command)  # ValueError for any nibble but LOCAL or PROXY
    if protocol not in _TRANSPORT_NIBBLES:
        raise ValueError(f"protocol is socket.SOCK_STREAM, socket.SOCK_DGRAM or None, not {protocol!r}")
    if source is None and destination is None:
        family = socket.AF_UNSPEC
        protocol = None
        block = b""
    elif source is None or destination is None:
        raise ValueError("give both source and destination, or neither (UNSPEC)")
    elif isinstance(source, tuple) and isinstance(destination, tuple):
        family, block = _ip_block(source, destination)
    elif isinstance(source, (str, bytes)) and isinstance(destination, (str, bytes)):
        family = socket.AF_UNIX
        block = _unix_field(source) + _unix_field(destination)
    else:
        raise ValueError("source and destination must both be (host, port) or both AF_UNIX paths")
    tlv_list = list(tlvs)
    if crc32c:
        tlv_list.insert(0, (TLVType.CRC32C, b"\0" * CRC32C_SIZE))
    return _encode(command, family, protocol, block, tlv_list, crc32c)


def encode_header(header: ProxyHeader) -> bytes:
    """Encode a :class:`ProxyHeader`, typically one built in code.

    Args:
        header: any header; its :attr:`~ProxyHeader.raw` is not looked at.

    Returns:
        Its canonical encoding, with any CRC32C TLV's value recomputed.
        ``parse(encode_header(h))[0] == h`` for every header whose CRC32C
        value (if any) is the correct one. For a parsed header,
        :meth:`ProxyHeader.to_bytes` gives the bytes it was parsed from.

    Raises:
        ValueError: an address, port, TLV or the total size is out of range.
    """
    source, destination = header.source, header.destination
    if header.version == 1:
        if isinstance(source, tuple) and isinstance(destination, tuple):
            return build_v1(source, destination)
        return build_v1(None, None)
    if isinstance(source, tuple) and isinstance(destination, tuple):
        _, block = _ip_block(source, destination)
    elif source is not None and destination is not None:
        block = _unix_field(source) + _unix_field(destination)
    elif header.command == Command.PROXY:
        # UNSPEC mode keeps the family's layout (SPEC.md section 7).
        block = b"\0" * _BLOCK_SIZES[header.family]
    else:
        block = b""  # LOCAL: TLVs at byte 16, as HAProxy reads them
    has_crc = any(tlv_type == TLVType.CRC32C for tlv_type, _ in header.tlvs)
    return _encode(header.command, header.family, header.protocol, block, list(header.tlvs), has_crc)


def _encode(
    command: int,
    family: socket.AddressFamily,
    protocol: socket.SocketKind | None,
    block: bytes,
    tlvs: "list[TLV]",
    fill_crc: bool,
) -> bytes:
    parts = [block]
    crc_offset = -1
    offset = V2_PREAMBLE_LENGTH + len(block)
    for tlv_type, value in tlvs:
        value = bytes(value)
        if not 0 <= tlv_type <= 0xFF or len(value) > 0xFFFF:
            raise ValueError(f"TLV type {tlv_type} or its {len(value)}-byte value is out of range")
        if fill_crc and crc_offset < 0 and tlv_type == TLVType.CRC32C:
            if len(value) != CRC32C_SIZE:
                raise ValueError("a CRC32C TLV has 4 bytes")
            crc_offset = offset + 3
            value = b"\0" * CRC32C_SIZE
        parts.append(struct.pack("!BH", tlv_type, len(value)))
        parts.append(value)
        offset += 3 + len(value)
    body = b"".join(parts)
    if len(body) > 0xFFFF:
        raise ValueError(f"a v2 header holds at most 65535 bytes after the preamble, not {len(body)}")
    preamble = V2_SIGNATURE + struct.pack(
        "!BBH",
        V2_VERSION << 4 | int(command),
        _FAMILY_NIBBLES[family] << 4 | _TRANSPORT_NIBBLES[protocol],
        len(body),
    )
    header = preamble + body
    if crc_offset >= 0:
        checksum = _crc32c(header).to_bytes(CRC32C_SIZE, "big")
        header = header[:crc_offset] + checksum + header[crc_offset + CRC32C_SIZE :]
    return header


def _ip_hosts(source_host: str, destination_host: str) -> tuple[socket.AddressFamily, tuple[str, str]]:
    """The family of two host texts, and the hosts in canonical text; IPv4 maps into IPv6 when mixed."""
    families = (_ip_family(source_host), _ip_family(destination_host))
    if families == (socket.AF_INET, socket.AF_INET):
        return socket.AF_INET, (source_host, destination_host)
    hosts = tuple(
        _canonical_ipv6("::ffff:" + host if family == socket.AF_INET else host)
        for host, family in zip((source_host, destination_host), families, strict=False)
    )
    return socket.AF_INET6, (hosts[0], hosts[1])


def _ip_family(host: str) -> socket.AddressFamily:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, TypeError):
            continue
        if family == socket.AF_INET and socket.inet_ntop(family, socket.inet_pton(family, host)) != host:
            break  # inet_pton is lenient on some systems; we send canonical text only
        return family
    raise ValueError(f"not an IP address in canonical text: {host!r}")


def _canonical_ipv6(host: str) -> str:
    return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, host))


def _ip_block(source: tuple[str, int], destination: tuple[str, int]) -> tuple[socket.AddressFamily, bytes]:
    family, hosts = _ip_hosts(source[0], destination[0])
    packed = b"".join(socket.inet_pton(family, host) for host in hosts)
    return family, packed + _PORTS.pack(_port(source[1]), _port(destination[1]))


def _port(port: int) -> int:
    # bool is an int, but build_v1 would write it as "True".
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range 0..65535: {port!r}")
    return port


def _unix_field(path: Address) -> bytes:
    if isinstance(path, str):
        encoded = path.encode("utf-8", "surrogateescape")
        if b"\0" in encoded or not encoded:
            raise ValueError(f"an AF_UNIX path is non-empty text without NUL: {path!r}")
    elif isinstance(path, bytes) and path[:1] == b"\0":
        encoded = path
    else:
        raise ValueError(f"an AF_UNIX address is a str path or bytes starting with NUL: {path!r}")
    if len(encoded) > UNIX_PATH_SIZE:
        raise ValueError(f"an AF_UNIX address holds at most {UNIX_PATH_SIZE} bytes, not {len(encoded)}")
    return encoded.ljust(UNIX_PATH_SIZE, b"\0")
