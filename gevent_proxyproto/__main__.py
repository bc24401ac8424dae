"""The command line: ``gevent-proxyproto serve`` and ``gevent-proxyproto check``.

Also ``python -m gevent_proxyproto``. ``serve`` monkey-patches the process
(``gevent.monkey.patch_all()``) before it imports anything else, because the
handlers it loads are legacy blocking code; so the gevent-using modules are
imported inside the functions, after the patch.
"""

import argparse
import logging
import sys
from typing import Any

#: Exit status for a bad configuration or a failed start-up.
EXIT_CONFIG = 2

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
    serve.add_argument("--workers", type=int, default=1, metavar="N", help="processes sharing the ports (default 1)")
    check = commands.add_parser("check", help="validate a configuration file without starting anything")
    check.add_argument("config_file", nargs="?", metavar="FILE")
    check.add_argument("--config", metavar="FILE")
    check.add_argument("--log-level", default="WARNING", type=str.upper)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        # First of all: the handlers are blocking code, and modules imported
        # before the patch (threading, ssl) would not cooperate.
        from gevent import monkey

        monkey.patch_all()
    level = getattr(logging, args.log_level, None)
    if not isinstance(level, int):
        print(f"gevent-proxyproto: error: unknown log level {args.log_level!r}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "check":
        return _check(args.config or args.config_file)
    return _serve(args.config, args.workers)


def _load(path: str | None) -> Any:
    from ._config import load_config

    return load_config(path) if path else demo_config()


def _check(path: str | None) -> int:
    from ._config import ConfigError
    from ._dispatch import Dispatcher

    if not path:
        print("gevent-proxyproto: error: check needs a configuration file", file=sys.stderr)
        return EXIT_CONFIG
    try:
        dispatcher = Dispatcher(_load(path))  # imports every handler; binds nothing
    except ConfigError as error:
        print(f"gevent-proxyproto: error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{path}: OK")
    for line in dispatcher.describe():
        print(f"  {line}")
    return 0


def _serve(path: str | None, workers: int) -> int:
    from ._config import ConfigError
    from ._dispatch import Dispatcher, StartupError, run_workers

    if workers < 1:
        print("gevent-proxyproto: error: --workers must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = _load(path)
        dispatcher = Dispatcher(config)  # validates the handlers before anything listens
        print("\n".join(dispatcher.describe()), flush=True)
        if path is None:
            print(_demo_instructions(), flush=True)
        if workers == 1:
            dispatcher.serve_forever()
            return 0
        return run_workers(config, workers)
    except (ConfigError, StartupError) as error:
        print(f"gevent-proxyproto: error: {error}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
