"""The command line: ``gevent-proxyproto serve``, ``check`` and ``forward``.

Also ``python -m gevent_proxyproto``. ``serve`` monkey-patches the process
(``gevent.monkey.patch_all()``) before it imports anything else, because the
handlers it loads are legacy blocking code; so the gevent-using modules are
imported inside the functions, after the patch. ``forward`` loads no code but
its own, which uses gevent sockets explicitly: it does not patch.
"""

import argparse
import logging
import os
import re
import signal
import sys
from typing import Any

# Pure, no gevent: may come before serve's patch_all().
from ._policy import DEFAULT_CONNECT_TIMEOUT, DEFAULT_GRACE_PERIOD, LOG_FORMAT, describe_peer

#: Exit status for a bad configuration or a failed start-up.
EXIT_CONFIG = 2

log = logging.getLogger("gevent_proxyproto")


class _StoppedDuringStartup(BaseException):
    """SIGTERM or SIGINT arrived before the dispatcher's own handlers were installed.

    A BaseException, like KeyboardInterrupt: no ``except Exception`` on the way may take it.
    """

    def __init__(self, number: int) -> None:
        super().__init__(signal.Signals(number).name)
        self.number = number


def _stop_starting(number: int, frame: Any) -> None:
    raise _StoppedDuringStartup(number)


DEMO_PROXY_PORTS = {18000: "whoami", 18001: "echo"}
DEMO_PLAIN_PORTS = {18080: "whoami", 18081: "echo"}


def demo_config() -> Any:
    """whoami and echo on loopback, each on a PROXY port and a plain port."""
    from ._config import DispatcherConfig, ServiceConfig

    return DispatcherConfig(
        bind="127.0.0.1",
        proxy_ports=tuple(DEMO_PROXY_PORTS),
        proxy_port_mappings=dict(DEMO_PROXY_PORTS),
        services={
            name: ServiceConfig(
                name, name, tuple(port for port, service in DEMO_PLAIN_PORTS.items() if service == name)
            )
            for name in ("whoami", "echo")
        },
    )


def _demo_instructions() -> str:
    whoami_proxy = next(port for port, name in DEMO_PROXY_PORTS.items() if name == "whoami")
    whoami_plain = next(port for port, name in DEMO_PLAIN_PORTS.items() if name == "whoami")
    return (
        "Demo configuration (no --config given). Try it:\n"
        f"  printf 'PROXY TCP4 203.0.113.7 127.0.0.1 4242 {whoami_proxy}\\r\\n' | nc -q1 127.0.0.1 {whoami_proxy}\n"
        f"  nc -q1 127.0.0.1 {whoami_plain} </dev/null      # a plain port: your own address\n"
        "whoami answers with one JSON line, then echoes what you type. Stop with Ctrl-C."
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gevent-proxyproto", description="PROXY protocol servers for gevent: the real client address."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the multi-port dispatcher")
    serve.add_argument("--config", metavar="FILE", help="a TOML configuration (default: a loopback demo)")
    serve.add_argument("--log-level", default="INFO", type=str.upper, help="DEBUG, INFO, WARNING... (default INFO)")
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="supervised processes sharing the ports (default: serve in this process)")  # fmt: skip
    check = commands.add_parser("check", help="validate a configuration file without starting anything")
    check.add_argument("config_file", nargs="?", metavar="FILE")
    check.add_argument("--config", metavar="FILE")
    check.add_argument("--log-level", default="WARNING", type=str.upper)
    forward = commands.add_parser(
        "forward",
        help="relay plain TCP connections to a PROXY port, each with a header carrying the client's address",
    )
    forward.add_argument("--listen", required=True, type=_host_port, metavar="HOST:PORT",
                         help="where clients connect ([::1]:PORT for IPv6)")  # fmt: skip
    forward.add_argument("--to", required=True, type=_host_port, metavar="HOST:PORT", dest="upstream",
                         help="the PROXY port to forward to")  # fmt: skip
    forward.add_argument("--proxy-protocol", choices=("v1", "v2"), default="v2", help="header version (default v2)")
    forward.add_argument("--crc32c", action="store_true", help="add a CRC32C TLV (v2), first as HAProxy does")
    forward.add_argument("--tlv", action="append", default=[], type=_tlv, metavar="TYPE=HEX",
                         help="add a TLV (v2): TYPE decimal or 0xNN, the value in hex; repeatable, sent in order")  # fmt: skip
    forward.add_argument("--connect-timeout", type=_seconds, default=DEFAULT_CONNECT_TIMEOUT, metavar="SECONDS",
                         help=f"to connect to the upstream (default {DEFAULT_CONNECT_TIMEOUT:g})")  # fmt: skip
    forward.add_argument("--idle-timeout", type=_seconds, default=None, metavar="SECONDS",
                         help="close a connection after this long with no byte either way (default: never)")  # fmt: skip
    forward.add_argument("--grace-period", type=_seconds, default=DEFAULT_GRACE_PERIOD, metavar="SECONDS",
                         help=f"open connections get this long after SIGTERM/SIGINT, a second signal ends them "
                              f"(default {DEFAULT_GRACE_PERIOD:g})")  # fmt: skip
    forward.add_argument(
        "--log-level", default="INFO", type=str.upper, help="DEBUG shows each connection (default INFO)"
    )
    return parser


def _host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT``; for argparse."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"write an IPv6 address in brackets: [{host}]:{port}")
    if not colon or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host, int(port)


def _seconds(text: str) -> float:
    """A positive number of seconds; for argparse."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


#: ``--tlv TYPE=HEX``: TYPE decimal or 0xNN, the value as pairs of hex digits (maybe none).
_TLV_ARGUMENT = re.compile(r"(?:0[xX](?P<hex>[0-9a-fA-F]{1,2})|(?P<decimal>[0-9]{1,3}))=(?P<value>(?:[0-9a-fA-F]{2})*)")


def _tlv(text: str) -> tuple[int, bytes]:
    """``TYPE=HEX``; for argparse."""
    match = _TLV_ARGUMENT.fullmatch(text)
    tlv_type = -1 if match is None else int(match["hex"], 16) if match["hex"] else int(match["decimal"])
    if match is None or tlv_type > 0xFF:
        raise argparse.ArgumentTypeError(f"not TYPE=HEX with TYPE 0..255 (or 0x00..0xFF) and a hex value: {text!r}")
    if tlv_type == 0x03:
        raise argparse.ArgumentTypeError("TLV 0x03 is CRC32C: use --crc32c, which computes it")
    return tlv_type, bytes.fromhex(match["value"])


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["serve"]:
        # Until serve installs its own handlers, a stop request must not end
        # in a KeyboardInterrupt traceback or a death by SIGTERM: it stops the
        # start-up, and the exit is that of a normal stop.
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, _stop_starting)
    try:
        return _main(argv)
    except _StoppedDuringStartup as stop:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, signal.SIG_IGN)  # exiting already
        log.warning("%s during start-up: stopped before serving", stop)
        return 0


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "forward" and args.proxy_protocol == "v1" and (args.tlv or args.crc32c):
        parser.error("--tlv and --crc32c need --proxy-protocol v2: a v1 header carries no TLVs")
    if args.command == "serve":
        # First of all: the handlers are blocking code, and modules imported
        # before the patch (threading, ssl) would not cooperate.
        from gevent import monkey

        monkey.patch_all()
    level = getattr(logging, args.log_level, None)
    if not isinstance(level, int):
        print(f"gevent-proxyproto: error: unknown log level {args.log_level!r}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=level, format=LOG_FORMAT)
    if args.command in ("check", "serve"):
        _import_from_cwd()
    if args.command == "check":
        return _check(args.config or args.config_file)
    if args.command == "forward":
        return _forward(args)
    return _serve(args.config, args.workers)


def _import_from_cwd() -> None:
    """Handlers import from the current directory, as with ``python -m`` and gunicorn.

    The console script's ``sys.path[0]`` is the script's own directory.
    """
    cwd = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == cwd for entry in sys.path):
        sys.path.insert(0, cwd)


def _load(path: str | None) -> Any:
    from ._config import load_config

    return load_config(path) if path else demo_config()


def _check(path: str | None) -> int:
    from ._config import ConfigError
    from ._dispatch import Dispatcher, StartupError

    if not path:
        print("gevent-proxyproto: error: check needs a configuration file", file=sys.stderr)
        return EXIT_CONFIG
    try:
        # As serve does, short of binding: imports every handler, loads every
        # certificate, key and CA file; the trusted networks are parsed by the config.
        dispatcher = Dispatcher(_load(path))
    except (ConfigError, StartupError) as error:
        print(f"gevent-proxyproto: error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{path}: OK")
    for line in dispatcher.describe():
        print(f"  {line}")
    return 0


def _serve(path: str | None, workers: int | None) -> int:
    from ._config import ConfigError
    from ._dispatch import Dispatcher, StartupError
    from ._supervisor import Supervisor, serve_in_process
    from ._trust import warn_if_trusting_everyone

    if workers is not None and workers < 1:
        print("gevent-proxyproto: error: --workers must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = _load(path)
        dispatcher = Dispatcher(config)  # validates the handlers before anything listens
        if config.proxy_ports:
            warn_if_trusting_everyone(dispatcher.policy.trusted, "trusted_proxies")
        print("\n".join(dispatcher.describe()), flush=True)
        if path is None:
            print(_demo_instructions(), flush=True)
        # SIGHUP reads the same file again (or takes the demo again).
        if workers is None:
            return serve_in_process(config, lambda: _load(path))
        return Supervisor(config, lambda: _load(path), workers).run()
    except (ConfigError, StartupError) as error:
        print(f"gevent-proxyproto: error: {error}", file=sys.stderr)
        return EXIT_CONFIG


def _forward(args: argparse.Namespace) -> int:
    from ._relay import ProxyRelay

    try:
        relay = ProxyRelay(
            args.listen,
            args.upstream,
            version=int(args.proxy_protocol[1:]),
            tlvs=args.tlv,
            crc32c=args.crc32c,
            connect_timeout=args.connect_timeout,
            idle_timeout=args.idle_timeout,
        )
    except ValueError as error:  # e.g. TLVs over the 65535 bytes a v2 header holds
        print(f"gevent-proxyproto: error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        relay.start()
    except OSError as error:
        print(f"gevent-proxyproto: error: cannot listen on {describe_peer(args.listen)}: {error.strerror or error}",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    options = (["crc32c"] if args.crc32c else []) + [f"TLV 0x{tlv_type:02x}" for tlv_type, _ in args.tlv]

    def say_ready() -> None:  # once the signals are handled too: a script may send one at once
        print(f"forwarding {describe_peer(relay.address)} -> {describe_peer(args.upstream)} "
              f"with PROXY {', '.join([args.proxy_protocol, *options])}", flush=True)  # fmt: skip

    relay.serve_until_signal(args.grace_period, on_ready=say_ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
