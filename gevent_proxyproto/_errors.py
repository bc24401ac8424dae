"""The exceptions of gevent_proxyproto and the reason codes they carry.

Malformed bytes from the network raise :class:`InvalidHeader` (or
:class:`IncompleteHeader` while more bytes could still make a valid header)
and nothing else. The socket layer adds the failures that only exist on a live
connection (timeouts, closed connections, untrusted sources); all of them share
the base :class:`ProxyProtocolError`, so one ``except`` catches every way a
peer can fail the handshake.
"""

import enum


class Reason(str, enum.Enum):
    """Why a PROXY header was refused, in HAProxy's words (SPEC.md section 6).

    Logs and counters use these names; the ``str`` base makes them print and
    compare as plain text.
    """

    #: The connection closed before sending any byte.
    EMPTY = "EMPTY"
    #: The connection closed or was reset in the middle of the header.
    ABORT = "ABORT"
    #: The whole header did not arrive within the deadline.
    TIMEOUT = "TIMEOUT"
    #: Not all of the header has arrived yet (only ever on IncompleteHeader).
    TRUNCATED = "TRUNCATED"
    #: The bytes are not a PROXY header at all (HTTP, TLS, SSH...).
    NOT_HDR = "NOT_HDR"
    #: A PROXY header, but malformed.
    BAD_HDR = "BAD_HDR"
    #: A PROXY header of an unsupported version, family or transport.
    BAD_PROTO = "BAD_PROTO"
    #: The CRC32C TLV does not match the header.
    CRC = "CRC"
    #: The connection comes from an address not allowed to send headers.
    UNTRUSTED = "UNTRUSTED"

    def __str__(self) -> str:
        return self.value


class ProxyProtocolError(Exception):
    """Base of every error this library raises about a peer's header.

    :ivar reason: a :class:`Reason`, fit for counters and log filters.
    :ivar message: a short text naming the offending field.
    """

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"


class InvalidHeader(ProxyProtocolError):
    """The bytes can never become a valid PROXY header."""


class IncompleteHeader(ProxyProtocolError):
    """The bytes are a strict prefix of a header that may still become valid.

    :ivar needed: how many more bytes are certainly part of the header, at
        least 1. A reader may consume that many more without peeking: none of
        them can belong to the application (SPEC.md section 5).
    :ivar exact: True when exactly ``needed`` more bytes bring the next
        verdict, so a reader can wait for just those (v2: the rest of the
        preamble, then the rest of the length it declares). False when
        ``needed`` is only a lower bound (v1: the line ends at its CRLF,
        wherever that comes): a reader should look at whatever has arrived.
    """

    def __init__(self, needed: int, message: str = "header not complete yet", *, exact: bool = False) -> None:
        super().__init__(Reason.TRUNCATED, message)
        self.needed = needed
        self.exact = exact


class HeaderTimeout(ProxyProtocolError):
    """The whole header did not arrive before the deadline."""

    def __init__(self, message: str = "no complete header before the deadline") -> None:
        super().__init__(Reason.TIMEOUT, message)


class ConnectionClosed(ProxyProtocolError):
    """The peer closed or reset the connection before the header was complete.

    ``reason`` is :attr:`Reason.EMPTY` when not a byte arrived, else
    :attr:`Reason.ABORT`.
    """


class UntrustedSource(ProxyProtocolError):
    """The connection's real source is not allowed to send PROXY headers."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.UNTRUSTED, message)
