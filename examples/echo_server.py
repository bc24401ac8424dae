"""A one-port echo server behind a load balancer: prints each client's real address.

Run it, then send a PROXY header the way HAProxy would:

    python examples/echo_server.py --port 8000
    printf 'PROXY TCP4 203.0.113.7 127.0.0.1 4242 8000\\r\\nhello\\n' | nc -q1 127.0.0.1 8000

The server prints ``connection from 203.0.113.7:4242 (via 127.0.0.1:<port>)``
and echoes ``hello`` back.
"""

import argparse
import logging
import sys

from gevent_proxyproto import ProxyStreamServer


def handle(sock, address):
    print(f"connection from {address[0]}:{address[1]} (via {sock.real_peername()[0]}:{sock.real_peername()[1]})",
          flush=True)  # fmt: skip
    while True:
        data = sock.recv(4096)
        if not data:
            break
        sock.sendall(data)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--trusted-proxies",
        default="127.0.0.0/8,::1",
        help="comma-separated networks allowed to send PROXY headers (default: loopback)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    server = ProxyStreamServer((args.host, args.port), handle, trusted_proxies=args.trusted_proxies.split(","))
    server.start()  # listening from here on
    print(f"PROXY echo server on {args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
