"""A plain WSGI application that shows what it knows of its client; it knows nothing of PROXY.

Behind a load balancer that sends PROXY headers, serve it with one of:

    gunicorn -k gevent_proxyproto.gunicorn.GeventWorker -b 127.0.0.1:8000 --chdir examples wsgi_app:app
    gunicorn -c examples/gunicorn.conf.py --chdir examples wsgi_app:app
    python examples/wsgi_app.py --port 8000        # gevent_proxyproto.ProxyWSGIServer

then ``curl --haproxy-protocol http://127.0.0.1:8000/``. It answers (and
prints) one ``KEY=value`` line per environ key of interest: ``REMOTE_ADDR``
and ``REMOTE_PORT`` are the client's, ``PROXY_ADDR``/``PROXY_PORT`` the load
balancer's address the client connected to, ``wsgi.url_scheme`` ``https``
when the client reached the load balancer over TLS (HAProxy's
``send-proxy-v2-ssl``).
"""

import argparse
import sys

#: The environ keys shown, in this order.
KEYS = (
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "PROXY_ADDR",
    "PROXY_PORT",
    "PROXY_PROTOCOL",
    "wsgi.url_scheme",
    "HTTPS",
    "gevent_proxyproto.header",
)


def app(environ, start_response):
    body = "".join(f"{key}={environ.get(key)}\n" for key in KEYS)
    print(body.replace("\n", " ").strip(), flush=True)
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


def main(argv=None):
    parser = argparse.ArgumentParser(description="the app behind a PROXY port, on gevent_proxyproto.ProxyWSGIServer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--trusted-proxies",
        default="127.0.0.1,::1",
        help="comma-separated networks allowed to send PROXY headers (default: loopback)",
    )
    args = parser.parse_args(argv)
    from gevent_proxyproto import ProxyWSGIServer

    server = ProxyWSGIServer((args.host, args.port), app, trusted_proxies=args.trusted_proxies.split(","))
    server.start()
    print(f"Listening at: http://{args.host}:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
