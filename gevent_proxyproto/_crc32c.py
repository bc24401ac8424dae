"""CRC32C (Castagnoli), the checksum of the PROXY v2 CRC32C TLV (SPEC.md section 4).

The ``crc32c`` package (a C extension, a dependency of the default install on
CPython) computes it when importable: well under a microsecond per header. This
table-driven pure-Python version is the fall-back for other interpreters and
platforms without it, and costs tens of microseconds per header.
"""

from collections.abc import Callable

BytesLike = bytes | bytearray | memoryview

#: The reflected Castagnoli polynomial (RFC 3720 appendix B.4).
_POLYNOMIAL = 0x82F63B78


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLYNOMIAL if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()


def crc32c_pure(data: BytesLike) -> int:
    """Return the CRC32C of ``data`` in pure Python."""
    table = _TABLE
    crc = 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _accelerated() -> "Callable[[BytesLike], int] | None":
    try:
        import crc32c as c_extension  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    function: Callable[[BytesLike], int] = c_extension.crc32c
    # Trust it only if it agrees with the check value of the standard.
    if function(b"123456789") != 0xE3069283:  # pragma: no cover - a broken build
        return None
    return function


#: The CRC32C function in use: the C extension when available, else pure Python.
crc32c: Callable[[BytesLike], int] = _accelerated() or crc32c_pure
