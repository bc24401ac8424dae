"""Version 2, the binary format: parsing (SPEC.md sections 3, 4 and 7).

A 16-byte preamble (signature, version/command, family/transport, length),
then ``length`` bytes: the address block of the family and TLVs filling the
rest exactly.
"""

import socket

from . import _model
from ._crc32c import crc32c
from ._errors import InvalidHeader, Reason
from ._model import Address, Command, ProxyHeader, TLVType
from ._tlvs import TLV, split_tlvs, tlvs_frame
from ._wire import (
    AUTHORITY_MAX,
    CRC32C_SIZE,
    SSL_FIXED_SIZE,
    UNIQUE_ID_MAX,
    UNIX_PATH_SIZE,
    V2_FAMILIES,
    V2_MAX_LENGTH,
    V2_PREAMBLE_LENGTH,
    V2_SIGNATURE,
    V2_TRANSPORTS,
    V2_VERSION,
)

#: ProxyHeader(...) with its raw set. Bound, not imported: the compiled build
#: declares this name as the C constructor of _c_header.pxd, and Cython refuses
#: an import into a declared name.
new_header: _model.NewHeader
globals()["new_header"] = _model.new_header

_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_inet_ntop = socket.inet_ntop
_PROXY = Command.PROXY
_LOCAL = Command.LOCAL

#: Bytes 0-13 of every valid preamble (signature, version/command,
#: family/transport) -> (command, family, protocol, address block size, the
#: size of one IP address in the block: 4 or 16 for INET and INET6 addresses
#: to read, else 0): one dict lookup decides all of them. A miss is an invalid
#: preamble, explained by the byte-by-byte checks.
_PREAMBLES = {
    V2_SIGNATURE + bytes([V2_VERSION << 4 | command, family_nibble << 4 | transport_nibble]): (
        command,
        family,
        protocol,
        block_size,
        {_AF_INET: 4, _AF_INET6: 16}.get(family, 0) if command is _PROXY and protocol is not None else 0,
    )
    for command in (_LOCAL, _PROXY)
    for family_nibble, (family, block_size) in V2_FAMILIES.items()
    for transport_nibble, protocol in V2_TRANSPORTS.items()
}


def parse_v2(data: bytes, max_length: int = V2_MAX_LENGTH) -> tuple[ProxyHeader | None, int]:
    """Parse a v2 header at the start of ``data`` (which starts with ``\\r``).

    A header longer than ``max_length`` is refused from its preamble, before
    any of the rest is looked at (or waited for).

    Returns:
        ``(header, length)``; or ``(None, needed)`` for a strict prefix,
        ``needed`` exact: the rest of the preamble, then the rest of the
        length it declares.

    Raises:
        InvalidHeader: the bytes can never be a valid header.
    """
    available = len(data)
    if available < V2_PREAMBLE_LENGTH:
        _check_preamble_prefix(data)
        return None, V2_PREAMBLE_LENGTH - available
    # The same bytes under a second name. In the compiled build it is a C
    # pointer into them (_gevent_c_v2.pxd): its slices are made straight from
    # the buffer, without the slice object and checks a slice of ``data``
    # costs. Sliced only within bounds checked here (``available``, ``length``).
    octets = data
    preamble = _PREAMBLES.get(octets[:14])
    if preamble is None:
        _check_preamble_prefix(data[:14])  # raises, naming the first bad field
        raise AssertionError("unreachable")  # pragma: no cover
    command, family, protocol, block_size, address_size = preamble
    body_length = octets[14] << 8 | octets[15]
    if command is _PROXY and body_length < block_size:
        raise InvalidHeader(
            Reason.BAD_HDR, f"v2 length {body_length} is shorter than the {family.name} address block ({block_size})"
        )
    length = V2_PREAMBLE_LENGTH + body_length
    if length > max_length:
        raise InvalidHeader(Reason.BAD_HDR, f"header over {max_length} bytes ({length})")
    if available < length:
        return None, length - available
    header = data if available == length else octets[:length]  # parse() hands us bytes

    if command is _LOCAL:
        # Addresses are ignored; TLVs sit at byte 16 (HAProxy, AWS NLB) or
        # after the family's block; bytes that frame at neither are ignored.
        tlvs = _lenient_tlvs(header, V2_PREAMBLE_LENGTH, block_size)
        return new_header(2, command, family, protocol, None, None, tlvs, header), length
    if block_size == 0:
        # PROXY with family UNSPEC: no block, real endpoints; treat the bytes
        # like LOCAL's (the spec lets the receiver ignore them).
        tlvs = _lenient_tlvs(header, V2_PREAMBLE_LENGTH, 0)
        return new_header(2, command, family, protocol, None, None, tlvs, header), length

    tlvs = () if length == V2_PREAMBLE_LENGTH + block_size else _checked_tlvs(header, V2_PREAMBLE_LENGTH + block_size)
    if address_size:  # INET or INET6: two addresses, then two ports, in network byte order
        ports = V2_PREAMBLE_LENGTH + 2 * address_size
        source_ip = octets[V2_PREAMBLE_LENGTH : V2_PREAMBLE_LENGTH + address_size]
        destination_ip = octets[V2_PREAMBLE_LENGTH + address_size : ports]
        source_port = octets[ports] << 8 | octets[ports + 1]
        destination_port = octets[ports + 2] << 8 | octets[ports + 3]
        texts = _address_texts  # a dict in the compiled build's types (_gevent_c_v2.pxd)
        source_host = texts.get(source_ip) or _address_text(family, source_ip)
        destination_host = texts.get(destination_ip) or _address_text(family, destination_ip)
        return new_header(
            2, command, family, protocol, (source_host, source_port), (destination_host, destination_port), tlvs, header
        ), length
    if protocol is None:
        # UNSPEC transport: keep the family's layout, use the real endpoints.
        return new_header(2, command, family, protocol, None, None, tlvs, header), length
    source = _unix_path(header[V2_PREAMBLE_LENGTH : V2_PREAMBLE_LENGTH + UNIX_PATH_SIZE])
    destination = _unix_path(header[V2_PREAMBLE_LENGTH + UNIX_PATH_SIZE : V2_PREAMBLE_LENGTH + 2 * UNIX_PATH_SIZE])
    return new_header(2, command, family, protocol, source, destination, tlvs, header), length


#: Packed address (4 or 16 bytes: the two never collide) -> its text.
#: inet_ntop writes each part with sprintf: two IPv6 addresses cost more than
#: the rest of a parse. The destination is one of the proxy's few listeners
#: and clients reconnect, so most lookups hit. Bounded: emptied when full, so
#: a flood of distinct addresses costs one clear() per _ADDRESS_TEXTS_MAX misses.
_address_texts: dict[bytes, str] = {}
_ADDRESS_TEXTS_MAX = 256


def _address_text(family: socket.AddressFamily, packed: bytes) -> str:
    """inet_ntop(family, packed), remembered."""
    if len(_address_texts) >= _ADDRESS_TEXTS_MAX:
        _address_texts.clear()
    text = _address_texts[packed] = _inet_ntop(family, packed)
    return text


def _check_preamble_prefix(data: bytes) -> None:
    """Fail fast on the first bytes of a preamble (SPEC.md section 7)."""
    available = len(data)
    if data[:12] != V2_SIGNATURE[:available]:
        raise InvalidHeader(Reason.NOT_HDR, "not a PROXY header: bad v2 signature")
    if available > 12:
        _check_version_command(data[12])
    if available > 13:
        _family(data[13])
        _transport(data[13])


def _check_version_command(byte: int) -> None:
    if byte >> 4 != V2_VERSION:
        raise InvalidHeader(Reason.BAD_PROTO, f"v2 version nibble is {byte >> 4}, not 2")
    if byte & 0x0F > Command.PROXY:
        raise InvalidHeader(Reason.BAD_HDR, f"v2 command nibble is {byte & 0x0F}, not LOCAL or PROXY")


def _family(byte: int) -> tuple[socket.AddressFamily, int]:
    try:
        return V2_FAMILIES[byte >> 4]
    except KeyError:
        raise InvalidHeader(
            Reason.BAD_PROTO, f"v2 family nibble {byte >> 4} is not UNSPEC, INET, INET6 or UNIX"
        ) from None


def _transport(byte: int) -> socket.SocketKind | None:
    try:
        return V2_TRANSPORTS[byte & 0x0F]
    except KeyError:
        raise InvalidHeader(
            Reason.BAD_PROTO, f"v2 transport nibble {byte & 0x0F} is not UNSPEC, STREAM or DGRAM"
        ) from None


def _unix_path(block: bytes) -> Address:
    # SPEC.md section 7: a path up to its first NUL as text; an abstract name
    # (first byte NUL) as bytes without its trailing NUL padding.
    if block[:1] == b"\0":
        return b"\0" + block[1:].rstrip(b"\0")
    end = block.find(b"\0")
    return (block if end < 0 else block[:end]).decode("utf-8", "surrogateescape")


def _checked_tlvs(header: bytes, start: int) -> tuple[TLV, ...]:
    """The TLVs from ``start`` to the end of the header; InvalidHeader if they are not valid."""
    tlvs = split_tlvs(header, start, len(header))
    if tlvs is None:
        raise InvalidHeader(Reason.BAD_HDR, "v2 TLVs do not fill the header exactly (overrun or 1-2 byte tail)")
    _check_tlvs(header, start, tlvs)
    return tlvs


def _lenient_tlvs(header: bytes, start: int, block_size: int) -> tuple[TLV, ...]:
    """TLVs where the addresses are ignored (LOCAL, family UNSPEC): SPEC.md section 7.

    1. The bytes frame as valid TLVs at ``start`` (HAProxy and AWS NLB put
       them there): those.
    2. Else they frame as valid TLVs after the family's address block (when
       the header is long enough to hold one): those. An address block may
       happen to frame at ``start`` as TLVs that break a rule (a 0.0.0.0
       address reads as an empty CRC32C); then the block is what it was.
    3. One or more framings exist and each breaks a rule (a wrong CRC32C,
       AUTHORITY that is not UTF-8...): InvalidHeader, the first framing's
       reason, as HAProxy (which reads them at byte 16) would refuse it.
    4. They frame nowhere: ignored, no TLVs.
    """
    end = len(header)
    offsets = (start, start + block_size) if block_size and start + block_size <= end else (start,)
    # The first refusal's reason and message, not the exception: raised from
    # this frame, a kept exception would be in a reference cycle with it.
    refusal: tuple[Reason, str] | None = None
    for offset in offsets:
        tlvs = split_tlvs(header, offset, end)
        if tlvs is None:
            continue
        try:
            _check_tlvs(header, offset, tlvs)
        except InvalidHeader as error:
            refusal = refusal or (error.reason, error.message)
            continue
        return tlvs
    if refusal is not None:
        raise InvalidHeader(*refusal)
    return ()


def _check_tlvs(header: bytes, start: int, tlvs: tuple[TLV, ...]) -> None:
    """The TLV rules of SPEC.md section 4; the CRC32C, the only costly one, is verified last and once."""
    crc_tlv = None
    for tlv in tlvs:
        tlv_type = tlv[0]
        if tlv_type in _CHECKED_TYPES:
            if tlv_type == _CRC32C:
                # Each CRC32C is a pass over the whole header: a second one is
                # refused before any is computed (HAProxy writes one).
                if crc_tlv is not None:
                    raise InvalidHeader(Reason.BAD_HDR, "v2 header has more than one CRC32C TLV")
                if len(tlv[1]) != CRC32C_SIZE:
                    raise InvalidHeader(Reason.BAD_HDR, f"v2 CRC32C TLV has {len(tlv[1])} bytes, not 4")
                crc_tlv = tlv
            else:
                _check_tlv(tlv_type, tlv[1])
    if crc_tlv is not None:
        # Its offset, summed only now (HAProxy writes it first: no sum at all),
        # not by every turn of the loop above.
        position = start
        for tlv in tlvs:
            if tlv is crc_tlv:
                break
            position += 3 + len(tlv[1])
        _check_crc32c(header, position + 3)


def _check_crc32c(header: bytes, start: int) -> None:
    """The CRC32C value at ``start`` against the header with that value zeroed."""
    expected = crc32c(header[:start] + b"\0\0\0\0" + header[start + 4 :])
    value = header[start : start + 4]
    if expected != int.from_bytes(value, "big"):
        raise InvalidHeader(Reason.CRC, f"v2 CRC32C mismatch: header says {value.hex()}, bytes give {expected:08x}")


def _check_tlv(tlv_type: int, value: bytes) -> None:
    size = len(value)
    if tlv_type == _AUTHORITY:
        if size > AUTHORITY_MAX:
            raise InvalidHeader(Reason.BAD_HDR, f"v2 AUTHORITY TLV has {size} bytes, over {AUTHORITY_MAX}")
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidHeader(
                Reason.BAD_HDR,
                f"v2 AUTHORITY TLV is not UTF-8 (byte {error.start}: {value[error.start : error.start + 1].hex()})",
            ) from None
    elif tlv_type == _UNIQUE_ID:
        if size > UNIQUE_ID_MAX:
            raise InvalidHeader(Reason.BAD_HDR, f"v2 UNIQUE_ID TLV has {size} bytes, over {UNIQUE_ID_MAX}")
    elif tlv_type == _SSL:
        if size < SSL_FIXED_SIZE or not tlvs_frame(value, SSL_FIXED_SIZE, size):
            raise InvalidHeader(
                Reason.BAD_HDR, "v2 SSL TLV is malformed (under 5 bytes, or sub-TLVs that do not frame)"
            )


# Plain ints: an IntEnum member lookup costs more than the comparison (bench/parse.py).
_CRC32C = int(TLVType.CRC32C)
_AUTHORITY = int(TLVType.AUTHORITY)
_UNIQUE_ID = int(TLVType.UNIQUE_ID)
_SSL = int(TLVType.SSL)
_CHECKED_TYPES = frozenset((_CRC32C, _AUTHORITY, _UNIQUE_ID, _SSL))


from ._accel import import_c_accel  # noqa: E402 - last: it may replace every name above

import_c_accel(globals(), "gevent_proxyproto._gevent_c_v2")
