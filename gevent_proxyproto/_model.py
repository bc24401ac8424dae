"""The value objects of the PROXY protocol: commands, TLV types, headers.

Everything here is immutable and shaped like the socket API, so a header can be
hashed, compared, logged and handed to code that expects ``getpeername()``
results.
"""

import enum
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from ._tlvs import TLV, split_tlvs
from ._wire import CRC32C_SIZE, SSL_FIXED_SIZE

#: An endpoint as the socket module shapes it: ``(host, port)`` for IP
#: families, a ``str`` path or an abstract ``bytes`` name for AF_UNIX.
Address = tuple[str, int] | str | bytes


class Command(enum.IntEnum):
    """The v2 command nibble (SPEC.md section 3, byte 12). v1 is always PROXY."""

    #: The proxy's own connection (a health check): use the real endpoints.
    LOCAL = 0x0
    #: A relayed connection: the header carries the client's addresses.
    PROXY = 0x1


class TLVType(enum.IntEnum):
    """Top-level v2 TLV types (SPEC.md section 4)."""

    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05
    SSL = 0x20
    NETNS = 0x30
    #: Google Cloud Private Service Connect: connection id, u64 big-endian.
    GCP = 0xE0
    #: AWS: subtype 0x01 then the VPC endpoint id in ASCII.
    AWS = 0xEA
    #: Azure: subtype 0x01 then the private endpoint LinkID, u32 little-endian.
    AZURE = 0xEE


class SSLSubType(enum.IntEnum):
    """Sub-TLVs inside the SSL TLV (SPEC.md section 4)."""

    VERSION = 0x21
    CN = 0x22
    CIPHER = 0x23
    SIG_ALG = 0x24
    KEY_ALG = 0x25
    GROUP = 0x26
    SIG_SCHEME = 0x27
    CLIENT_CERT = 0x28


class SSLClient(enum.IntFlag):
    """The ``client`` flags byte of the SSL TLV (SPEC.md section 4)."""

    NONE = 0x00
    #: The client connected over TLS.
    SSL = 0x01
    #: The client presented a certificate on this connection.
    CERT_CONN = 0x02
    #: The client presented a certificate in this TLS session (maybe resumed).
    CERT_SESS = 0x04


def _text(value: bytes | None) -> str | None:
    # surrogateescape: never raise on a peer's odd bytes, and stay lossless.
    return None if value is None else value.decode("utf-8", "surrogateescape")


def first_tlv(tlvs: tuple[TLV, ...], tlv_type: int) -> bytes | None:
    """The value of the first TLV of ``tlv_type`` (SPEC.md section 7), or None."""
    for found_type, value in tlvs:
        if found_type == tlv_type:
            return value
    return None


@dataclass(frozen=True, slots=True)
class SSLInfo:
    """The SSL TLV (0x20): how the client connected to the proxy."""

    #: Flags: :class:`SSLClient`.
    client: SSLClient
    #: 0 when the client certificate was verified, or when none was presented:
    #: read :attr:`client` too (HAProxy sends 0 in both cases).
    verify: int
    #: Every sub-TLV in wire order.
    tlvs: tuple[TLV, ...]

    @classmethod
    def from_value(cls, value: bytes) -> Optional["SSLInfo"]:
        """Decode an SSL TLV's value; None if it is not well formed."""
        if len(value) < SSL_FIXED_SIZE:
            return None
        # bytes() of bytes is the same object; of a bytearray (a header built in
        # code), a copy: the framing takes exact bytes (compiled, it must).
        sub_tlvs = split_tlvs(bytes(value), SSL_FIXED_SIZE, len(value))
        if sub_tlvs is None:
            return None
        return cls(SSLClient(value[0]), int.from_bytes(value[1:5], "big"), sub_tlvs)

    @property
    def verified(self) -> bool:
        """True when a client certificate was presented and verified."""
        return bool(self.client & SSLClient.CERT_CONN) and self.verify == 0

    @property
    def version(self) -> str | None:
        """TLS version, e.g. ``"TLSv1.3"``."""
        return _text(first_tlv(self.tlvs, SSLSubType.VERSION))

    @property
    def cn(self) -> str | None:
        """Common Name of the client certificate's subject."""
        return _text(first_tlv(self.tlvs, SSLSubType.CN))

    @property
    def cipher(self) -> str | None:
        """Cipher suite, e.g. ``"TLS_AES_256_GCM_SHA384"``."""
        return _text(first_tlv(self.tlvs, SSLSubType.CIPHER))

    @property
    def sig_alg(self) -> str | None:
        """Signature algorithm of the certificate (HAProxy: its own)."""
        return _text(first_tlv(self.tlvs, SSLSubType.SIG_ALG))

    @property
    def key_alg(self) -> str | None:
        """Key algorithm of the certificate (HAProxy: its own)."""
        return _text(first_tlv(self.tlvs, SSLSubType.KEY_ALG))

    @property
    def group(self) -> str | None:
        """Key exchange group."""
        return _text(first_tlv(self.tlvs, SSLSubType.GROUP))

    @property
    def sig_scheme(self) -> str | None:
        """TLS signature scheme."""
        return _text(first_tlv(self.tlvs, SSLSubType.SIG_SCHEME))

    @property
    def client_cert(self) -> bytes | None:
        """The client certificate, DER-encoded."""
        return first_tlv(self.tlvs, SSLSubType.CLIENT_CERT)


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One parsed (or built) PROXY header, v1 or v2.

    ``source`` and ``destination`` are None whenever the real connection
    endpoints must be used: LOCAL, UNSPEC family or transport, v1 UNKNOWN.
    ``family`` and ``protocol`` mirror the wire (SPEC.md section 7).
    """

    #: 1 or 2.
    version: int
    #: :class:`Command`; v1 is always PROXY.
    command: Command
    #: ``socket.AF_INET``, ``AF_INET6``, ``AF_UNIX`` or ``AF_UNSPEC``.
    family: socket.AddressFamily
    #: ``socket.SOCK_STREAM``, ``socket.SOCK_DGRAM`` or None (UNSPEC).
    protocol: socket.SocketKind | None
    #: The client's address, or None (use the real peer).
    source: Address | None
    #: The address the client connected to, or None (use the real local end).
    destination: Address | None
    #: Top-level TLVs in wire order, duplicates, CRC32C and NOOP included.
    tlvs: tuple[TLV, ...] = ()
    #: The exact bytes this header was parsed from; None for a header built in
    #: code. Not part of equality: two encodings of the same header are equal.
    #: Only the parser sets it (``init=False``): ``dataclasses.replace()``
    #: builds a header in code, so a changed copy never carries stale bytes.
    raw: bytes | None = field(default=None, init=False, compare=False, repr=False)

    @property
    def addresses_used(self) -> bool:
        """True when the header's addresses replace the real endpoints."""
        return self.source is not None

    def tlv(self, tlv_type: int) -> bytes | None:
        """The value of the first TLV of ``tlv_type``, or None."""
        return first_tlv(self.tlvs, tlv_type)

    @property
    def alpn(self) -> bytes | None:
        """The ALPN protocol the client negotiated with the proxy."""
        return first_tlv(self.tlvs, TLVType.ALPN)

    @property
    def authority(self) -> str | None:
        """The host name the client asked for (TLS SNI)."""
        return _text(first_tlv(self.tlvs, TLVType.AUTHORITY))

    @property
    def unique_id(self) -> bytes | None:
        """The proxy's unique id for this connection."""
        return first_tlv(self.tlvs, TLVType.UNIQUE_ID)

    @property
    def crc32c(self) -> int | None:
        """The CRC32C checksum carried by the header (already verified by parse)."""
        value = first_tlv(self.tlvs, TLVType.CRC32C)
        if value is None or len(value) != CRC32C_SIZE:
            return None
        return int.from_bytes(value, "big")

    @property
    def netns(self) -> str | None:
        """The network namespace the proxy accepted the connection in."""
        return _text(first_tlv(self.tlvs, TLVType.NETNS))

    @property
    def ssl(self) -> SSLInfo | None:
        """How the client connected to the proxy over TLS."""
        value = first_tlv(self.tlvs, TLVType.SSL)
        return None if value is None else SSLInfo.from_value(value)

    @property
    def aws_vpce_id(self) -> str | None:
        """AWS PrivateLink: the VPC endpoint id the client came through."""
        value = first_tlv(self.tlvs, TLVType.AWS)
        if not value or value[0] != 0x01:
            return None
        return value[1:].decode("ascii", "surrogateescape")

    @property
    def azure_link_id(self) -> int | None:
        """Azure Private Link: the private endpoint's LinkID."""
        value = first_tlv(self.tlvs, TLVType.AZURE)
        if value is None or len(value) != 5 or value[0] != 0x01:
            return None
        return int.from_bytes(value[1:], "little")

    @property
    def gcp_psc_connection_id(self) -> int | None:
        """Google Cloud Private Service Connect: the connection id."""
        value = first_tlv(self.tlvs, TLVType.GCP)
        if value is None or len(value) != 8:
            return None
        return int.from_bytes(value, "big")

    def to_bytes(self) -> bytes:
        """The header's wire form: the bytes it was parsed from (:attr:`raw`).

        ``parse(h.to_bytes())[0] == h`` for every parsed header. A value holds
        no encoder: a header built in code (``raw`` None) is encoded by
        :func:`gevent_proxyproto.encode_header`.

        Raises:
            ValueError: the header was built in code and has no ``raw``.
        """
        if self.raw is None:
            raise ValueError("a header built in code has no wire bytes: encode it with encode_header(header)")
        return self.raw


# The parsers build a header per connection. A frozen dataclass's __init__
# sets each field through object.__setattr__ (about 1 us for eight). A plain
# class with the same slots takes eight ordinary attribute stores, the cheapest
# there are; the object then becomes a ProxyHeader, whose memory layout is the
# same (CPython checks that on the __class__ assignment). The compiled parsers
# build it in C instead (_c_header.pxd).
class _UnfrozenHeader:
    __slots__ = ProxyHeader.__slots__  # the same names in the same order: the same layout


def new_header(
    version: int,
    command: Command,
    family: socket.AddressFamily,
    protocol: socket.SocketKind | None,
    source: Address | None,
    destination: Address | None,
    tlvs: tuple[TLV, ...],
    raw: bytes | None,
) -> ProxyHeader:
    """``ProxyHeader(...)`` with its ``raw`` set, for the parsers: the same frozen object, built faster."""
    header: Any = _UnfrozenHeader()
    header.version = version
    header.command = command
    header.family = family
    header.protocol = protocol
    header.source = source
    header.destination = destination
    header.tlvs = tlvs
    header.raw = raw
    header.__class__ = ProxyHeader  # _UnfrozenHeader's own __setattr__: allowed
    return header  # type: ignore[no-any-return]


#: :func:`new_header`'s type, for the parse modules: they bind the name without
#: importing it, so that their compiled builds can declare it as C (_c_header.pxd).
NewHeader = Callable[
    [
        int,
        Command,
        socket.AddressFamily,
        socket.SocketKind | None,
        Address | None,
        Address | None,
        tuple[TLV, ...],
        bytes | None,
    ],
    ProxyHeader,
]
