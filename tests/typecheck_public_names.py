"""A user's module, for ``mypy --strict`` (``tox -e mypy``): never collected, never run.

The socket and server names are loaded on first use by the package's
``__getattr__``, which a type checker sees as returning ``Any``; the
``TYPE_CHECKING`` imports of ``gevent_proxyproto/__init__.py`` give them their
real types. Were any of them ``Any``, its ``assert_type`` below would fail
("Expression is of type Any"), and its ``type: ignore`` would be reported
unused (``--strict`` warns about those): a wrongly typed call is caught.
"""

import socket
from collections import Counter

from typing_extensions import assert_type  # typing.assert_type is Python 3.11+

import gevent_proxyproto as gpp


def a_user_of_the_lazy_names(connection: socket.socket) -> None:
    server = gpp.ProxyStreamServer(("127.0.0.1", 0), trusted_proxies=["10.0.0.0/8"])
    assert_type(server.failures, Counter[gpp.Reason])
    assert_type(server.tls_failures, int)
    assert_type(server.policy.header_timeout, float)
    gpp.ProxyStreamServer(("127.0.0.1", 0), policy="strict")  # type: ignore[arg-type]

    assert_type(gpp.read_header(connection, deadline=5.0), gpp.ProxyHeader)
    gpp.read_header(connection, deadline="soon")  # type: ignore[arg-type]
    assert_type(gpp.ProxyPolicy(header_timeout=3.0).max_header_size, int)
    assert_type(gpp.ProxySocket().failures, Counter[gpp.Reason])

    config = gpp.load_config("serve.toml")
    assert_type(config.grace_period, float)
    assert_type(gpp.bind_listeners(config), dict[int, socket.socket])
    assert_type(gpp.Dispatcher(config).config.proxy_ports, tuple[int, ...])
    gpp.Dispatcher("serve.toml")  # type: ignore[arg-type]
    assert_type(gpp.StartupError, type[gpp.StartupError])
