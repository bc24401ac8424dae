"""A legacy socketserver program: greets each client by address, then echoes lines.

It knows nothing of gevent or PROXY. Run it unmodified with its port patched in:

    python -m gevent_proxyproto.monkey --proxy-ports 8081 examples/legacy_socketserver.py
    printf 'PROXY TCP4 203.0.113.7 127.0.0.1 4242 8081\\r\\nhello\\n' | nc -q1 127.0.0.1 8081

It answers ``hello 203.0.113.7:4242`` then ``hello``, and prints
``connection from 203.0.113.7:4242``: ``client_address`` is the client's,
from the header, not the load balancer's.
"""

import argparse
import socketserver
import sys


def describe(address):
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GreetingEchoHandler(socketserver.StreamRequestHandler):
    def handle(self):
        print(f"connection from {describe(self.client_address)}", flush=True)
        self.wfile.write(f"hello {describe(self.client_address)}\n".encode())
        for line in self.rfile:
            self.wfile.write(line)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    with Server((args.host, args.port), GreetingEchoHandler) as server:
        print(f"socketserver on {args.host}:{server.server_address[1]}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
