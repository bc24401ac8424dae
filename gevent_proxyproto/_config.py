"""The dispatcher's configuration: a TOML file, or the same built in Python.

The shape follows the seed's ``mod_net_proxy``: ``proxy_ports`` are ports that
require a PROXY header, ``proxy_port_mappings`` routes each to a named service,
and services may also have plain ports (no header). Every mistake is a
:class:`ConfigError` naming the key, found before anything listens.
"""

import difflib
import importlib
import os
import re
import socketserver
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._multiplex import (
    DEFAULT_MULTIPLEX_BUFFER_SIZE,
    DEFAULT_MULTIPLEX_TIMEOUT,
    MAX_MULTIPLEX_BUFFER_SIZE,
    MULTIPLEX,
    TLS_CLIENT_HELLO,
    compile_pattern,
)
from ._policy import DEFAULT_GRACE_PERIOD, ProxyPolicy, policy_from_keywords

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

#: Services usable without a [services] table (see _services.py).
BUILTIN_SERVICES = ("whoami", "echo", MULTIPLEX)

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
    "multiplex_buffer_size",
    "multiplex_timeout",
}
_MULTIPLEX_SERVICE_KEYS = {"multiplex_pattern", "multiplex_tls"}
_SERVICE_KEYS = {"handler", "ports", "idle_timeout"} | _MULTIPLEX_SERVICE_KEYS
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
    #: A regular expression: the ``multiplex`` service routes a connection
    #: here when the client's first bytes start with a match.
    multiplex_pattern: str | bytes | None = None
    #: The ``multiplex`` service routes a TLS ClientHello here, after a TLS
    #: handshake with the multiplex port's TLS settings.
    multiplex_tls: bool = False
    #: Seconds a connection may wait on one read or write before it is
    #: closed (as nginx's ``proxy_timeout``); None: no limit.
    idle_timeout: float | None = None

    def multiplex_match(self) -> "re.Pattern[bytes] | None":
        """What the ``multiplex`` service matches for this service: its pattern, a ClientHello, or None."""
        if self.multiplex_tls:
            return TLS_CLIENT_HELLO
        return None if self.multiplex_pattern is None else compile_pattern(self.multiplex_pattern)


@dataclass(frozen=True)
class TLSConfig:
    """TLS on one port: after the PROXY header on a proxy port."""

    certfile: str
    keyfile: str | None = None
    #: CA bundle to verify client certificates with (``verify_client``).
    cafile: str | None = None
    verify_client: bool = False


@dataclass(frozen=True, init=False)
class DispatcherConfig:
    """Everything the dispatcher needs; see the configuration reference (``docs/configuration.rst``).

    The proxy ports' settings are one :class:`ProxyPolicy`: give ``policy=``,
    or its fields (``header_timeout``, ``trusted_proxies``, ``untrusted``,
    ``max_header_size``, ``allow_v4_in_tcp6``) as the TOML file does; they
    stay readable as attributes.

    Raises:
        ConfigError: a wrong value, naming its key.
        TypeError: both ``policy`` and some of its fields were given.
    """

    bind: str
    #: How every proxy port treats its connections.
    policy: ProxyPolicy
    #: Seconds open connections get to finish after SIGTERM/SIGINT.
    grace_period: float
    #: Open connections per process beyond which new ones are closed at once; None: no cap.
    max_connections: int | None
    proxy_ports: tuple[int, ...]
    proxy_port_mappings: Mapping[int, str]
    services: Mapping[str, ServiceConfig]
    tls: Mapping[int, TLSConfig]
    multiplex_buffer_size: int
    multiplex_timeout: float

    def __init__(
        self,
        bind: str = "127.0.0.1",
        header_timeout: float | None = None,
        trusted_proxies: Any = None,
        untrusted: str | None = None,
        max_header_size: int | None = None,
        allow_v4_in_tcp6: bool | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        max_connections: int | None = None,
        proxy_ports: tuple[int, ...] = (),
        proxy_port_mappings: Mapping[int, str] | None = None,
        services: Mapping[str, ServiceConfig] | None = None,
        tls: Mapping[int, TLSConfig] | None = None,
        multiplex_buffer_size: int = DEFAULT_MULTIPLEX_BUFFER_SIZE,
        multiplex_timeout: float = DEFAULT_MULTIPLEX_TIMEOUT,
        *,
        policy: ProxyPolicy | None = None,
    ) -> None:
        given = {
            "header_timeout": header_timeout,
            "trusted_proxies": trusted_proxies,
            "untrusted": untrusted,
            "max_header_size": max_header_size,
            "allow_v4_in_tcp6": allow_v4_in_tcp6,
        }
        try:  # ProxyPolicy checks its fields; each message starts with the field's name, the TOML key
            policy = policy_from_keywords(policy, {key: value for key, value in given.items() if value is not None})
        except ValueError as error:
            raise ConfigError(str(error)) from None
        values = {
            "bind": bind,
            "policy": policy,
            "grace_period": grace_period,
            "max_connections": max_connections,
            "proxy_ports": proxy_ports,
            "proxy_port_mappings": {} if proxy_port_mappings is None else proxy_port_mappings,
            "services": {} if services is None else services,
            "tls": {} if tls is None else tls,
            "multiplex_buffer_size": multiplex_buffer_size,
            "multiplex_timeout": multiplex_timeout,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)  # frozen
        validate(self)

    # The policy's fields, read as the TOML keys name them.

    @property
    def header_timeout(self) -> float:
        return self.policy.header_timeout

    @property
    def trusted_proxies(self) -> Any:
        return self.policy.trusted_proxies

    @property
    def untrusted(self) -> str:
        return self.policy.untrusted

    @property
    def max_header_size(self) -> int:
        return self.policy.max_header_size

    @property
    def allow_v4_in_tcp6(self) -> bool:
        return self.policy.allow_v4_in_tcp6

    @property
    def plain_ports(self) -> dict[int, str]:
        """Plain port -> service name."""
        return {port: service.name for service in self.services.values() for port in service.ports}

    def service_names(self) -> set[str]:
        return set(BUILTIN_SERVICES) | set(self.services)

    def is_multiplex(self, name: str) -> bool:
        """Whether service ``name`` is the built-in ``multiplex`` (by its name, or ``handler = "multiplex"``)."""
        service = self.services.get(name)
        return (service.handler or name) == MULTIPLEX if service is not None else name == MULTIPLEX

    def multiplex_routes(self) -> list[tuple[ServiceConfig, "re.Pattern[bytes]"]]:
        """The services a ``multiplex`` port may route to, with what they match, in configuration order."""
        routes = [(service, service.multiplex_match()) for service in self.services.values()]
        return [(service, match) for service, match in routes if match is not None]


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
    _check_keys(data, _TOP_LEVEL_KEYS, "")
    services = {}
    for name, table in _table(data, "services").items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"services.{name} must be a table")
        _check_keys(table, _SERVICE_KEYS, f"services.{name}")
        handler = table.get("handler", name if name in BUILTIN_SERVICES else None)  # [services.whoami] needs none
        if handler is None:
            raise ConfigError(
                f'services.{name}.handler is missing ("module:callable"); only the built-in services '
                f"({', '.join(BUILTIN_SERVICES)}) may leave it out"
            )
        multiplex = {key: table[key] for key in _MULTIPLEX_SERVICE_KEYS if key in table}
        services[name] = ServiceConfig(
            name,
            handler,
            _ports(table.get("ports", []), f"services.{name}.ports"),
            idle_timeout=table.get("idle_timeout"),
            **multiplex,
        )
    tls = {}
    for key, table in _port_keys(_table(data, "tls"), "tls").items():
        port = int(key)
        if not isinstance(table, Mapping) or "certfile" not in table:
            raise ConfigError(f"tls.{key} must be a table with certfile (and keyfile)")
        _check_keys(table, _TLS_KEYS, f"tls.{key}")
        tls[port] = TLSConfig(**table)
    mappings = {
        int(key): _string(value, f"proxy_port_mappings.{key}")
        for key, value in _port_keys(_table(data, "proxy_port_mappings"), "proxy_port_mappings").items()
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
    """Check a configuration as a whole; raises ConfigError.

    The policy's fields are checked by :class:`ProxyPolicy` itself.
    """
    if not isinstance(config.bind, str) or not config.bind:
        raise ConfigError('bind must be an address, e.g. "127.0.0.1" or "::"')
    value = config.grace_period
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"grace_period must be a positive number of seconds, not {value!r}")
    for service in config.services.values():
        if service.idle_timeout is not None:
            _check_seconds(service.idle_timeout, f"services.{service.name}.idle_timeout")
    limit = config.max_connections
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"max_connections must be a whole number of connections (at least 1), not {limit!r}")
    seen: dict[int, str] = {}
    for port in config.proxy_ports:
        _claim(seen, _port(port, "proxy_ports"), "proxy_ports")
    for service in config.services.values():
        for port in service.ports:
            _claim(seen, _port(port, f"services.{service.name}.ports"), f"services.{service.name}.ports")
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
    _validate_multiplex(config)


def _validate_multiplex(config: DispatcherConfig) -> None:
    size = config.multiplex_buffer_size
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_MULTIPLEX_BUFFER_SIZE:
        raise ConfigError(f"multiplex_buffer_size must be a number of bytes, 1..{MAX_MULTIPLEX_BUFFER_SIZE}, "
                          f"not {size!r}")  # fmt: skip
    timeout = config.multiplex_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"multiplex_timeout must be a positive number of seconds, not {timeout!r}")
    for service in config.services.values():
        where = f"services.{service.name}"
        if not isinstance(service.multiplex_tls, bool):
            raise ConfigError(f"{where}.multiplex_tls must be true or false")
        if service.multiplex_pattern is None and not service.multiplex_tls:
            continue
        if config.is_multiplex(service.name):
            raise ConfigError(f"{where}: the multiplex service cannot be a multiplex route itself")
        if service.multiplex_pattern is not None and service.multiplex_tls:
            raise ConfigError(f"{where}: give multiplex_pattern or multiplex_tls, not both")
        try:
            service.multiplex_match()
        except (TypeError, re.error) as error:
            raise ConfigError(f"{where}.multiplex_pattern is not a regular expression: {error}") from None
    routes = [service for service, _ in config.multiplex_routes()]
    multiplex_ports = [port for port, name in {**config.proxy_port_mappings, **config.plain_ports}.items()
                       if config.is_multiplex(name)]  # fmt: skip
    wants_tls = [service.name for service in routes if service.multiplex_tls]
    for port in multiplex_ports:
        if not routes:
            raise ConfigError(f"port {port} is routed to multiplex, but no service has a multiplex_pattern "
                              "or multiplex_tls")  # fmt: skip
        if wants_tls and port not in config.tls:
            raise ConfigError(f"port {port} is routed to multiplex and services.{wants_tls[0]} has multiplex_tls: "
                              f"tls.{port} must give the certificate")  # fmt: skip
        if not wants_tls and port in config.tls:
            raise ConfigError(f"tls.{port}: multiplex port {port} uses its TLS only for services with "
                              "multiplex_tls = true, and there is none")  # fmt: skip


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
    except ModuleNotFoundError as error:
        if error.name is not None and (module_name + ".").startswith(error.name + "."):
            # The handler's own package is not on the path: say where we looked.
            top = module_name.partition(".")[0]
            found = sys.modules.get(top)
            if error.name != top and found is not None:
                raise ConfigError(
                    f"{where}: cannot import {module_name!r}: no module named {error.name!r} "
                    f"(found the package {top!r} in {os.path.dirname(getattr(found, '__file__', None) or '?')})"
                ) from None
            raise ConfigError(
                f"{where}: cannot import {module_name!r}: no module named {error.name!r} on the Python path. "
                f"Run from the directory that holds {top}/ (or {top}.py), now {os.getcwd()}, "
                f"or install it, or add its directory to PYTHONPATH"
            ) from None
        raise ConfigError(f"{where}: cannot import {module_name!r}: {_located(error)}") from None
    except Exception as error:  # a user's module may fail in any way at import
        raise ConfigError(f"{where}: cannot import {module_name!r}: {_located(error)}") from None
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


def _located(error: BaseException) -> str:
    """``Type: message (file:line)``: where in the user's module the import failed."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{where}"


def _check_keys(table: Mapping[str, Any], known: set[str], where: str) -> None:
    """Unknown keys are typos: name each, with the nearest known key, and list the known ones."""
    unknown = sorted(set(table) - known)
    if not unknown:
        return
    named = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        named.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    prefix = f"{where}: " if where else ""
    raise ConfigError(f"{prefix}unknown key(s) {', '.join(named)}; known: {', '.join(sorted(known))}")


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


#: A port as a table key (TOML keys are strings): decimal digits only, so no "+80", " 80" or "8_0".
_PORT_KEY = re.compile(r"[0-9]+")


def _port_keys(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A table keyed by port: each key a port, and no port twice ("32064" and "032064")."""
    seen: dict[int, str] = {}
    for key in table:
        if not isinstance(key, int) and not (isinstance(key, str) and _PORT_KEY.fullmatch(key)):
            raise ConfigError(f"{where}.{key}: {key!r} is not a port (1..65535)")
        port = _port(int(key), f"{where}.{key}")
        if port in seen:
            raise ConfigError(f"{where}: {seen[port]!r} and {key!r} are the same port {port}: keep one")
        seen[port] = str(key)
    return {str(key): value for key, value in table.items()}


def _port(value: Any, where: str) -> int:
    """A port given as a value: an integer 1..65535 (a string is a mistake, not a spelling)."""
    if isinstance(value, str) and _PORT_KEY.fullmatch(value):
        raise ConfigError(f"{where}: {value!r} is a string; write the port as an integer: {int(value)}")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{where}: {value!r} is not a port (an integer 1..65535)")
    return value


def _ports(values: Any, where: str) -> tuple[int, ...]:
    if not isinstance(values, Iterable) or isinstance(values, (str, bytes)):
        raise ConfigError(f"{where} must be a list of ports")
    return tuple(_port(value, where) for value in values)
