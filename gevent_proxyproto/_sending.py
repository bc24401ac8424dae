"""What a PROXY sender writes first: the header for a connection or a datagram.

:func:`header_for` is the one place that chooses a sender's header from
addresses and options; :func:`build_v1` and :func:`build_v2` write the bytes.
``create_connection``, the ``forward`` relay and :func:`format_datagram` all
use it, so what the tests compare with HAProxy's headers is what they send.
Like the rest of the core, it imports nothing from gevent.
"""

import socket
from collections.abc import Iterable
from typing import Any

from ._builder import build_v1, build_v2
from ._model import Address, Command

#: The versions a sender may write (SPEC.md sections 2 and 3).
VERSIONS = (1, 2)


def header_for(
    version: int,
    source: Any,
    destination: Any,
    *,
    protocol: socket.SocketKind = socket.SOCK_STREAM,
    tlvs: Iterable[tuple[int, bytes]] = (),
    crc32c: bool = False,
) -> bytes:
    """The header a sender writes first, as HAProxy 2.6 writes it.

    Args:
        version: 1 or 2.
        source: the client's address: ``(host, port)`` (longer socket tuples
            are cut to two items), or for v2 an AF_UNIX path. None, with
            ``destination`` None, for a connection of the sender's own: v1
            ``PROXY UNKNOWN``, v2 LOCAL with no address (HAProxy's health
            check).
        destination: the address the client connected to (the proxy's
            frontend).
        protocol: ``socket.SOCK_STREAM``, or ``socket.SOCK_DGRAM`` (v2 only).
        tlvs: ``(type, value)`` pairs for v2, sent in this order after the
            CRC32C TLV.
        crc32c: add a CRC32C TLV (v2), first, as HAProxy does.

    Returns:
        The header's bytes: IPv4 on both sides gives ``TCP4``/INET, anything
        else ``TCP6``/INET6 with an IPv4 address written v4-mapped.

    Raises:
        ValueError: a bad version, address, port or TLV, or TLVs for v1.
    """
    if version not in VERSIONS:
        raise ValueError(f"version is 1 or 2, not {version!r}")
    tlv_list = [(tlv_type, bytes(value)) for tlv_type, value in tlvs]
    if version == 1:
        if tlv_list or crc32c:
            raise ValueError("a v1 header carries no TLVs (and no CRC32C): use version 2")
        if protocol != socket.SOCK_STREAM:
            raise ValueError("v1 describes TCP connections only: use version 2 for datagrams")
        if source is None and destination is None:
            return build_v1(None, None)
        return build_v1(_ip_endpoint(source, "source"), _ip_endpoint(destination, "destination"))
    if source is None and destination is None:
        return build_v2(Command.LOCAL, tlvs=tlv_list, crc32c=crc32c)
    return build_v2(Command.PROXY, _endpoint(source), _endpoint(destination), protocol, tlv_list, crc32c)


def _endpoint(address: Any) -> Address | None:
    if isinstance(address, tuple):
        return _host_port(address)
    return address  # type: ignore[no-any-return]  # an AF_UNIX path, or None: build_v2 checks


def _ip_endpoint(address: Any, name: str) -> tuple[str, int] | None:
    if address is None:
        return None
    if not isinstance(address, tuple):
        raise ValueError(f"a v1 {name} is (host, port), not {address!r}")
    return _host_port(address)


def _host_port(address: tuple[Any, ...]) -> tuple[str, int]:
    # A socket address as getpeername() gives it: IPv6 adds flowinfo and
    # scope id, and a link-local host text carries its zone ("fe80::1%eth0").
    # The header has no room for a zone (HAProxy writes inet_ntop's text).
    if len(address) < 2:
        raise ValueError(f"an address is (host, port), not {address!r}")
    host = address[0]
    if isinstance(host, str) and "%" in host:
        host = host.partition("%")[0]
    return (host, address[1])


def format_datagram(
    payload: bytes,
    source: Any,
    destination: Any,
    *,
    tlvs: Iterable[tuple[int, bytes]] = (),
    crc32c: bool = False,
) -> bytes:
    """One UDP datagram as a PROXY v2 sender writes it: the header, then ``payload``.

    Every datagram carries its own header (SPEC.md section 3, DGRAM); this is
    what :class:`ProxyDatagramServer` reads.

    Args:
        payload: the client's datagram.
        source: the client's ``(host, port)``; None (with ``destination``
            None) for a LOCAL datagram (a health check: the receiver uses the
            real sender).
        destination: the ``(host, port)`` the client sent to.
        tlvs: ``(type, value)`` pairs, in order, after the CRC32C TLV.
        crc32c: add a CRC32C TLV, first.

    Returns:
        The datagram's bytes: a v2 header with transport DGRAM, then the payload.

    Raises:
        ValueError: a bad address, port or TLV.
    """
    header = header_for(2, source, destination, protocol=socket.SOCK_DGRAM, tlvs=tlvs, crc32c=crc32c)
    return header + bytes(payload)


__all__ = ["format_datagram", "header_for"]
