"""A plain gevent WSGI app that shows the client's address; it knows nothing of PROXY.

Run it unmodified behind a load balancer, the PROXY port patched in:

    python -m gevent_proxyproto.monkey --proxy-ports 8080 examples/pywsgi_app.py
    curl --haproxy-protocol http://127.0.0.1:8080/

The answer, ``REMOTE_ADDR=127.0.0.1 REMOTE_PORT=<curl's port>``, is the
address from the PROXY header (curl names its own socket). Run without the
runner, the same request gets ``400 Bad Request``: the header is not HTTP.
"""

import argparse
import sys

from gevent.pywsgi import WSGIServer


def application(environ, start_response):
    body = f"REMOTE_ADDR={environ['REMOTE_ADDR']} REMOTE_PORT={environ['REMOTE_PORT']}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    server = WSGIServer((args.host, args.port), application)
    server.start()
    print(f"pywsgi app on http://{args.host}:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
