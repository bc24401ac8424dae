"""gevent_proxyproto: the PROXY protocol (v1 and v2) for gevent servers.

The protocol core (parse, build, value objects) is pure and imports nothing
from gevent; the socket and server layers build on it.
"""

import importlib
from typing import TYPE_CHECKING, Any

from ._builder import build_v1, build_v2, encode_header
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
if TYPE_CHECKING:
    # Never run: what a type checker sees of the lazily loaded names, so that
    # mypy on a user's code checks them instead of taking them for Any. The
    # same names as _LAZY below (tests/test_imports.py holds them equal).
    from ._client import create_connection
    from ._config import ConfigError, DispatcherConfig, ServiceConfig, TLSConfig, load_config
    from ._dispatch import Dispatcher, StartupError, bind_listeners
    from ._multiplex import Multiplexer, Unmatched
    from ._policy import ProxyPolicy
    from ._relay import ProxyRelay
    from ._server import ProxyStreamServer
    from ._socket import ProxySocket, read_header
    from ._tls_hook import ProxySSLSocket
    from ._udp import ProxiedAddress, ProxyDatagramServer
    from ._wsgi import ProxyWSGIServer

_LAZY = {
    "ProxyPolicy": "._policy",
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
    "StartupError": "._dispatch",
    "bind_listeners": "._dispatch",
    "create_connection": "._client",
    "ProxyRelay": "._relay",
    "ProxyDatagramServer": "._udp",
    "ProxiedAddress": "._udp",
    "Multiplexer": "._multiplex",
    "Unmatched": "._multiplex",
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
    "Multiplexer",
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
    "StartupError",
    "TLSConfig",
    "TLVType",
    "TrustedProxies",
    "Unmatched",
    "UntrustedSource",
    "__version__",
    "bind_listeners",
    "build_v1",
    "build_v2",
    "crc32c",
    "create_connection",
    "encode_header",
    "format_datagram",
    "load_config",
    "parse",
    "read_header",
]
