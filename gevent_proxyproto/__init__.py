"""gevent_proxyproto: the PROXY protocol (v1 and v2) for gevent servers.

The protocol core (parse, build, value objects) is pure and imports nothing
from gevent; the socket and server layers build on it.
"""

from ._builder import build_v1, build_v2
from ._crc32c import crc32c
from ._errors import (
    ConnectionClosed,
    HeaderTimeout,
    IncompleteHeader,
    InvalidHeader,
    ProxyProtocolError,
    Reason,
    UntrustedSource,
)
from ._model import Address, Command, ProxyHeader, SSLClient, SSLInfo, SSLSubType, TLVType
from ._parser import parse
from ._version import __version__

__all__ = [
    "Address",
    "Command",
    "ConnectionClosed",
    "HeaderTimeout",
    "IncompleteHeader",
    "InvalidHeader",
    "ProxyHeader",
    "ProxyProtocolError",
    "Reason",
    "SSLClient",
    "SSLInfo",
    "SSLSubType",
    "TLVType",
    "UntrustedSource",
    "__version__",
    "build_v1",
    "build_v2",
    "crc32c",
    "parse",
]
