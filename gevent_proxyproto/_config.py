"""The dispatcher's configuration: a TOML file, or the same built in Python.

The shape follows the seed's ``mod_net_proxy``: ``proxy_ports`` are ports that
require a PROXY header, ``proxy_port_mappings`` routes each to a named service,
and services may also have plain ports (no header). Every mistake is a
:class:`ConfigError` naming the key, found before anything listens.
"""

import importlib
import socketserver
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._socket import DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_HEADER_SIZE, UNTRUSTED_DIRECT, UNTRUSTED_REJECT
from ._trust import LOOPBACK, TrustedProxies

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

#: Services usable without a [services] table (see _services.py).
BUILTIN_SERVICES = ("whoami", "echo")
#: Seconds open connections get to finish after SIGTERM/SIGINT.
DEFAULT_GRACE_PERIOD = 10.0

_TOP_LEVEL_KEYS = {
    "bind",
    "header_timeout",
    "trusted_proxies",
    "untrusted",
    "max_header_size",
    "allow_v4_in_tcp6",
    "grace_period",
    "max_connections",
    "proxy_ports",
    "proxy_port_mappings",
    "services",
    "tls",
}
_SERVICE_KEYS = {"handler", "ports", "idle_timeout"}
_TLS_KEYS = {"certfile", "keyfile", "cafile", "verify_client"}


class ConfigError(ValueError):
    """The configuration is wrong; the message names the key."""


@dataclass(frozen=True)
class ServiceConfig:
    """A named service: what handles its connections, and its plain ports."""

    name: str
    #: ``"module:attribute"``, a built-in service name, or the handler itself.
    handler: Any
    #: Ports without a PROXY header.
    ports: tuple[int, ...] = ()
    #: Seconds a connection may wait on one read or write before it is
    #: closed (as nginx's ``proxy_timeout``); None: no limit.
    idle_timeout: float | None = None


@dataclass(frozen=True)
class TLSConfig:
    """TLS on one port: after the PROXY header on a proxy port."""

    certfile: str
    keyfile: str | None = None
    #: CA bundle to verify client certificates with (``verify_client``).
    cafile: str | None = None
    verify_client: bool = False


@dataclass(frozen=True)
class DispatcherConfig:
    """Everything the dispatcher needs; see the README's configuration reference."""

    bind: str = "127.0.0.1"
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    trusted_proxies: tuple[str, ...] = LOOPBACK
    untrusted: str = UNTRUSTED_REJECT
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    allow_v4_in_tcp6: bool = False
    grace_period: float = DEFAULT_GRACE_PERIOD
    #: Open connections per process beyond which new ones are closed at once; None: no cap.
    max_connections: int | None = None
    proxy_ports: tuple[int, ...] = ()
    proxy_port_mappings: Mapping[int, str] = field(default_factory=dict)
    services: Mapping[str, ServiceConfig] = field(default_factory=dict)
    tls: Mapping[int, TLSConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def plain_ports(self) -> dict[int, str]:
        """Plain port -> service name."""
        return {port: service.name for service in self.services.values() for port in service.ports}

    def service_names(self) -> set[str]:
        return set(BUILTIN_SERVICES) | set(self.services)


def load_config(path: str) -> DispatcherConfig:
    """Read and validate a TOML configuration file.

    Raises:
        ConfigError: unreadable file, bad TOML, or a wrong key or value.
    """
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    return config_from_mapping(data)


def config_from_mapping(data: Mapping[str, Any]) -> DispatcherConfig:
    """Build a configuration from the parsed TOML document (or any mapping of the same shape)."""
    unknown = set(data) - _TOP_LEVEL_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_TOP_LEVEL_KEYS))}")
    services = {}
    for name, table in _table(data, "services").items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"services.{name} must be a table")
        unknown = set(table) - _SERVICE_KEYS
        if unknown:
            raise ConfigError(f"services.{name}: unknown key(s) {', '.join(sorted(unknown))}")
        if "handler" not in table:
            raise ConfigError(f'services.{name}.handler is missing ("module:callable")')
        services[name] = ServiceConfig(
            name, table["handler"], _ports(table.get("ports", []), f"services.{name}.ports"), table.get("idle_timeout")
        )
    tls = {}
    for key, table in _table(data, "tls").items():
        port = _port(key, f"tls.{key}")
        if not isinstance(table, Mapping) or "certfile" not in table:
            raise ConfigError(f"tls.{key} must be a table with certfile (and keyfile)")
        unknown = set(table) - _TLS_KEYS
        if unknown:
            raise ConfigError(f"tls.{key}: unknown key(s) {', '.join(sorted(unknown))}")
        tls[port] = TLSConfig(**table)
    mappings = {
        _port(key, f"proxy_port_mappings.{key}"): _string(value, f"proxy_port_mappings.{key}")
        for key, value in _table(data, "proxy_port_mappings").items()
    }
    options = {key: data[key] for key in _TOP_LEVEL_KEYS - {"services", "tls", "proxy_port_mappings"} if key in data}
    if "proxy_ports" in options:
        options["proxy_ports"] = _ports(options["proxy_ports"], "proxy_ports")
    if "trusted_proxies" in options:
        proxies = options["trusted_proxies"]
        if not isinstance(proxies, list) or not all(isinstance(entry, str) for entry in proxies):
            raise ConfigError('trusted_proxies must be a list of strings (CIDRs or addresses, or "*")')
        options["trusted_proxies"] = tuple(proxies)
    return DispatcherConfig(proxy_port_mappings=mappings, services=services, tls=tls, **options)


def validate(config: DispatcherConfig) -> None:
    """Check a configuration as a whole; raises ConfigError."""
    if not isinstance(config.bind, str) or not config.bind:
        raise ConfigError('bind must be an address, e.g. "127.0.0.1" or "::"')
    for name in ("header_timeout", "grace_period"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
    for service in config.services.values():
        if service.idle_timeout is not None:
            _check_seconds(service.idle_timeout, f"services.{service.name}.idle_timeout")
    limit = config.max_connections
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"max_connections must be a whole number of connections (at least 1), not {limit!r}")
    if config.untrusted not in (UNTRUSTED_REJECT, UNTRUSTED_DIRECT):
        raise ConfigError(f'untrusted must be "reject" or "direct", not {config.untrusted!r}')
    try:
        TrustedProxies(config.trusted_proxies)
    except ValueError as error:
        raise ConfigError(f"trusted_proxies: {error}") from None
    seen: dict[int, str] = {}
    for port in config.proxy_ports:
        _claim(seen, port, "proxy_ports")
    for service in config.services.values():
        for port in service.ports:
            _claim(seen, port, f"services.{service.name}.ports")
    known = config.service_names()
    for port, name in config.proxy_port_mappings.items():
        if port not in config.proxy_ports:
            raise ConfigError(f"proxy_port_mappings.{port}: port {port} is not in proxy_ports")
        if name not in known:
            raise ConfigError(
                f"proxy_port_mappings.{port} names an unknown service {name!r}; known: {', '.join(sorted(known))}"
            )
    for port in config.tls:
        if port not in seen:
            raise ConfigError(f"tls.{port}: port {port} is not a proxy port or a service port")


def resolve_handler(spec: Any, where: str) -> Callable[..., Any]:
    """Import a ``"module:attribute"`` handler path (or accept a callable).

    The result is a callable ``handler(sock, address)`` or a
    ``socketserver.BaseRequestHandler`` subclass.
    """
    if callable(spec):
        return spec  # type: ignore[no-any-return]
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ConfigError(f'{where}: a handler is "module:callable", not {spec!r}')
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # a user's module may fail in any way at import
        raise ConfigError(f"{where}: cannot import {module_name!r}: {type(error).__name__}: {error}") from None
    handler: Any = module
    for part in attribute.split("."):
        handler = getattr(handler, part, None)
        if handler is None:
            raise ConfigError(f"{where}: module {module_name!r} has no attribute {attribute!r}")
    if isinstance(handler, type) and not issubclass(handler, socketserver.BaseRequestHandler):
        raise ConfigError(f"{where}: class {spec!r} is not a socketserver.BaseRequestHandler subclass")
    if not callable(handler):
        raise ConfigError(f"{where}: {spec!r} is not callable")
    return handler  # type: ignore[no-any-return]


def _check_seconds(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigError(f"{where} must be a positive number of seconds, not {value!r}")


def _claim(seen: dict[int, str], port: int, where: str) -> None:
    if port in seen:
        raise ConfigError(f"port {port} is listed twice: in {seen[port]} and in {where}")
    seen[port] = where


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    table = data.get(key, {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{key} must be a table")
    return table


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a service name (a string), not {value!r}")
    return value


def _port(value: Any, where: str) -> int:
    try:
        port = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else -1
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where}: {value!r} is not a port (1..65535)")
    return port


def _ports(values: Any, where: str) -> tuple[int, ...]:
    if not isinstance(values, Iterable) or isinstance(values, (str, bytes)):
        raise ConfigError(f"{where} must be a list of ports")
    return tuple(_port(value, where) for value in values)
