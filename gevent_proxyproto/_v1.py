"""Version 1, the text format: parsing (SPEC.md section 2).

``PROXY <TCP4|TCP6|UNKNOWN> <src> <dst> <srcport> <dstport>\\r\\n``, with the
strict grammar of our receiver policy: single spaces, dotted quads without
leading zeros, ports 0..65535 without sign or leading zero, CRLF within 107
bytes. Validation is by compiled patterns and explicit checks, never
``split()`` + ``int()`` (which would let ``+80``, ``080`` or ``8_0`` through).
"""

import re
import socket

from . import _model
from ._errors import InvalidHeader, Reason
from ._model import Command, ProxyHeader
from ._wire import V1_MAX_LENGTH, V1_MIN_LENGTH, V1_SIGNATURE

#: ProxyHeader(...) with its raw set. Bound, not imported: the compiled build
#: declares this name as the C constructor of _c_header.pxd, and Cython refuses
#: an import into a declared name.
new_header: _model.NewHeader
globals()["new_header"] = _model.new_header

_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# Unrolled: a repeated group costs the regex engine more than four copies.
_IPV4 = _OCTET + rb"\." + _OCTET + rb"\." + _OCTET + rb"\." + _OCTET
_PORT = rb"(0|[1-9][0-9]{0,4})"
# Candidate IPv6 text; inet_pton has the final word (it rejects zone ids too).
_IPV6 = rb"[0-9A-Fa-f:.]{2,45}"

# A whole TCP line, from byte 0 through its CRLF: one match() decides the common case.
_TCP4_LINE = re.compile(rb"PROXY TCP4 (" + _IPV4 + rb") (" + _IPV4 + rb") " + _PORT + rb" " + _PORT + rb"\r\n")
_TCP6_LINE = re.compile(rb"PROXY TCP6 (" + _IPV6 + rb") (" + _IPV6 + rb") " + _PORT + rb" " + _PORT + rb"\r\n")
_IPV4_ONLY = re.compile(_IPV4)

# Patterns for a field that is still arriving: every prefix of a valid value
# matches (a prefix of a valid octet or port is itself a valid one).
_IPV4_PREFIX = re.compile(rb"(?:" + _OCTET + rb"\.){0,3}(?:" + _OCTET + rb")?")
_IPV6_PREFIX = re.compile(rb"[0-9A-Fa-f:.]{0,45}")
_PORT_PREFIX = re.compile(rb"(?:0|[1-9][0-9]{0,4})?")
_PROTOCOLS = (b"TCP4", b"TCP6", b"UNKNOWN")

# A TCP line still arriving whose fields so far are well-formed (what
# _check_prefix accepts, in one match): each field a prefix of a valid one,
# ports at most 65535. Not every such prefix (not "PROXY TC", nor empty
# fields): the rest go the slow way, which also explains a refusal.
_PORT_VALUE = rb"(?:0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_PARTIAL_TCP_LINE = re.compile(
    rb"PROXY TCP(?:4 (?:%(v4)s(?: %(v4)s(?: %(port)s?(?: %(port)s?)?)?)?)|6 (?:%(v6)s(?: %(v6)s(?: %(port)s?(?: %(port)s?)?)?)?))"
    % {b"v4": _IPV4_PREFIX.pattern, b"v6": _IPV6_PREFIX.pattern, b"port": _PORT_VALUE}
)

_SIGNATURE_LENGTH = len(V1_SIGNATURE)
_CR = 0x0D
_LF = 0x0A

_PROXY = Command.PROXY
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_SOCK_STREAM = socket.SOCK_STREAM


def parse_v1(data: bytes, allow_v4_in_tcp6: bool = False) -> tuple[ProxyHeader | None, int]:
    """Parse a v1 line at the start of ``data`` (which starts with ``P``).

    Args:
        data: the bytes received so far, from byte 0 of the stream.
        allow_v4_in_tcp6: accept IPv4 text in a ``TCP6`` line, as nginx relays
            emit; such addresses are reported v4-mapped (``::ffff:a.b.c.d``).

    Returns:
        ``(header, length)``; or ``(None, needed)`` when there is no CRLF yet
        and the bytes may still become valid (``needed``: a lower bound).

    Raises:
        InvalidHeader: the line can never be valid.
    """
    tcp6 = data[9:10] == b"6"  # "PROXY TCP6"
    if _COMPILED and not tcp6:  # the compiled build scans a TCP4 line in C (below); None: not one to take
        scanned = _scan_tcp4_line(data)
        if scanned is not None:
            return scanned
    # No line end yet (a trickling client's bytes): no pattern can match. After
    # the scan: a complete line, every connection's, pays nothing for it. An
    # int operand: `in` is one memchr (a bytes one costs ~10 times more).
    if _CR not in data:
        return None, _unterminated(data)
    match = (_TCP6_LINE if tcp6 else _TCP4_LINE).match(data)
    if match is None or (length := match.end()) > V1_MAX_LENGTH:
        return _parse_other_line(data)
    source_host, destination_host, source_port_text, destination_port_text = match.groups()
    # The pattern allows 5 digits: only the value can be out of range.
    source_port = int(source_port_text)
    destination_port = int(destination_port_text)
    if source_port > 0xFFFF or destination_port > 0xFFFF:
        raise InvalidHeader(
            Reason.BAD_HDR, f"v1 port out of range: {source_port if source_port > 0xFFFF else destination_port}"
        )
    if tcp6:
        source = (_ipv6_texts.get(source_host) or _ipv6_text(source_host, allow_v4_in_tcp6), source_port)
        destination = (
            _ipv6_texts.get(destination_host) or _ipv6_text(destination_host, allow_v4_in_tcp6),
            destination_port,
        )
        return new_header(1, _PROXY, _AF_INET6, _SOCK_STREAM, source, destination, (), data[:length]), length
    # The pattern admits only ASCII digits and dots: decode() (UTF-8, its fast path) is exact.
    source = (source_host.decode(), source_port)
    destination = (destination_host.decode(), destination_port)
    return new_header(1, _PROXY, _AF_INET, _SOCK_STREAM, source, destination, (), data[:length]), length


# -- the compiled build's TCP4 line ------------------------------------------------------------------
#
# Compiled by Cython (setup.py, _accel.py), this module scans a TCP4 line byte
# by byte in C, with the types of _gevent_c_v1.pxd: ~1,600 instructions, where
# the regular expression above costs ~10,000 more (its engine, its match object
# and groups, int() of texts, the interpreter). In pure Python such a loop is
# slower than the regex, which stays the pure build's way, and the only way for
# anything the scan does not accept. tests/test_parser.py holds the scan to the
# regex's verdicts; tests/test_accel.py, the compiled parse() to the pure one's.

#: True in the compiled build of this module: the module's own name says which runs.
_COMPILED = __name__ == "gevent_proxyproto._gevent_c_v1"
_TCP4_PREFIX = b"PROXY TCP4 "
#: "PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n"
_TCP4_MIN_LENGTH = 32
_SPACE = 0x20
_DOT = 0x2E
_ZERO = 0x30
_NINE = 0x39


def _scan_tcp4_line(data: bytes) -> tuple[ProxyHeader, int] | None:
    """:func:`parse_v1` of a complete TCP4 line that the strict grammar accepts; None for anything else.

    Exactly what ``_TCP4_LINE`` matches, with both ports at most 65535: the
    same header, field for field. Anything else (a line still arriving, a
    port out of range, any defect) is None, for the regex path to judge and
    explain.
    """
    size = len(data)
    if size < _TCP4_MIN_LENGTH or not data.startswith(_TCP4_PREFIX):
        return None
    source_start = len(_TCP4_PREFIX)
    source_end = _ipv4_end(data, source_start, size)
    if source_end < 0 or source_end >= size or data[source_end] != _SPACE:
        return None
    destination_start = source_end + 1
    destination_end = _ipv4_end(data, destination_start, size)
    if destination_end < 0 or destination_end >= size or data[destination_end] != _SPACE:
        return None
    source_port_start = destination_end + 1
    source_port_end = _digits_end(data, source_port_start, size)
    source_port = _decimal(data, source_port_start, source_port_end, 0xFFFF)
    if source_port < 0 or source_port_end >= size or data[source_port_end] != _SPACE:
        return None
    destination_port_start = source_port_end + 1
    destination_port_end = _digits_end(data, destination_port_start, size)
    destination_port = _decimal(data, destination_port_start, destination_port_end, 0xFFFF)
    length = destination_port_end + 2
    if (
        destination_port < 0
        or length > size
        or data[destination_port_end] != _CR
        or data[destination_port_end + 1] != _LF
    ):
        return None
    # Only ASCII digits and dots: decode() is exact.
    source = (data[source_start:source_end].decode("ascii"), source_port)
    destination = (data[destination_start:destination_end].decode("ascii"), destination_port)
    octets = data  # a C pointer into data (_gevent_c_v1.pxd): the line is copied out without a slice object
    return new_header(1, _PROXY, _AF_INET, _SOCK_STREAM, source, destination, (), octets[:length]), length


def _scan_tcp4_prefix(data: bytes) -> bool:
    """Whether ``data`` is a TCP4 line still arriving, well-formed so far: a prefix of ``PROXY TCP4 ``, or that
    and fields separated by single spaces, each a prefix of a valid one (``1.2.``, ``655``), the last possibly empty.

    False means only "not decided here": the pattern, then the field-by-field
    checks, judge. tests/test_parser.py holds every True to their verdict.
    """
    size = len(data)
    if not data.startswith(_TCP4_PREFIX):
        return _TCP4_PREFIX.startswith(data)
    start = len(_TCP4_PREFIX)
    for field in range(4):
        if field < 2:
            end = _ipv4_prefix_end(data, start, size)
        else:
            end = _digits_end(data, start, size)
            if end > start and _decimal(data, start, end, 0xFFFF) < 0:
                return False
        if end < 0:
            return False
        if end == size:
            return True
        if data[end] != _SPACE or end == start:  # another byte, or an empty field before a space
            return False
        start = end + 1
    return False  # a fifth field


def _ipv4_prefix_end(data: bytes, position: int, size: int) -> int:
    """Where a prefix of a dotted quad that starts at ``position`` ends (``1.2.`` included); -1 if an octet is invalid."""
    for octet in range(4):
        if octet:
            if position >= size or data[position] != _DOT:
                return position
            position += 1
        end = _digits_end(data, position, size)
        if end == position:
            return position  # empty, or just after a dot
        if _decimal(data, position, end, 255) < 0:
            return -1
        position = end
    return position


def _ipv4_end(data: bytes, position: int, size: int) -> int:
    """Where a dotted quad that starts at ``position`` ends (each octet 0-255, no leading zero); -1 if none does."""
    for octet in range(4):
        if octet:
            if position >= size or data[position] != _DOT:
                return -1
            position += 1
        end = _digits_end(data, position, size)
        if _decimal(data, position, end, 255) < 0:
            return -1
        position = end
    return position


def _digits_end(data: bytes, position: int, size: int) -> int:
    """The index of the first byte at or after ``position`` that is not an ASCII digit (or ``size``)."""
    while position < size and _ZERO <= data[position] <= _NINE:
        position += 1
    return position


def _decimal(data: bytes, start: int, end: int, maximum: int) -> int:
    """The value of the digits ``data[start:end]``; -1 if there are none, more than five, a leading zero, or it is over ``maximum``."""
    digits = end - start
    if digits < 1 or digits > 5 or digits > 1 and data[start] == _ZERO:
        return -1
    value = 0
    for position in range(start, end):
        value = value * 10 + data[position] - _ZERO
    return value if value <= maximum else -1


def _parse_other_line(data: bytes) -> tuple[ProxyHeader | None, int]:
    """Everything but a complete, well-formed TCP line: UNKNOWN, a line still arriving, or an error."""
    # The CR must leave room for its LF within V1_MAX_LENGTH (107) bytes.
    end = data.find(b"\r", _SIGNATURE_LENGTH, V1_MAX_LENGTH - 1)
    if end < 0 or end + 1 >= len(data) or data[end + 1] != _LF or data[:_SIGNATURE_LENGTH] != V1_SIGNATURE:
        return None, _unterminated(data)
    line = data[_SIGNATURE_LENGTH:end]
    length = end + 2
    if b"\n" in line:
        raise InvalidHeader(Reason.BAD_HDR, "v1 line has a lone LF")
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        # The rest of the line is ignored: use the real endpoints.
        return new_header(1, _PROXY, socket.AF_UNSPEC, None, None, None, (), data[:length]), length
    raise InvalidHeader(Reason.BAD_HDR, f"v1 line is malformed: {_show(line)}")


#: IPv6 text as received -> its canonical form. inet_ntop writes each group
#: with sprintf: two addresses cost more than the rest of a parse. The
#: destination is one of the proxy's few listeners and clients reconnect, so
#: most lookups hit. Bounded: emptied when full. Only IPv6 text is kept, whose
#: form does not depend on allow_v4_in_tcp6.
_ipv6_texts: dict[bytes, str] = {}
_IPV6_TEXTS_MAX = 256


def _ipv6_text(text: bytes, allow_v4: bool) -> str:
    host = text.decode("ascii")
    if allow_v4 and _IPV4_ONLY.fullmatch(text):
        return "::ffff:" + host
    try:
        canonical = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, host))
    except OSError:
        raise InvalidHeader(Reason.BAD_HDR, f"v1 TCP6 address is not IPv6: {host!r}") from None
    if len(_ipv6_texts) >= _IPV6_TEXTS_MAX:
        _ipv6_texts.clear()
    _ipv6_texts[text] = canonical
    return canonical


def _show(line: bytes) -> str:
    return repr(line[:60].decode("ascii", "backslashreplace"))


def _unterminated(data: bytes) -> int:
    """How many more bytes ``data``, with no complete line, certainly needs; InvalidHeader if it can never be valid.

    A trickling client's TCP line, well-formed so far, is the common case: one
    match, without the slow path's splitting (a slow client costs that on
    every byte it sends).
    """
    # No CR or LF (the pattern has neither), no two spaces in a row (an empty
    # field), and room left for the CRLF: exactly what the slow path finds incomplete.
    # The compiled build scans a TCP4 line in C first (below): ~20 times faster than the match.
    if len(data) < V1_MAX_LENGTH - 1 and (
        (_COMPILED and _scan_tcp4_prefix(data)) or (_PARTIAL_TCP_LINE.fullmatch(data) and b"  " not in data)
    ):
        return max(2, V1_MIN_LENGTH - len(data))  # no CR yet: the CRLF at least
    return _explain_unterminated(data)


def _explain_unterminated(data: bytes) -> int:
    """:func:`_unterminated` field by field: the InvalidHeader names the defect.

    Fail fast (SPEC.md section 7): a lone LF, a CR not followed by LF, 107
    bytes without CRLF, or a prefix no valid line starts with are invalid at
    once; anything else is incomplete.
    """
    window = data[:V1_MAX_LENGTH]
    if not V1_SIGNATURE.startswith(window[:_SIGNATURE_LENGTH]):
        raise InvalidHeader(Reason.NOT_HDR, "not a PROXY header: does not start with 'PROXY '")
    carriage_return = window.find(b"\r")
    line_feed = window.find(b"\n")
    # Whichever stray byte comes first is the defect to name.
    if line_feed >= 0 and (carriage_return < 0 or line_feed < carriage_return):
        raise InvalidHeader(Reason.BAD_HDR, "v1 line has a lone LF")
    if carriage_return >= 0 and carriage_return + 1 < len(data) and data[carriage_return + 1] != _LF:
        raise InvalidHeader(Reason.BAD_HDR, "v1 line has a CR not followed by LF")
    # 106 bytes without a CR already leave no room for a CRLF within 107.
    if carriage_return < 0 and len(window) >= V1_MAX_LENGTH - 1 or carriage_return >= V1_MAX_LENGTH - 1:
        raise InvalidHeader(Reason.BAD_HDR, f"no CRLF within {V1_MAX_LENGTH} bytes")
    _check_prefix(window[_SIGNATURE_LENGTH:] if carriage_return < 0 else window[_SIGNATURE_LENGTH:carriage_return])
    # A lower bound: the CRLF decides where the line ends, and is still to come
    # (or its LF, after a last CR). A reader takes this many without a look.
    return max(1 if carriage_return >= 0 else 2, V1_MIN_LENGTH - len(window))


def _check_prefix(partial: bytes) -> None:
    """Raise InvalidHeader unless ``partial`` can begin a valid line after ``PROXY ``."""
    fields = partial.split(b" ")
    protocol = fields[0]
    if len(fields) == 1:
        if not any(known.startswith(protocol) for known in _PROTOCOLS):
            raise InvalidHeader(Reason.BAD_HDR, f"v1 protocol is not TCP4, TCP6 or UNKNOWN: {_show(protocol)}")
        return
    if protocol == b"UNKNOWN":
        return
    if protocol not in _PROTOCOLS:
        raise InvalidHeader(Reason.BAD_HDR, f"v1 protocol is not TCP4, TCP6 or UNKNOWN: {_show(protocol)}")
    values = fields[1:]
    if len(values) > 4:
        raise InvalidHeader(Reason.BAD_HDR, "v1 line has too many fields")
    address_prefix = _IPV4_PREFIX if protocol == b"TCP4" else _IPV6_PREFIX
    for index, value in enumerate(values):
        complete = index < len(values) - 1
        if complete and not value:
            raise InvalidHeader(Reason.BAD_HDR, "v1 line has an empty field (two spaces)")
        if index < 2:
            if not address_prefix.fullmatch(value):
                raise InvalidHeader(Reason.BAD_HDR, f"v1 address is malformed: {_show(value)}")
        elif not _PORT_PREFIX.fullmatch(value) or value and int(value) > 0xFFFF:
            raise InvalidHeader(Reason.BAD_HDR, f"v1 port is malformed: {_show(value)}")


from ._accel import import_c_accel  # noqa: E402 - last: it may replace every name above

import_c_accel(globals(), "gevent_proxyproto._gevent_c_v1")
