"""The sending side over TCP: connect to a PROXY port as a load balancer would."""

from collections.abc import Iterable
from typing import Any

import gevent.socket

from ._sending import header_for


def create_connection(
    address: tuple[str, int],
    *,
    source: Any,
    destination: Any = None,
    version: int = 2,
    tlvs: Iterable[tuple[int, bytes]] = (),
    crc32c: bool = False,
    timeout: float | None = None,
    source_address: tuple[str, int] | None = None,
) -> Any:
    """Connect to a PROXY port and send the header, as a load balancer would.

    The header goes out in one ``sendall`` before anything else; what the
    caller sends next is the client's data.

    Args:
        address: the server's ``(host, port)``; host names are resolved.
        source: the client address to announce, ``(host, port)``; None (with
            ``destination`` None) for the sender's own connection: v1
            ``PROXY UNKNOWN``, v2 LOCAL (a health check).
        destination: the address the client connected to; by default the
            server's address of this connection (``getpeername()``).
        version: 1 or 2.
        tlvs: ``(type, value)`` pairs (v2), in order, after the CRC32C TLV.
        crc32c: add a CRC32C TLV (v2).
        timeout: seconds for the connection attempt, then the socket's
            timeout; None blocks (cooperatively) without limit.
        source_address: a local ``(host, port)`` to bind before connecting.

    Returns:
        The connected :class:`gevent.socket.socket`, header sent.

    Raises:
        ValueError: bad header arguments (checked before connecting when
            ``destination`` is given or ``source`` is None).
        OSError: the connection or the send failed.
    """
    tlvs = tuple(tlvs)
    # Bad arguments fail before any connection is made; without a destination
    # the source stands in for it (the real one is only known once connected).
    header_for(version, source, source if destination is None else destination, tlvs=tlvs, crc32c=crc32c)
    sock = gevent.socket.create_connection(address, timeout=timeout, source_address=source_address)
    try:
        if destination is None and source is not None:
            destination = sock.getpeername()
        sock.sendall(header_for(version, source, destination, tlvs=tlvs, crc32c=crc32c))
    except BaseException:
        sock.close()
        raise
    return sock


__all__ = ["create_connection"]
