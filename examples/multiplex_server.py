"""Several services on several ports, behind HAProxy: the seed's example made real.

Two line-based services, ``c2s`` (client-to-server) and ``s2s``
(server-to-server), each on a plain port and on a PROXY port. Built with the
Python API; ``gevent-proxyproto serve --config`` does the same from a file.

    python examples/multiplex_server.py
    haproxy -f examples/haproxy.cfg -db        # in another terminal
    nc ::1 25222                               # through HAProxy, over IPv6

The greeting shows the address the client really has (``::1`` and its own
port), not HAProxy's IPv4 connection to the server.
"""

import argparse
import sys

from gevent import monkey

monkey.patch_all()  # the handlers below are plain blocking code

import logging  # noqa: E402

from gevent_proxyproto import Dispatcher, DispatcherConfig, ServiceConfig  # noqa: E402

C2S_PORT, S2S_PORT = 5222, 5269  # plain ports, as a direct client uses them
C2S_PROXY_PORT, S2S_PROXY_PORT = 15222, 15269  # PROXY ports, for HAProxy's backends


def line_service(name):
    """A legacy blocking handler: greet the client by address, then answer each line."""

    def handle(sock, address):
        real = sock.real_peername() if hasattr(sock, "real_peername") else address
        via = f" (via proxy {real[0]}:{real[1]})" if real != address else ""
        with sock.makefile("rwb") as stream:
            stream.write(f"{name} ready: you are {address[0]}:{address[1]}{via}\n".encode())
            stream.flush()
            for line in stream:
                stream.write(f"{name} {address[0]}:{address[1]}: ".encode() + line)
                stream.flush()

    return handle


def config(bind="127.0.0.1"):
    return DispatcherConfig(
        bind=bind,
        proxy_ports=(C2S_PROXY_PORT, S2S_PROXY_PORT),
        proxy_port_mappings={C2S_PROXY_PORT: "c2s", S2S_PROXY_PORT: "s2s"},
        services={
            "c2s": ServiceConfig("c2s", line_service("c2s"), (C2S_PORT,)),
            "s2s": ServiceConfig("s2s", line_service("s2s"), (S2S_PORT,)),
        },
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dispatcher = Dispatcher(config(args.bind))
    print("\n".join(dispatcher.describe()), flush=True)
    dispatcher.serve_forever()  # until Ctrl-C or SIGTERM
    return 0


if __name__ == "__main__":
    sys.exit(main())
