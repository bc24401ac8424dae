"""The built-in services (``whoami``, ``echo``) and the adapter for legacy handlers.

Handlers are legacy synchronous code: a callable ``handler(sock, address)``, or
a ``socketserver.BaseRequestHandler`` subclass, each run in its own greenlet.
"""

import json
import socket
import socketserver
from collections.abc import Callable
from typing import Any

from ._model import Command, ProxyHeader

Handler = Callable[[Any, Any], Any]

_FAMILY_NAMES = {
    socket.AF_INET: "AF_INET",
    socket.AF_INET6: "AF_INET6",
    socket.AF_UNIX: "AF_UNIX",
    socket.AF_UNSPEC: "AF_UNSPEC",
}


def echo(sock: Any, address: Any) -> None:
    """Echo every byte until the client closes."""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        sock.sendall(data)


def whoami(sock: Any, address: Any) -> None:
    """Write one JSON line saying what the server sees of this connection, then echo."""
    sock.sendall(json.dumps(describe_connection(sock, "whoami")).encode() + b"\n")
    echo(sock, address)


def describe_connection(sock: Any, service: str) -> dict[str, Any]:
    """The ``whoami`` document: service, listening port, peer, sock and the PROXY header."""
    real_sockname = getattr(sock, "real_sockname", sock.getsockname)()
    header = getattr(sock, "proxy_header", None)
    return {
        "service": service,
        "port": real_sockname[1] if isinstance(real_sockname, tuple) else real_sockname,
        "peer": _json_address(sock.getpeername()),
        "sock": _json_address(sock.getsockname()),
        "proxy": None if header is None else _json_header(header),
    }


def _json_address(address: Any) -> Any:
    if isinstance(address, tuple):
        return [address[0], address[1]]
    if isinstance(address, bytes):
        return address.decode("utf-8", "backslashreplace")
    return address


def _json_header(header: ProxyHeader) -> dict[str, Any]:
    return {
        "version": header.version,
        "command": Command(header.command).name,
        "family": _FAMILY_NAMES.get(header.family, str(header.family)),
        "tlvs": [[tlv_type, value.hex()] for tlv_type, value in header.tlvs],
    }


class HandlerServerInfo:
    """What a ``BaseRequestHandler`` finds as ``self.server``.

    :ivar server_address: the listening ``(host, port)``.
    :ivar service: the service's name.
    """

    def __init__(self, server_address: Any, service: str) -> None:
        self.server_address = server_address
        self.service = service


def as_connection_handler(handler: Any, service: str, server_address: Any) -> Handler:
    """A ``(sock, address)`` callable for either kind of legacy handler."""
    if isinstance(handler, type) and issubclass(handler, socketserver.BaseRequestHandler):
        request_handler_class = handler
        info = HandlerServerInfo(server_address, service)

        def handle_request(sock: Any, address: Any) -> None:
            # BaseRequestHandler.__init__ runs setup(), handle() and finish().
            request_handler_class(sock, address, info)  # type: ignore[arg-type]

        return handle_request
    return handler  # type: ignore[no-any-return]


BUILTIN_HANDLERS: dict[str, Handler] = {"whoami": whoami, "echo": echo}
