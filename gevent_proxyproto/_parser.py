"""parse(): one PROXY header, v1 or v2, from the first bytes of a stream.

The first byte tells the versions apart (``P`` for v1, ``\\r`` for v2) and
rejects most other traffic at once (SPEC.md section 3, detection).
"""

from ._errors import IncompleteHeader, InvalidHeader, Reason
from ._model import ProxyHeader
from ._v1 import parse_v1
from ._v2 import parse_v2
from ._wire import V1_MAX_LENGTH, V1_MIN_LENGTH, V2_MAX_LENGTH

BytesLike = bytes | bytearray | memoryview


def parse(
    data: BytesLike, *, allow_v4_in_tcp6: bool = False, max_header_size: int = V2_MAX_LENGTH
) -> tuple[ProxyHeader, int]:
    """Parse the PROXY header at the start of ``data``.

    Bytes after the header are never looked at.

    Args:
        data: the bytes received so far, from byte 0 of the stream.
        allow_v4_in_tcp6: a compatibility switch for nginx relays that write
            IPv4 addresses in a v1 ``TCP6`` line (invalid by default); they are
            reported v4-mapped.
        max_header_size: refuse a longer header (``BAD_HDR``). A v2 header
            is refused from the length in its preamble, before any of the
            rest is parsed or waited for.

    Returns:
        ``(header, length)``: the header and its size in bytes.

    Raises:
        IncompleteHeader: ``data`` is a strict prefix of something that can
            still become a valid header; its ``needed`` says how many more
            bytes are certainly header, and its ``exact`` whether exactly
            that many bring the next verdict (v2) or it is a lower bound (v1).
        InvalidHeader: anything else that is wrong, with a reason code and a
            message naming the field.
    """
    header, length, exact = parse_prefix(data, allow_v4_in_tcp6, max_header_size)
    if header is None:
        raise IncompleteHeader(length, exact=exact)
    return header, length


def parse_prefix(
    data: BytesLike, allow_v4_in_tcp6: bool = False, max_header_size: int = V2_MAX_LENGTH
) -> tuple[ProxyHeader | None, int, bool]:
    """:func:`parse`, but a header still arriving is an answer, not an exception.

    The header reader's call: a slow client sends a segment at a time, and
    an exception per segment would cost more than the parse.

    Returns:
        ``(header, length, False)``; or ``(None, needed, exact)`` for a strict
        prefix of something that can still become a valid header (the
        ``needed`` and ``exact`` of :class:`IncompleteHeader`).

    Raises:
        InvalidHeader: as :func:`parse`.
    """
    if not data:
        return None, V1_MIN_LENGTH, False  # the shortest header; the version is not known yet
    if type(data) is not bytes:
        # Copy at most one header's worth: find() and slicing need bytes.
        data = bytes(data[: V1_MAX_LENGTH if data[0] == 0x50 else V2_MAX_LENGTH])
    first = data[0]
    if first == 0x0D:
        header, length = parse_v2(data, max_header_size)
        return header, length, header is None  # v2 knows its size: `needed` is exact
    if first == 0x50:
        header, length = parse_v1(data, allow_v4_in_tcp6)  # at most 107 bytes: bounded work
        if header is not None and length > max_header_size:
            raise InvalidHeader(Reason.BAD_HDR, f"header over {max_header_size} bytes ({length})")
        return header, length, False  # v1 ends at its CRLF, wherever: `needed` is a lower bound
    raise InvalidHeader(Reason.NOT_HDR, f"not a PROXY header: starts with {data[:8]!r}")


from ._accel import import_c_accel  # noqa: E402 - last: it may replace every name above

import_c_accel(globals(), "gevent_proxyproto._gevent_c_parser")
