"""A UDP echo service behind a load balancer that speaks PROXY v2: prints each client's real address.

Every datagram starts with its own v2 header; the reply goes back to the load
balancer (the datagram's real sender), which passes it on to the client.

    python examples/udp_echo.py --port 9053

Then play the load balancer from Python:

    import socket, gevent_proxyproto as gpp
    lb = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lb.sendto(gpp.format_datagram(b"hello", ("203.0.113.7", 4242), ("127.0.0.1", 9053)), ("127.0.0.1", 9053))
    print(lb.recvfrom(100))   # (b'hello', ('127.0.0.1', 9053))

The server prints ``datagram from 203.0.113.7:4242 via 127.0.0.1:<port>: 5 bytes``.
"""

import argparse
import logging
import sys

from gevent_proxyproto import ProxyDatagramServer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9053)
    parser.add_argument(
        "--trusted-proxies",
        default="127.0.0.0/8,::1",
        help="comma-separated networks allowed to send PROXY datagrams (default: loopback)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def handle(payload, address):
        # address: the client's (host, port) from the header; address.real_peer: the load balancer.
        via = address.real_peer
        print(f"datagram from {address[0]}:{address[1]} via {via[0]}:{via[1]}: {len(payload)} bytes", flush=True)
        server.sendto(payload, address)  # to the load balancer's real address

    server = ProxyDatagramServer((args.host, args.port), handle, trusted_proxies=args.trusted_proxies.split(","))
    server.start()
    print(f"PROXY v2 UDP echo on {args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
