"""The ``multiplex`` service: one port, several protocols, routed by the client's first bytes.

Prosody's ``net_multiplex`` for the dispatcher. After the PROXY header (on a
plain port: from the first byte) the client's first bytes are matched against
each service's ``multiplex_pattern``, in configuration order; the first match
gets the connection, with the proxied addresses. A service with
``multiplex_tls`` matches a TLS ClientHello instead, and gets the connection
after a TLS handshake with the port's TLS settings.

Nothing is consumed to decide (SPEC.md section 5's rule for the header holds
for the application bytes too): the first bytes are only peeked
(``MSG_PEEK``), so the matched handler, and the ``ssl`` module, which reads the
file descriptor itself, find them in the kernel as if nothing had looked. A
client that sends its first bytes in pieces is waited for without consuming
and without spinning: the socket's ``SO_RCVLOWAT`` is set to one more byte
than has arrived, so the kernel reports it readable only once something new
came (or the client hung up); it is restored before the handler runs. This
works on TCP sockets (Linux honours ``SO_RCVLOWAT`` in ``poll``/``epoll``),
which is what the dispatcher listens on.
"""

import enum
import re
import select
import socket as _stdlib_socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._policy import RefusalLog, describe_peer, log
from ._services import Handler

#: The built-in service's name: ``proxy_port_mappings`` and ``handler`` use it.
MULTIPLEX = "multiplex"
#: Bytes looked at before giving up, by default (Prosody's default too).
DEFAULT_MULTIPLEX_BUFFER_SIZE = 1024
#: The most a configuration may ask for. The kernel caps ``SO_RCVLOWAT`` at half
#: the receive buffer (64 KiB by default on Linux), and a protocol that needs
#: more than a few hundred bytes to be recognised is better routed by port.
MAX_MULTIPLEX_BUFFER_SIZE = 16384
#: Seconds, from the end of the PROXY header, for the client's first bytes to
#: match, and for the TLS handshake of a TLS route after the match.
DEFAULT_MULTIPLEX_TIMEOUT = 5.0
#: What ``multiplex_tls`` matches: a TLS record of type 22 (handshake) with a
#: legacy version 3.x (RFC 8446 section 5.1: clients write 0x0301, older ones
#: 0x0300..0x0303), two length bytes, then handshake type 1 (client_hello,
#: section 4). Plain-text protocols never start with byte 0x16.
TLS_CLIENT_HELLO = re.compile(rb"\x16\x03[\x00-\x04][\x00-\xff]{2}\x01")
#: Bytes of the unmatched start a log line shows.
_LOGGED_BYTES = 32

_MSG_PEEK = _stdlib_socket.MSG_PEEK
_SOL_SOCKET = _stdlib_socket.SOL_SOCKET
_SO_RCVLOWAT = _stdlib_socket.SO_RCVLOWAT
#: What a hung-up client looks like to poll(); POLLRDHUP is Linux's "the peer shut down writing".
_HUNG_UP = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


class Unmatched(enum.Enum):
    """Why a connection was closed without reaching a service."""

    #: ``multiplex_buffer_size`` bytes arrived and no pattern matched them.
    BUFFER_FULL = "buffer_full"
    #: ``multiplex_timeout`` passed before a pattern matched.
    TIMEOUT = "timeout"
    #: The client closed, hung up or reset before a pattern matched.
    CLOSED = "closed"


class NoMatch(Exception):
    """The client's first bytes matched no route; the connection must be closed."""

    def __init__(self, reason: Unmatched, seen: bytes) -> None:
        super().__init__(reason.value)
        self.reason = reason
        #: What had arrived (peeked, not consumed).
        self.seen = seen


def compile_pattern(pattern: str | bytes) -> "re.Pattern[bytes]":
    """A ``multiplex_pattern`` as a bytes regular expression (a str is encoded as UTF-8).

    Raises:
        re.error: not a regular expression.
    """
    return re.compile(pattern.encode("utf-8") if isinstance(pattern, str) else pattern)


@dataclass(frozen=True)
class Route:
    """One service a multiplex port may hand a connection to."""

    name: str
    #: Matched at the start of the first bytes (``re.match``).
    pattern: "re.Pattern[bytes]"
    handler: Handler
    #: A TLS handshake comes between the match and the handler.
    tls: bool = False


def wait_for_match(sock: Any, routes: Sequence[Route], buffer_size: int, deadline: float) -> Route:
    """Peek at a connection's first bytes until a route matches them; consume nothing.

    Args:
        sock: a connected gevent socket (a ``ProxySocket`` after its header).
        routes: tried in order on everything that has arrived; the first match wins.
        buffer_size: give up once this many bytes matched nothing.
        deadline: a ``time.monotonic()`` value.

    Returns:
        The matching route. The socket is as it was: every byte still unread,
        its ``SO_RCVLOWAT`` and timeout restored.

    Raises:
        NoMatch: its ``reason`` says why.
    """
    raw = sock._sock  # the kernel socket under the gevent one (non-blocking)
    seen = b""
    saved_lowat: int | None = None
    saved_timeout = sock.timeout
    try:
        while True:
            data = _peek(raw, buffer_size)
            if data == b"":
                raise NoMatch(Unmatched.CLOSED, seen)
            if data is not None and len(data) > len(seen):
                seen = data
                for route in routes:
                    if route.pattern.match(seen):
                        return route
                if len(seen) >= buffer_size:
                    raise NoMatch(Unmatched.BUFFER_FULL, seen)
            elif seen and _hung_up(raw):
                # Readable with nothing new: the client shut down its side
                # (its FIN makes the socket readable whatever SO_RCVLOWAT says).
                raise NoMatch(Unmatched.CLOSED, seen)
            if seen:
                if saved_lowat is None:
                    saved_lowat = raw.getsockopt(_SOL_SOCKET, _SO_RCVLOWAT)
                # Readable only once more than what was peeked has arrived.
                raw.setsockopt(_SOL_SOCKET, _SO_RCVLOWAT, len(seen) + 1)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoMatch(Unmatched.TIMEOUT, seen)
            sock.timeout = remaining
            try:
                sock._wait(sock._read_event)
            except TimeoutError:
                raise NoMatch(Unmatched.TIMEOUT, seen) from None
    except OSError as error:  # a reset, mostly
        raise NoMatch(Unmatched.CLOSED, seen) from error
    finally:
        sock.timeout = saved_timeout
        if saved_lowat is not None:
            try:
                raw.setsockopt(_SOL_SOCKET, _SO_RCVLOWAT, saved_lowat)
            except OSError:  # the socket failed meanwhile: it is closed next anyway
                pass


def _peek(raw: Any, size: int) -> bytes | None:
    """What has arrived, up to ``size`` bytes, left in the kernel; None if nothing yet, b"" at EOF."""
    try:
        return raw.recv(size, _MSG_PEEK)  # type: ignore[no-any-return]
    except BlockingIOError:
        return None


def _hung_up(raw: Any) -> bool:
    # The stdlib poll even in a monkey-patched process: a zero-timeout poll never blocks.
    import gevent.monkey

    poller = gevent.monkey.get_original("select", "poll")()
    poller.register(raw.fileno(), select.POLLIN | _HUNG_UP)
    return any(events & _HUNG_UP for _, events in poller.poll(0))


class Multiplexer:
    """The ``multiplex`` service on one port: a ``handler(sock, address)`` that routes by first bytes.

    Args:
        routes: the services to try, in order.
        buffer_size: bytes looked at, at most.
        timeout: seconds for a match (and a TLS route's handshake), from the
            handler's start.
        tls_context: a ``gevent.ssl.SSLContext`` for TLS routes; needed if
            any route has ``tls``.
        where: the listening address, for log lines.
    """

    def __init__(
        self,
        routes: Sequence[Route],
        buffer_size: int = DEFAULT_MULTIPLEX_BUFFER_SIZE,
        timeout: float = DEFAULT_MULTIPLEX_TIMEOUT,
        tls_context: Any = None,
        where: str = "?",
    ) -> None:
        if any(route.tls for route in routes) and tls_context is None:
            raise ValueError("a TLS route needs a tls_context")
        self.routes = tuple(routes)
        self.buffer_size = buffer_size
        self.timeout = timeout
        self.tls_context = tls_context
        self.where = where
        #: Connections handed to each service, by name.
        self.routed: Counter[str] = Counter()
        #: Connections closed without a match, by :class:`Unmatched` reason.
        self.failures: Counter[Unmatched] = Counter()
        #: TLS routes whose handshake failed.
        self.tls_failures = 0
        # Port scans and TCP health checks close before a match: not worth a warning.
        self._refusals = RefusalLog("multiplex: connection closed", where, quiet=(Unmatched.CLOSED.value,))
        if tls_context is not None:
            from ._tls_hook import install_starttls

            install_starttls()  # the TLS socket keeps the proxied addresses

    @property
    def warning_interval(self) -> float:
        """Seconds between two WARNING lines about unmatched connections of one reason (60); all are counted."""
        return self._refusals.interval

    @warning_interval.setter
    def warning_interval(self, seconds: float) -> None:
        self._refusals.interval = seconds

    def close(self) -> None:
        """The port stopped: report the refusals held back now (see :meth:`RefusalLog.close`)."""
        self._refusals.close()

    def __call__(self, sock: Any, address: Any) -> Any:
        deadline = time.monotonic() + self.timeout
        try:
            route = wait_for_match(sock, self.routes, self.buffer_size, deadline)
        except NoMatch as no_match:
            self._unmatched(no_match, address)
            return None  # the server closes the socket
        self.routed[route.name] += 1
        if not route.tls:
            return route.handler(sock, address)
        tls = self._tls_handshake(sock, address, route, deadline)
        if tls is None:
            return None
        with tls:
            return route.handler(tls, address)

    def _tls_handshake(self, sock: Any, address: Any, route: Route, deadline: float) -> Any:
        saved_timeout = sock.timeout
        sock.timeout = max(deadline - time.monotonic(), 0.001)
        try:
            # The ClientHello is still in the kernel: the ssl module reads it from there.
            tls = self.tls_context.wrap_socket(sock, server_side=True)
        except (OSError, ValueError) as error:  # ssl.SSLError and socket.timeout are OSErrors
            self.tls_failures += 1
            log.warning("multiplex on %s: TLS handshake for %s failed from %s: %s", self.where, route.name,
                        describe_peer(address), error)  # fmt: skip
            return None
        tls.timeout = saved_timeout
        return tls

    def _unmatched(self, no_match: NoMatch, address: Any) -> None:
        self.failures[no_match.reason] += 1
        start = no_match.seen[:_LOGGED_BYTES]
        ellipsis = "..." if len(no_match.seen) > len(start) else ""
        message = f"no service matched after {len(no_match.seen)} byte(s) {start!r}{ellipsis}"
        self._refusals.refused(no_match.reason.value, message, address)
