"""What a PROXY port applies, and how its refusals are logged: pure, no gevent.

:class:`ProxyPolicy` and its defaults, the one helper that takes ``policy=`` or
its fields, the address helpers and :class:`RefusalLog`. Everything that
describes a port's settings imports from here, so a configuration can be
loaded (and checked) without importing gevent. :class:`RefusalLog` asks
gevent's hub for a timer only when it holds a line back, which happens on a
running server.
"""

import dataclasses
import logging
import socket as _stdlib_socket
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from ._errors import Reason
from ._model import Address
from ._trust import LOOPBACK, TrustedProxies

log = logging.getLogger("gevent_proxyproto")

#: Seconds for the whole header; the spec asks for at least 3 (one TCP retransmit).
DEFAULT_HEADER_TIMEOUT = 5.0
#: Largest header accepted, in bytes. HAProxy's v2 headers with every TLV it
#: can send (SSL details, 255-byte authority, 128-byte unique id) stay well
#: under 1 KiB; client certificates can take a few KiB more.
DEFAULT_MAX_HEADER_SIZE = 16384
#: Seconds between two WARNING lines about refusals of the same reason.
DEFAULT_WARNING_INTERVAL = 60.0
#: Seconds open connections get to finish after SIGTERM/SIGINT (``serve``'s
#: ``grace_period``, ``forward``'s ``--grace-period``).
DEFAULT_GRACE_PERIOD = 10.0

#: What the ``untrusted`` policy may say about a source not in trusted_proxies.
UNTRUSTED_REJECT = "reject"
UNTRUSTED_DIRECT = "direct"

#: Seconds ``forward`` (the relay) gives a connection to its upstream (HAProxy's ``timeout connect``).
DEFAULT_CONNECT_TIMEOUT = 5.0

#: The log line of ``serve``, ``forward`` and the monkey runner: when, how bad, what.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class ProxyPolicy:
    """How a PROXY port treats its connections.

    Args:
        trusted_proxies: networks allowed to send headers (a
            :class:`TrustedProxies` or CIDR strings); default loopback only,
            ``["*"]`` trusts everyone.
        header_timeout: seconds for the whole header (and a TLS handshake
            after it).
        max_header_size: the largest header accepted, in bytes.
        untrusted: ``"reject"`` (default) closes connections from other
            sources without reading; ``"direct"`` is HAProxy's ``expect-proxy
            layer4 if <acl>``: other sources connect directly, send no header
            and keep their real addresses. Nothing is ever sniffed.
        allow_v4_in_tcp6: accept the IPv4 addresses nginx relays write in v1
            ``TCP6`` lines.

    Raises:
        ValueError: a field is invalid; the message starts with its name.
    """

    trusted_proxies: Any = LOOPBACK
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    untrusted: str = UNTRUSTED_REJECT
    allow_v4_in_tcp6: bool = False
    trusted: TrustedProxies = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        trusted = self.trusted_proxies
        if not isinstance(trusted, TrustedProxies):
            try:
                trusted = TrustedProxies(LOOPBACK if trusted is None else trusted)
            except ValueError as error:
                raise ValueError(f"trusted_proxies: {error}") from None
        object.__setattr__(self, "trusted", trusted)
        if self.untrusted not in (UNTRUSTED_REJECT, UNTRUSTED_DIRECT):
            raise ValueError(f'untrusted must be "reject" or "direct", not {self.untrusted!r}')
        timeout = self.header_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"header_timeout must be a positive number of seconds, not {timeout!r}")
        size = self.max_header_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 16:
            raise ValueError(f"max_header_size must hold a v2 preamble (16 bytes), not {size!r}")


#: The names a caller may give instead of ``policy=``: the policy's own fields.
POLICY_FIELDS = tuple(each.name for each in dataclasses.fields(ProxyPolicy) if each.init)


def policy_from_keywords(policy: ProxyPolicy | None, keywords: dict[str, Any]) -> ProxyPolicy:
    """``policy``, or one built from its fields, which are popped from ``keywords``.

    Every class that takes ``policy=`` or its fields as keyword arguments
    calls this; the keywords left are for the caller's base class.

    Raises:
        TypeError: both ``policy`` and some of its fields were given.
        ValueError: a field is invalid.
    """
    fields = {name: keywords.pop(name) for name in POLICY_FIELDS if name in keywords}
    if policy is None:
        return ProxyPolicy(**fields)
    if fields:
        raise TypeError(f"give policy= or its fields, not both: {sorted(fields)}")
    return policy


def socket_address(family: int, address: Address) -> Any:
    """The socket module's shape for an address of ``family``: IPv6 as ``(host, port, 0, 0)``."""
    if family == _stdlib_socket.AF_INET6 and isinstance(address, tuple):
        return (address[0], address[1], 0, 0)
    return address


def describe_peer(address: Any) -> str:
    """A peer address as one log-friendly token."""
    if isinstance(address, tuple):
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return repr(address) if address else "unix-socket"


def log_to_stderr(level: int) -> None:
    """This library's lines on stderr at ``level`` (:data:`LOG_FORMAT`), leaving other loggers alone."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False  # a program that logs to stderr itself would print each line twice


#: Refusals that name no defect: a connection closed before or during its header.
QUIET_REASONS = frozenset((Reason.EMPTY.value, Reason.ABORT.value))


class RefusalLog:
    """The log lines for refused connections or datagrams: a flood cannot flood the log.

    Per reason, the first refusal in ``interval`` seconds is logged at WARNING
    and the others at DEBUG; at the end of an interval in which some were held
    back (or at the next WARNING of that reason, if it comes first), one
    WARNING says how many. ``quiet`` reasons (by default connections closed
    before or during their header: port scans, a proxy's plain TCP checks) are
    only ever worth a DEBUG line. The callers count every refusal themselves.

    Every refusal line has one shape: ``WHAT from PEER on WHERE: REASON: MESSAGE``.

    Args:
        what: the start of each line, e.g. ``"PROXY header refused"``.
        where: the listening address, as :func:`describe_peer` writes it.
        interval: seconds between two WARNING lines of one reason.
        quiet: reasons logged at DEBUG only.
    """

    def __init__(
        self,
        what: str,
        where: str = "?",
        interval: float = DEFAULT_WARNING_INTERVAL,
        quiet: Collection[str] = QUIET_REASONS,
    ) -> None:
        self.what = what
        self.where = where
        self.interval = interval
        self.quiet = quiet
        #: Reason -> when its last WARNING line was written.
        self._warned_at: dict[str, float] = {}
        #: Reason -> refusals held back at DEBUG since its last WARNING line.
        self._held_back: Counter[str] = Counter()
        self._report_timer: Any = None

    def refused(self, reason: str, message: str, real_peer: Any) -> None:
        """Log one refusal of ``reason`` from ``real_peer``, at most once per interval at WARNING."""
        if reason in self.quiet:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s from %s on %s: %s: %s", self.what, describe_peer(real_peer), self.where, reason, message)
            return
        now = time.monotonic()
        warned_at = self._warned_at.get(reason)
        if warned_at is None or now - warned_at >= self.interval:
            held_back = self._held_back.pop(reason, 0)
            if held_back:  # before its timer's report: keep the lines in order
                self._report(reason, held_back)
            self._warned_at[reason] = now
            log.warning("%s from %s on %s: %s: %s (at most one warning per reason every %g s; all are counted)",
                        self.what, describe_peer(real_peer), self.where, reason, message, self.interval)  # fmt: skip
            return
        self._held_back[reason] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s from %s on %s: %s: %s", self.what, describe_peer(real_peer), self.where, reason, message)
        if self._report_timer is None:
            # Report at the end of this reason's interval; ref=False: a pending
            # report never keeps the event loop (and so a program) alive.
            import gevent  # a running server's: loaded already

            timer = gevent.get_hub().loop.timer(max(warned_at + self.interval - now, 0.0), 0, ref=False)
            timer.start(self._report_held_back)
            self._report_timer = timer

    def close(self) -> None:
        """Report what is held back now and stop the timer: the source of refusals has stopped.

        Else the timer would outlive its server and write its line into
        whatever the process does next.
        """
        self._report_held_back()

    def _report_held_back(self) -> None:
        """The timer's callback, and :meth:`close`: report now, and be done with the timer."""
        timer, self._report_timer = self._report_timer, None
        if timer is not None:
            # Closed (which stops it, if it has not fired), not just dropped:
            # libuv's loop frees the memory of a watcher dropped unclosed
            # while it still links it.
            timer.close()
        held_back, self._held_back = self._held_back, Counter()
        for reason, count in sorted(held_back.items()):
            self._report(reason, count)

    def _report(self, reason: str, count: int) -> None:
        log.warning("%s on %s: suppressed %d more %s since the last warning", self.what, self.where, count, reason)


__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_MAX_HEADER_SIZE",
    "POLICY_FIELDS",
    "ProxyPolicy",
    "RefusalLog",
    "describe_peer",
    "policy_from_keywords",
    "socket_address",
]
