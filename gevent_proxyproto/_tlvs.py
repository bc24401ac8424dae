"""TLV framing, the hot loop of the v2 parser (SPEC.md section 4).

``type(1) length(2) value`` repeated. Kept apart from the value classes of
``_model`` so that it can be compiled alone (``_accel``), classes untouched.
"""

#: A TLV as found on the wire: ``(type, value)``.
TLV = tuple[int, bytes]


def split_tlvs(data: bytes, start: int, end: int) -> tuple[TLV, ...] | None:
    """Split ``data[start:end]`` into TLVs, or return None if they do not fill it exactly.

    With :func:`tlvs_frame`, the one place that knows TLV framing:
    ``type(1) length(2) value`` repeated, with no overrun and no 1-2 byte tail
    (SPEC.md section 4).
    """
    tlvs = []
    position = start
    while position < end:
        if end - position < 3:
            return None
        value_end = position + 3 + (data[position + 1] << 8 | data[position + 2])
        if value_end > end:
            return None
        tlvs.append((data[position], data[position + 3 : value_end]))
        position = value_end
    return tuple(tlvs)


def tlvs_frame(data: bytes, start: int, end: int) -> bool:
    """Whether :func:`split_tlvs` would split ``data[start:end]``: the same walk, building nothing.

    The parser checks the SSL TLV's sub-TLV framing on every header that has
    one, and reads the sub-TLVs only when asked (:attr:`ProxyHeader.ssl`):
    half the time of a split (bench/parse.py, ``v2-tlv``).
    """
    position = start
    while position < end:
        if end - position < 3:
            return False
        position += 3 + (data[position + 1] << 8 | data[position + 2])
    return position == end


from ._accel import import_c_accel  # noqa: E402 - last: it may replace every name above

import_c_accel(globals(), "gevent_proxyproto._gevent_c_tlvs")
