"""ProxyDatagramServer: a gevent DatagramServer for PROXY v2 over UDP.

Every datagram carries its own v2 header (SPEC.md section 3, DGRAM), parsed on
its own: nothing waits for more bytes, and a datagram whose header is
incomplete, invalid or from an untrusted sender is dropped and counted. Parsing
runs in ``do_read`` (in the hub: it never blocks), so a dropped datagram costs
no greenlet. The handler gets the payload and the client's address, which also
carries the proxy's real address: :meth:`ProxyDatagramServer.sendto` sends the
replies there, and the proxy passes them back to its client.
"""

import logging
import socket as _stdlib_socket
from collections import Counter
from typing import Any

from gevent.server import DatagramServer

from ._errors import InvalidHeader, ProxyProtocolError, Reason
from ._model import Command, ProxyHeader
from ._parser import parse
from ._policy import UNTRUSTED_DIRECT, ProxyPolicy, RefusalLog, describe_peer, policy_from_keywords, socket_address
from ._wire import V1_SIGNATURE, V2_SIGNATURE, V2_VERSION

log = logging.getLogger("gevent_proxyproto")

#: The receive buffer: the largest UDP payload (65507 bytes over IPv4, 65527
#: over IPv6) fits, so no datagram is ever cut short by the read.
MAX_DATAGRAM_SIZE = 65535
#: Datagrams dropped in one wake-up before ``do_read`` yields to the event
#: loop: a flood of bad datagrams must not starve the other greenlets.
_DROPS_PER_READ = 64

_LOCAL = Command.LOCAL
#: Byte 12 of a v2 PROXY header, and the STREAM transport nibble of byte 13.
_V2_PROXY = V2_VERSION << 4 | Command.PROXY
_STREAM_NIBBLE = 0x1
_AF_UNIX = _stdlib_socket.AF_UNIX


class ProxiedAddress(tuple):  # type: ignore[type-arg]
    """A datagram's client address, as the header gives it, that remembers the proxy.

    It is the client's address in the socket module's shape (``(host, port)``,
    or ``(host, port, 0, 0)`` for IPv6) and compares, hashes and prints as that
    tuple; :meth:`ProxyDatagramServer.sendto` sends to :attr:`real_peer`.
    For a LOCAL datagram (a health check), a header in UNSPEC mode or a direct
    sender, it is the real sender's address.
    """

    #: The real sender of the datagram: the proxy (or a direct sender).
    real_peer: Any
    #: The datagram's parsed header; None for a direct sender (``untrusted="direct"``).
    proxy_header: ProxyHeader | None

    def __new__(cls, address: Any, real_peer: Any, proxy_header: ProxyHeader | None) -> "ProxiedAddress":
        self = super().__new__(cls, address)
        self.real_peer = real_peer
        self.proxy_header = proxy_header
        return self

    def __reduce__(self) -> Any:
        return (type(self), (tuple(self), self.real_peer, self.proxy_header))


def parse_datagram(
    data: bytes, allow_v4_in_tcp6: bool = False, max_header_size: int = MAX_DATAGRAM_SIZE
) -> tuple[ProxyHeader, int]:
    """Parse the v2 header at the start of one datagram, which must hold all of it.

    What the preamble alone can refuse is refused before anything else is
    parsed (a sender of datagrams can be forged, and this runs in the hub).

    Returns:
        ``(header, length)``: the payload is ``data[length:]``.

    Raises:
        IncompleteHeader: the datagram ends inside its header (reason
            ``TRUNCATED``): it will never get the missing bytes, drop it.
        InvalidHeader: an invalid header; a header over ``max_header_size``
            (``BAD_HDR``); or a v1 header (v1 is TCP only) or a PROXY header
            with transport STREAM (it describes a TCP connection): ``BAD_PROTO``.
    """
    if data.startswith(V1_SIGNATURE):
        raise InvalidHeader(Reason.BAD_PROTO, "a v1 header on a UDP datagram: v1 describes TCP only")
    if len(data) > 13 and data[12] == _V2_PROXY and data[13] & 0x0F == _STREAM_NIBBLE and data.startswith(V2_SIGNATURE):
        raise InvalidHeader(Reason.BAD_PROTO, "a PROXY header with transport STREAM on a UDP datagram")
    return parse(data, allow_v4_in_tcp6=allow_v4_in_tcp6, max_header_size=max_header_size)


class ProxyDatagramServer(DatagramServer):  # type: ignore[misc]
    """A :class:`gevent.server.DatagramServer` whose datagrams each start with a PROXY v2 header.

    ``handle(payload, address)`` gets the payload after the header and a
    :class:`ProxiedAddress`: the client's address from the header (the real
    sender's for LOCAL datagrams and UNSPEC mode). Reply with
    ``server.sendto(reply, address)``: it goes to the proxy's real address,
    without a header, and the proxy maps it back to its client.

    Dropped (never handled) and counted in :attr:`failures`: datagrams from
    senders not in ``trusted_proxies`` (``UNTRUSTED``), datagrams that end
    inside their header (``TRUNCATED``), invalid headers (``NOT_HDR``,
    ``BAD_HDR``, ``BAD_PROTO``, ``CRC``), v1 headers and PROXY headers with
    transport STREAM (``BAD_PROTO``), headers over ``max_header_size``
    (``BAD_HDR``), and AF_UNIX addresses (``BAD_PROTO``: a reply could not be
    addressed). Transport DGRAM and UNSPEC are accepted.

    Args:
        listener, handle, spawn: as for DatagramServer.
        policy: a :class:`ProxyPolicy`; or its fields as keyword arguments:
            ``trusted_proxies`` (default loopback only), ``untrusted``
            (``"direct"``: datagrams from other senders carry no header and
            are handled with their real address), ``max_header_size``,
            ``allow_v4_in_tcp6``. ``header_timeout`` has no use here: a
            datagram's header is complete or never.
    """

    def __init__(
        self, listener: Any, handle: Any = None, spawn: Any = "default", *, policy: ProxyPolicy | None = None,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        #: How this server treats its datagrams.
        self.policy = policy_from_keywords(policy, kwargs)
        #: Dropped datagrams, by :class:`Reason`.
        self.failures: Counter[Reason] = Counter()
        self._refusals = RefusalLog("UDP datagram dropped")
        self._buffer = bytearray(MAX_DATAGRAM_SIZE)
        self._view = memoryview(self._buffer)
        super().__init__(listener, handle=handle, spawn=spawn, **kwargs)

    @property
    def warning_interval(self) -> float:
        """Seconds between two WARNING lines about drops of one reason (60); all are counted."""
        return self._refusals.interval

    @warning_interval.setter
    def warning_interval(self, seconds: float) -> None:
        self._refusals.interval = seconds

    def close(self) -> None:
        super().close()
        self._refusals.close()

    def init_socket(self) -> None:
        super().init_socket()
        self._refusals.where = describe_peer(self.address)

    def do_read(self) -> tuple[bytes, ProxiedAddress] | None:
        # Runs in the hub: never blocks. Reads until a datagram is accepted,
        # the socket is drained, or _DROPS_PER_READ were dropped.
        receive = self._socket.recvfrom_into
        for _ in range(_DROPS_PER_READ):
            try:
                size, real_peer = receive(self._buffer)
            except BlockingIOError:
                return None
            accepted = self._accept(self._view[:size].tobytes(), real_peer)
            if accepted is not None:
                return accepted
        return None

    def _accept(self, data: bytes, real_peer: Any) -> tuple[bytes, ProxiedAddress] | None:
        policy = self.policy
        if real_peer not in policy.trusted:
            if policy.untrusted == UNTRUSTED_DIRECT:
                return data, ProxiedAddress(real_peer, real_peer, None)
            self._drop(Reason.UNTRUSTED, "the sender is not in trusted_proxies", real_peer)
            return None
        try:
            header, length = parse_datagram(data, policy.allow_v4_in_tcp6, policy.max_header_size)
        except ProxyProtocolError as error:  # IncompleteHeader's reason is TRUNCATED
            message = "the datagram ends inside its header" if error.reason is Reason.TRUNCATED else error.message
            self._drop(error.reason, message, real_peer)
            return None
        source = header.source
        if header.command == _LOCAL or source is None:  # a health check, or UNSPEC mode: the real sender
            address = ProxiedAddress(real_peer, real_peer, header)
        elif header.family == _AF_UNIX:
            self._drop(Reason.BAD_PROTO, "AF_UNIX addresses on a UDP datagram", real_peer)
            return None
        else:
            address = ProxiedAddress(socket_address(header.family, source), real_peer, header)
        return data[length:], address

    def _drop(self, reason: Reason, message: str, real_peer: Any) -> None:
        self.failures[reason] += 1
        self._refusals.refused(reason.value, message, real_peer)

    def sendto(self, data: bytes, *args: Any) -> None:
        """Send a datagram; to a :class:`ProxiedAddress`, it goes to the proxy's real address.

        Args:
            data: the reply, sent as it is (no PROXY header).
            args: ``address`` or ``flags, address``, as for ``socket.sendto``.
        """
        address = args[-1]
        if isinstance(address, ProxiedAddress):
            args = (*args[:-1], address.real_peer)
        super().sendto(data, *args)


__all__ = ["ProxiedAddress", "ProxyDatagramServer", "parse_datagram"]
