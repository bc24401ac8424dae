"""ProxySocket: reading the PROXY header off live gevent connections.

This is the only module that reads a header from a socket (STYLE.md practice
7). It reads the header and not one byte more (SPEC.md section 5): a peek
finds where a v1 line ends and exact reads consume it; a v2 header is read
exactly, its length known from the preamble. A greenlet waiting for the rest of
a header sleeps on the socket, never spins, and one deadline bounds the whole
header.

It imports neither ``ssl`` nor ``gevent.ssl`` until a listening ProxySocket
starts accepting: a program may import it before ``gevent.monkey.patch_all()``.
The policy and the refusal logging are in ``_policy.py``.
"""

import errno
import socket as _stdlib_socket
import time
from collections import Counter
from typing import Any

import gevent
import gevent.socket
from gevent.lock import Semaphore
from gevent.pool import Group
from gevent.queue import Empty, Queue

from ._errors import (
    ConnectionClosed,
    HeaderTimeout,
    InvalidHeader,
    ProxyProtocolError,
    Reason,
    UntrustedSource,
)
from ._model import Address, Command, ProxyHeader
from ._parser import parse_prefix
from ._policy import (
    DEFAULT_MAX_HEADER_SIZE,
    POLICY_FIELDS,
    UNTRUSTED_DIRECT,
    ProxyPolicy,
    RefusalLog,
    describe_peer,
    log,
    policy_from_keywords,
)
from ._turns import wait_readable
from ._wire import V2_PREAMBLE_LENGTH

#: Handshakes a listening ProxySocket runs at once (headers being read plus
#: connections ready but not yet accepted).
DEFAULT_MAX_PENDING = 1024

#: One peek reads this much: every v1 line (107 bytes) and most v2 headers,
#: so a header that arrived in one segment costs one peek and one exact read.
_PEEK_SIZE = 512
_MSG_PEEK = _stdlib_socket.MSG_PEEK
_monotonic = time.monotonic
_AF_INET6 = _stdlib_socket.AF_INET6


def read_header(
    sock: Any,
    deadline: float,
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    allow_v4_in_tcp6: bool = False,
) -> ProxyHeader:
    """Read one PROXY header from a connected gevent socket, and nothing more.

    Args:
        sock: a gevent socket; its timeout is as it was afterwards.
        deadline: ``time.monotonic()`` value by which the whole header must
            have arrived.
        max_header_size: refuse larger headers.
        allow_v4_in_tcp6: see :func:`gevent_proxyproto.parse`.

    Returns:
        The header. The socket is positioned at the first application byte.

    Raises:
        InvalidHeader, HeaderTimeout, ConnectionClosed.
    """
    received = b""  # consumed: header bytes
    peeked: bytes | None = b""  # seen but not consumed yet
    drained = False  # the last recv emptied the kernel's buffer
    # Each attribute of a gevent socket is looked up through its __getattr__
    # hook (~350 instructions, unspecialised): the kernel socket once.
    kernel_socket = sock._sock
    try:
        # The first look, as _peek() takes it, written out: a call less on
        # every connection. Its wait is gevent's own (not a turn: no byte yet).
        try:
            peeked = kernel_socket.recv(_PEEK_SIZE, _MSG_PEEK)
        except BlockingIOError:
            peeked = None
        if peeked is None:
            peeked = _wait_and_recv(sock, _PEEK_SIZE, _MSG_PEEK, deadline, mid_header=False)
        if not peeked:
            raise ConnectionClosed(Reason.EMPTY, "closed before sending any byte")
        while True:
            data = received + peeked
            # The size cap is checked by parse_prefix() from a v2 preamble, before the rest is parsed or read.
            header, length, exact = parse_prefix(data, allow_v4_in_tcp6, max_header_size)
            if header is not None:
                rest = length - len(received)
                if rest:
                    # Peeked, so in the kernel's buffer: one recv takes it all
                    # (written out: a call less). Were it ever short,
                    # _recv_exactly() would read the rest.
                    chunk = kernel_socket.recv(rest)
                    if len(chunk) < rest:
                        _recv_exactly(sock, rest - len(chunk), deadline, look_first=False)
                return header
            needed = length
            known = len(data) + needed
            if known > max_header_size:  # a v1 line still arriving (v2: refused by parse_prefix())
                raise InvalidHeader(Reason.BAD_HDR, f"header over {max_header_size} bytes ({known})")
            if peeked or exact:
                # Everything seen, and `needed` more, is header: consume what
                # has arrived of it, then parse it before waiting again: the
                # bytes read may end the header, or make it invalid.
                wanted = known - len(received)
                if exact and len(data) >= V2_PREAMBLE_LENGTH:
                    # Past a v2 preamble, no byte short of the whole header
                    # brings a verdict (SPEC.md section 7): read them all, then parse.
                    del data
                    received += _recv_exactly(sock, wanted, deadline, look_first=not drained)
                    peeked = b""
                    continue
                chunk = _recv_some(sock, wanted, deadline, look_first=not drained)
                received += chunk
                # Fewer bytes than asked: the kernel had no more, so the next
                # look waits first (a trickling client: no recv that fails).
                drained = len(chunk) < wanted
                del chunk
                peeked = b""
                if len(received) > len(data) or exact:
                    continue
            # A lower bound (a v1 line), everything seen consumed and no verdict.
            # Not holding the bytes seen while waiting: as a rule the peek's
            # 512-byte buffer, shrunk, whose memory a new connection can reuse.
            del data
            if drained:
                # The kernel had no more: wait, then take up to `needed` bytes,
                # all of them header (a v1 line needs its CRLF at least). A
                # trickling client's byte costs one recv, not a look and a take.
                # Took all `needed`? More may be there: the loop looks next.
                chunk = _recv_some(sock, needed, deadline, look_first=False)
                received += chunk
                drained = len(chunk) < needed
                del chunk
                continue
            peeked = _peek(sock, deadline)
    except TimeoutError:
        raise HeaderTimeout() from None
    except OSError as error:
        raise ConnectionClosed(
            Reason.ABORT if received or peeked else Reason.EMPTY, f"connection failed: {error.strerror or error}"
        ) from None


def _wait_and_recv(sock: Any, size: int, flags: int, deadline: float, mid_header: bool = True) -> bytes:
    """Wait until bytes arrive (HeaderTimeout at the deadline), then one recv of the kernel socket.

    The wait for a connection's first bytes is gevent's own, as its ``recv``
    does, with the socket's timeout; but given the exception class, gevent
    builds none until the deadline passes (its ``recv`` makes a
    ``TimeoutError`` for every wait: memory held by each connection waiting
    for its header), and no second ``recv`` that fails before the wait. A
    wait in the middle of a header (a slow client's) also waits for its turn
    (``_turns.py``): a burst of them cannot hold the event loop.
    """
    remaining = deadline - _monotonic()
    if remaining <= 0:
        raise HeaderTimeout()
    if mid_header:
        wait_readable(sock, remaining)
    else:
        saved_timeout = sock.timeout
        sock.timeout = remaining
        try:
            sock._wait(sock._read_event, HeaderTimeout)
        finally:
            sock.timeout = saved_timeout
    return sock._sock.recv(size, flags)  # type: ignore[no-any-return]


# The reads below try the kernel socket under the gevent one (non-blocking)
# first: bytes that have already arrived (the usual case) cost no timeout to
# set, no wait and no gevent wrapper. Each does it inline: these run on every
# connection, where a helper function is a measurable cost. Each waits after
# its `except BlockingIOError` block: a greenlet waiting in there would keep
# the exception and its traceback alive for as long as the client takes.


def _peek(sock: Any, deadline: float) -> bytes:
    peeked: bytes | None = None
    try:
        peeked = sock._sock.recv(_PEEK_SIZE, _MSG_PEEK)
    except BlockingIOError:
        pass
    if peeked is None:
        peeked = _wait_and_recv(sock, _PEEK_SIZE, _MSG_PEEK, deadline)
    if not peeked:
        raise ConnectionClosed(Reason.ABORT, "closed in the middle of the header")
    return peeked


def _recv_some(sock: Any, count: int, deadline: float, look_first: bool = True) -> bytes:
    """At least one byte and at most ``count``: what has arrived (waiting for one if none has).

    ``look_first=False`` waits before the first recv: the last one emptied the kernel's buffer.
    """
    chunk: bytes | None = None
    if look_first:
        try:
            chunk = sock._sock.recv(count)
        except BlockingIOError:
            pass
    if chunk is None:
        chunk = _wait_and_recv(sock, count, 0, deadline)
    if not chunk:
        raise ConnectionClosed(Reason.ABORT, "closed in the middle of the header")
    return chunk


def _recv_exactly(sock: Any, count: int, deadline: float, look_first: bool = True) -> bytes:
    chunk: bytes | None = None
    if look_first:
        try:
            chunk = sock._sock.recv(count)  # peeked already, as a rule: all there
        except BlockingIOError:
            pass
    if chunk is None:
        chunk = _wait_and_recv(sock, count, 0, deadline)
    if len(chunk) == count:
        return chunk
    if not chunk:
        raise ConnectionClosed(Reason.ABORT, "closed in the middle of the header")
    # A bytearray: appends in linear time (a v2 header of 64 KiB may come a byte at
    # a time), and no object for the garbage collector to track while this waits.
    arrived = bytearray(chunk)
    del chunk
    while len(arrived) < count:  # the last recv emptied the kernel's buffer: wait first
        arrived += _recv_some(sock, count - len(arrived), deadline, look_first=False)
    return bytes(arrived)


class ProxySocket(gevent.socket.socket):  # type: ignore[misc]
    """A gevent socket whose connections carry a PROXY header.

    A listening ProxySocket's :meth:`accept` returns connections whose header
    has been read (only the calling greenlet waits; headers are read
    concurrently, so a slow client never delays the others). A connection's
    :meth:`getpeername` and :meth:`getsockname` report the proxied addresses
    (the real endpoints for LOCAL, UNSPEC and UNKNOWN headers, and for direct
    connections); :meth:`real_peername` and :meth:`real_sockname` always
    report the real ones, and :attr:`proxy_header` is the parsed header.

    A handler that upgrades a connection itself (StartTLS) keeps the proxied
    addresses once :func:`~gevent_proxyproto._tls_hook.install_starttls` has
    run: a listening ProxySocket runs it at its first :meth:`accept`; a
    program that calls :meth:`handshake` on connections it accepted itself
    sets ``context.sslsocket_class = ProxySSLSocket`` on its context instead.

    Args:
        family, type, proto, fileno: as for :class:`gevent.socket.socket`.
        policy: a :class:`ProxyPolicy`; or its fields as keyword arguments
            (``trusted_proxies``, ``header_timeout``, ...), not both.
        max_pending: handshakes run at once by :meth:`accept`; at the cap, a
            new connection evicts the oldest one still waiting for its
            header (counted as ``TIMEOUT``).
    """

    __slots__ = ("proxy_header", "_peer", "_local", "_policy", "_max_pending", "_acceptor")

    def __init__(
        self,
        family: int = -1,
        type: int = -1,
        proto: int = -1,
        fileno: Any = None,
        *,
        policy: ProxyPolicy | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        **policy_fields: Any,
    ) -> None:
        # None: the default policy (ProxyPolicy()); gevent_proxyproto.monkey's subclass: a plain socket.
        # Decided before the socket exists: a mistake leaks no file descriptor.
        policy = policy_from_keywords(policy, policy_fields) if policy is not None or policy_fields else None
        if policy_fields:  # what is left is not a policy field
            raise TypeError(f"unexpected keyword argument(s) {sorted(policy_fields)}; the policy's are {POLICY_FIELDS}")
        super().__init__(family, type, proto, fileno)
        #: The parsed header; None before the handshake and for direct connections.
        self.proxy_header: ProxyHeader | None = None
        self._peer: Address | None = None
        self._local: Address | None = None
        self._policy = policy
        self._max_pending = max_pending
        self._acceptor: _Acceptor | None = None

    # -- a connection ---------------------------------------------------------

    def getpeername(self) -> Any:
        """The client's address from the header, else the real peer."""
        return self._peer if self._peer is not None else self._sock.getpeername()

    def getsockname(self) -> Any:
        """The address the client connected to, from the header, else the real one."""
        return self._local if self._local is not None else self._sock.getsockname()

    def real_peername(self) -> Any:
        """The real peer: the load balancer for a proxied connection."""
        return self._sock.getpeername()

    def real_sockname(self) -> Any:
        """The real local address of this connection."""
        return self._sock.getsockname()

    def proxied_addresses(self) -> tuple[Any, Any]:
        """``(peer, local)`` as the header gives them; ``(None, None)`` when it gives none (or no header yet).

        What a TLS socket built over this connection reports (:class:`ProxySSLSocket`).
        """
        return self._peer, self._local

    def handshake(
        self, real_peer: Any = None, policy: ProxyPolicy | None = None, deadline: float | None = None
    ) -> ProxyHeader | None:
        """Read this connection's header (or not, for a direct source) and adopt its addresses.

        Args:
            real_peer: the address ``accept()`` gave; looked up when None.
            policy: defaults to the policy given to the constructor.
            deadline: a ``time.monotonic()`` value; by default
                ``policy.header_timeout`` from now.

        Returns:
            The header, or None for a direct connection (``untrusted="direct"``).

        Raises:
            ProxyProtocolError: the connection must be closed; the reason says why.
        """
        policy = policy or self._policy or _DEFAULT_POLICY
        if real_peer is None:
            real_peer = self._sock.getpeername()
        trusted = policy.trusted
        # An IP peer's verdict straight from the cache (no __contains__ call): every connection asks.
        if not (trusted.trusts_host(real_peer[0]) if type(real_peer) is tuple else real_peer in trusted):
            if policy.untrusted == UNTRUSTED_DIRECT:
                return None
            # The peer, not the list: a line per refusal must stay short (the list can be long).
            raise UntrustedSource(f"{describe_peer(real_peer)} is not in trusted_proxies")
        if deadline is None:
            deadline = _monotonic() + policy.header_timeout
        header = read_header(self, deadline, policy.max_header_size, policy.allow_v4_in_tcp6)
        self.adopt(header)
        return header

    def adopt(self, header: ProxyHeader) -> None:
        """Report ``header``'s addresses from now on (no I/O)."""
        self.proxy_header = header
        peer: Any = header.source
        local: Any = header.destination
        if peer is None or local is None:
            return
        if header.family == _AF_INET6 and isinstance(peer, tuple) and isinstance(local, tuple):
            # The socket module's shape for AF_INET6 addresses (what _policy.socket_address does, inline).
            peer, local = (peer[0], peer[1], 0, 0), (local[0], local[1], 0, 0)
        self._peer = peer
        self._local = local

    # -- a listener -----------------------------------------------------------

    def accept(self) -> tuple[Any, Any]:
        """Wait for a connection whose header has been read.

        Returns:
            ``(conn, address)``, ``address == conn.getpeername()``.
        """
        acceptor = self._acceptor or self._start_acceptor()
        if acceptor is None:  # a plain listener
            return super().accept()  # type: ignore[no-any-return]
        return acceptor.next(self.timeout)

    def _listening_policy(self) -> ProxyPolicy | None:
        """The policy :meth:`accept` applies; None makes this a plain listener.

        Always a policy here. ``gevent_proxyproto.monkey``'s socket class
        decides by the port it is bound to.
        """
        return self._policy or _DEFAULT_POLICY

    def _start_acceptor(self) -> "_Acceptor | None":
        policy = self._listening_policy()
        if policy is None:
            return None
        from ._tls_hook import install_starttls  # gevent.ssl: listening now, after any patch_all()

        install_starttls()  # before a handler can upgrade an accepted connection
        self._acceptor = _Acceptor(self, policy, self._max_pending)
        return self._acceptor

    def _accept_ready(self, timeout: float | None) -> bool:
        """Wait until :meth:`accept` would return at once; False after ``timeout``.

        What a selector must ask a PROXY listener instead of its file
        descriptor: the accept loop drains the kernel's queue as connections
        arrive, so a connection whose header is read no longer shows there.
        """
        acceptor = self._acceptor or self._start_acceptor()
        return True if acceptor is None else acceptor.wait_ready(timeout)

    @property
    def failures(self) -> "Counter[Reason]":
        """Connections refused by :meth:`accept`, by :class:`Reason`."""
        acceptor = self._acceptor
        return acceptor.failures if acceptor is not None else Counter()

    def close(self) -> None:
        acceptor = self._acceptor
        if acceptor is not None:
            self._acceptor = None
            acceptor.stop()
        super().close()


_DEFAULT_POLICY = ProxyPolicy()
_new_socket = ProxySocket.__new__
_init_gevent_socket = gevent.socket.socket.__init__


def new_connection(family: int, type: int, proto: int, fd: int) -> ProxySocket:
    """An accepted connection, before its handshake: ``ProxySocket(family, type, proto, fd)``, made faster.

    The servers' and the acceptor's way, on every connection: a connection
    takes no policy keywords, so it skips their checks (and the dict of
    keywords a call to the constructor builds), and sets the fields
    ``__init__`` sets, to the same values.
    """
    conn: ProxySocket = _new_socket(ProxySocket)
    _init_gevent_socket(conn, family, type, proto, fd)
    conn.proxy_header = conn._peer = conn._local = conn._policy = conn._acceptor = None
    conn._max_pending = DEFAULT_MAX_PENDING
    return conn


_LOCAL = Command.LOCAL


def is_health_check(header: ProxyHeader | None, real_peer: Any) -> bool:
    """LOCAL, or a v1 line naming the proxy's own socket (HAProxy's check-send-proxy): no client would."""
    if header is None:
        return False
    if header.command is _LOCAL:
        return True
    source = header.source
    # source == real_peer[:2], ports first: they differ on almost every client's
    # connection, so no tuple is made and the hosts are rarely compared.
    return (
        isinstance(source, tuple)
        and isinstance(real_peer, tuple)
        and source[1] == real_peer[1]
        and source[0] == real_peer[0]
    )


#: Seconds a health check's connection is watched, after its header, for the
#: reset that ends it before it reaches the handler. The reset follows the
#: header at once; an HTTP check's request does too, so neither waits. Short:
#: a check of a server-first protocol waits this long for its greeting.
HEALTH_CHECK_WATCH = 0.05


def health_check_ended(conn: ProxySocket, real_peer: Any, where: str) -> bool:
    """Whether ``conn``, a health check (:func:`is_health_check`), closed or reset right after its header.

    Such a connection is to be dropped (this logs its one debug line):
    handing it to an application would end in a write to a reset socket,
    and often a traceback. The caller asks :func:`is_health_check` first: a
    call less on every other connection.
    """
    try:
        gevent.socket.wait_read(conn.fileno(), timeout=HEALTH_CHECK_WATCH, timeout_exc=TimeoutError)
    except TimeoutError:
        return False  # open and silent: a check that waits for the server to speak first
    if not _hung_up(conn):
        return False
    log.debug("health check from %s on %s ended after its header", describe_peer(real_peer), where)
    return True


def _hung_up(conn: ProxySocket) -> bool:
    """Whether the peer has already closed or reset: a look at the kernel socket that never waits."""
    try:
        return not conn._sock.recv(1, _MSG_PEEK)
    except BlockingIOError:
        return False  # open, nothing sent yet: an HTTP check's request may follow
    except OSError:
        return True  # ECONNRESET


class _Acceptor:
    """The accept loop behind a listening ProxySocket.

    One greenlet accepts raw connections; each runs its handshake in its own
    greenlet (at most ``max_pending`` at once, counting those ready but not yet
    taken), and finished ones queue up for :meth:`ProxySocket.accept`.

    At the cap, a new connection evicts the handshake that has waited longest
    for its header (counted as ``TIMEOUT``): silent connections, however many,
    never hold a good one back for longer than one eviction. Connections whose
    header is read are never evicted; when they fill every slot, the loop
    waits for ``accept()`` to take one. (A listening socket shared by forked
    workers wakes each of them for a connection only one accepts: at the cap,
    the others may evict a handshake for it.)
    """

    def __init__(self, listener: ProxySocket, policy: ProxyPolicy, max_pending: int) -> None:
        self.listener = listener
        self.policy = policy
        self.failures: Counter[Reason] = Counter()
        self.ready: Queue[Any] = Queue()
        self.slots = Semaphore(max_pending)
        self.handshakes = Group()
        #: Handshake greenlets waiting for their header, oldest first (a dict keeps insertion order).
        self.waiting: dict[Any, None] = {}
        #: Handshake greenlets spawned but not yet run, with their connection: one killed now
        #: never runs its body, so stop() closes the connection for it.
        self.unstarted: dict[Any, ProxySocket] = {}
        self.refusals = RefusalLog("PROXY header refused", describe_peer(listener.getsockname()))
        self.loop = gevent.spawn(self._accept_forever)

    def next(self, timeout: float | None) -> tuple[ProxySocket, Any]:
        try:
            item = self.ready.get(timeout=timeout) if timeout != 0.0 else self.ready.get_nowait()
        except Empty:
            if timeout == 0.0:
                raise BlockingIOError(errno.EAGAIN, "no connection ready") from None
            raise TimeoutError("timed out") from None
        if isinstance(item, _Stopped):
            self.ready.put(item)  # wake the next greenlet waiting in accept(), too
            raise item
        self.slots.release()
        if isinstance(item, BaseException):
            # An accept error is the loop's last word: raise it as a plain
            # socket would, and accept again on the next call.
            self.loop = gevent.spawn(self._accept_forever)
            raise item
        return item  # type: ignore[no-any-return]

    def wait_ready(self, timeout: float | None) -> bool:
        try:
            if timeout is None or timeout > 0:
                self.ready.peek(timeout=timeout)
            else:
                self.ready.peek_nowait()
        except Empty:
            return False
        return True

    def _accept_forever(self) -> None:
        listener = self.listener
        while True:
            if self.slots.locked():
                # At the cap: once a connection waits in the kernel's queue,
                # make room for it. First yield once: handshakes spawned in a
                # burst start (in order) before this loop resumes, so the ones
                # waiting for their header are all in self.waiting.
                listener.hub.wait(listener._read_event)
                gevent.sleep(0)
                self._evict_oldest()
            self.slots.acquire()
            try:
                fd, address = self._accept_raw(listener)
            except OSError as error:
                self.ready.put(error)  # accept() raises it, as a plain socket would
                return
            conn = new_connection(listener.family, listener.type, listener.proto, fd)
            self.unstarted[self.handshakes.spawn(self._handshake, conn, address)] = conn

    @staticmethod
    def _accept_raw(listener: ProxySocket) -> tuple[int, Any]:
        while True:
            try:
                return listener._accept()  # type: ignore[no-any-return]
            except BlockingIOError:
                pass
            # Wait without the listener's own timeout: that one is for accept()'s caller.
            listener.hub.wait(listener._read_event)

    def _evict_oldest(self) -> None:
        """End the handshake that has waited longest for its header, if any; its greenlet frees the slot."""
        for greenlet in self.waiting:
            greenlet.kill(_Evicted, block=False)
            return

    def _handshake(self, conn: ProxySocket, real_peer: Any) -> None:
        current = gevent.getcurrent()
        del self.unstarted[current]  # from here on, this greenlet closes conn however it ends
        self.waiting[current] = None  # registered once running: an evicted greenlet always gets to clean up
        try:
            try:
                conn.handshake(real_peer, self.policy)
            finally:
                del self.waiting[current]
        except ProxyProtocolError as error:
            conn.close()
            self.slots.release()
            self.failures[error.reason] += 1
            self.refusals.refused(error.reason.value, error.message, real_peer)
            return
        except BaseException:
            conn.close()  # killed by stop(), or a bug: never leak the fd
            self.slots.release()
            raise
        if is_health_check(conn.proxy_header, real_peer) and health_check_ended(conn, real_peer, self.refusals.where):
            conn.close()  # no handler to run
            self.slots.release()
            return
        # The accepted address when the header names none (LOCAL, UNSPEC,
        # direct): a getpeername() now fails on a connection reset meanwhile.
        self.ready.put((conn, conn._peer if conn._peer is not None else real_peer))

    def stop(self) -> None:
        self.loop.kill(block=False)
        self.handshakes.kill(block=False)
        for conn in self.unstarted.values():
            conn.close()
        self.unstarted.clear()
        while True:
            try:
                item = self.ready.get_nowait()
            except Empty:
                break
            if isinstance(item, tuple):
                item[0].close()
        # Wake greenlets blocked in accept(): the socket is closed.
        self.ready.put(_Stopped(errno.EBADF, "Bad file descriptor"))
        self.refusals.close()


class _Evicted(HeaderTimeout):
    """Raised in a handshake waiting for its header, to make room for a new connection at ``max_pending``."""

    def __init__(self) -> None:
        super().__init__("evicted: the oldest handshake still waiting for its header when max_pending was reached")


class _Stopped(OSError):
    """accept() on a ProxySocket closed meanwhile."""


__all__ = ["Command", "ProxySocket", "read_header"]
