"""The wire format's constants: signatures, sizes and codes (SPEC.md sections 2-4).

Both directions take them from here: the parsers (``_v1``, ``_v2``,
``_parser``) and the builder. This module imports only the standard library,
so it sits at the bottom of the package's import graph.
"""

import socket

# Version 1, the text line (SPEC.md section 2) ------------------------------

#: Every v1 header starts with these bytes.
V1_SIGNATURE = b"PROXY "
#: The longest legal line, CRLF included: ``PROXY UNKNOWN`` + two full IPv6
#: addresses + two 5-digit ports.
V1_MAX_LENGTH = 107
#: The shortest legal line: ``PROXY UNKNOWN\r\n``.
V1_MIN_LENGTH = 15

# Version 2, the binary header (SPEC.md section 3) --------------------------

#: The 12-byte signature (bytes 0-11).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: Signature, version/command, family/transport and length.
V2_PREAMBLE_LENGTH = 16
#: The version nibble (high half of byte 12).
V2_VERSION = 0x2
#: The largest header the 16-bit length field allows.
V2_MAX_LENGTH = V2_PREAMBLE_LENGTH + 0xFFFF

#: Family nibble -> (socket family, address block size).
V2_FAMILIES: dict[int, tuple[socket.AddressFamily, int]] = {
    0x0: (socket.AF_UNSPEC, 0),
    0x1: (socket.AF_INET, 12),
    0x2: (socket.AF_INET6, 36),
    0x3: (socket.AF_UNIX, 216),
}
#: Transport nibble -> socket type, None for UNSPEC.
V2_TRANSPORTS: dict[int, socket.SocketKind | None] = {
    0x0: None,
    0x1: socket.SOCK_STREAM,
    0x2: socket.SOCK_DGRAM,
}
#: Each AF_UNIX address in the block: a NUL-padded path or abstract name.
UNIX_PATH_SIZE = 108

# TLV values (SPEC.md section 4) ---------------------------------------------

#: HAProxy's cap for AUTHORITY: a host name fits in 255 bytes.
AUTHORITY_MAX = 255
#: The spec's limit for UNIQUE_ID.
UNIQUE_ID_MAX = 128
#: A CRC32C TLV's value: the checksum, big-endian.
CRC32C_SIZE = 4
#: The SSL TLV's fixed part: client (1) + verify (4), before the sub-TLVs.
SSL_FIXED_SIZE = 5
