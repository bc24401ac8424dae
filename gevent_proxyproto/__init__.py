"""gevent_proxyproto: the PROXY protocol (v1 and v2) for gevent servers.

The protocol core (parse, build, value objects) is pure and imports nothing
from gevent; the socket and server layers build on it.
"""

import importlib
from typing import Any

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
from ._sending import format_datagram
from ._trust import TrustedProxies
from ._version import __version__

# The socket and server layers need gevent, the core above does not: they are
# imported on first use, so `import gevent_proxyproto` stays gevent-free and
# may come before gevent.monkey.patch_all().
_LAZY = {
    "ProxyPolicy": "._socket",
    "ProxySocket": "._socket",
    "read_header": "._socket",
    "ProxyStreamServer": "._server",
    "ProxyWSGIServer": "._wsgi",
    "ProxySSLSocket": "._tls_hook",
    "ConfigError": "._config",
    "DispatcherConfig": "._config",
    "ServiceConfig": "._config",
    "TLSConfig": "._config",
    "load_config": "._config",
    "Dispatcher": "._dispatch",
    "create_connection": "._client",
    "ProxyRelay": "._relay",
    "ProxyDatagramServer": "._udp",
    "ProxiedAddress": "._udp",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Address",
    "Command",
    "ConfigError",
    "ConnectionClosed",
    "Dispatcher",
    "DispatcherConfig",
    "HeaderTimeout",
    "IncompleteHeader",
    "InvalidHeader",
    "ProxiedAddress",
    "ProxyDatagramServer",
    "ProxyHeader",
    "ProxyPolicy",
    "ProxyProtocolError",
    "ProxyRelay",
    "ProxySSLSocket",
    "ProxySocket",
    "ProxyStreamServer",
    "ProxyWSGIServer",
    "Reason",
    "SSLClient",
    "SSLInfo",
    "SSLSubType",
    "ServiceConfig",
    "TLSConfig",
    "TLVType",
    "TrustedProxies",
    "UntrustedSource",
    "__version__",
    "build_v1",
    "build_v2",
    "crc32c",
    "create_connection",
    "format_datagram",
    "load_config",
    "parse",
    "read_header",
]
