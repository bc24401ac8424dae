"""Servers of every kind gevent_proxyproto.monkey covers, for tests/test_monkey.py.

    python tests/monkey_servers.py KIND PROXY_PORT PLAIN_PORT [--patch] [--header-timeout S] [--tls CERT KEY]

Starts two servers of KIND on 127.0.0.1, one on each port, prints ``ready
patched=<bool>`` and serves until killed. Every server answers with the client
address as the program sees it, ``<host> <port>``: line servers as their first
line (then they echo one line and close), HTTP servers as the body of ``GET /``.

Without ``--patch`` this is an ordinary program that knows nothing of PROXY
(run it under ``python -m gevent_proxyproto.monkey``); with ``--patch`` it
patches itself through the API, before anything else.
"""

import argparse
import sys

#: As in tests/test_monkey.py (which cannot import this module: it runs on import).
KINDS = ["streamserver", "pywsgi", "tcpserver", "threadingtcpserver", "httpserver", "threadinghttpserver", "wsgiref",
         "acceptloop"]  # fmt: skip

parser = argparse.ArgumentParser()
parser.add_argument("kind", choices=KINDS)
parser.add_argument("proxy_port", type=int)
parser.add_argument("plain_port", type=int)
parser.add_argument("--patch", action="store_true", help="patch through the API (else: run me under the runner)")
parser.add_argument("--header-timeout", type=float)
parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="TLS on the PROXY port (gevent kinds)")
parser.add_argument("--ssl-args", action="store_true", help="TLS from certfile/keyfile, not an ssl_context")
options = parser.parse_args()

if options.patch:
    from gevent import monkey

    monkey.patch_all()
    import gevent_proxyproto.monkey

    gevent_proxyproto.monkey.patch([options.proxy_port], header_timeout=options.header_timeout)

import http.server  # noqa: E402 - after the patch, as a program run by the runner would
import socket  # noqa: E402
import socketserver  # noqa: E402
import threading  # noqa: E402
import wsgiref.simple_server  # noqa: E402


def line_handler(sock, address):
    peer = sock.getpeername()  # must agree with address, also over TLS
    answer = f"{address[0]} {address[1]}" if peer[:2] == address[:2] else f"getpeername() {peer} but address {address}"
    sock.sendall(answer.encode() + b"\n")
    with sock.makefile("rb") as lines:
        sock.sendall(lines.readline())


def application(environ, start_response):
    body = f"{environ['REMOTE_ADDR']} {environ.get('REMOTE_PORT', '-')}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class LineRequestHandler(socketserver.BaseRequestHandler):
    def handle(self):
        line_handler(self.request, self.client_address)


class HTTPRequestHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{self.client_address[0]} {self.client_address[1]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class QuietWSGIRequestHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args):
        pass


def in_a_thread(function):
    threading.Thread(target=function, daemon=True).start()


def accept_loop(listener):
    """Legacy blocking code: one connection at a time."""
    while True:
        conn, address = listener.accept()
        with conn:
            line_handler(conn, address)


def serve(kind, port, tls):
    address = ("127.0.0.1", port)
    if kind in ("streamserver", "pywsgi"):
        import gevent.pywsgi
        import gevent.server

        ssl_args = {}
        if tls and options.ssl_args:
            ssl_args = {"certfile": tls[0], "keyfile": tls[1]}
        elif tls:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            ssl_args = {"ssl_context": context}
        if kind == "streamserver":
            server = gevent.server.StreamServer(address, line_handler, **ssl_args)
        else:
            server = gevent.pywsgi.WSGIServer(address, application, log=None, **ssl_args)
        server.start()
    elif kind == "acceptloop":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(64)
        in_a_thread(lambda: accept_loop(listener))
    else:
        if kind == "tcpserver":
            server = socketserver.TCPServer(address, LineRequestHandler)
        elif kind == "threadingtcpserver":
            server = socketserver.ThreadingTCPServer(address, LineRequestHandler)
        elif kind == "httpserver":
            server = http.server.HTTPServer(address, HTTPRequestHandler)
        elif kind == "threadinghttpserver":
            server = http.server.ThreadingHTTPServer(address, HTTPRequestHandler)
        else:
            server = wsgiref.simple_server.make_server(
                "127.0.0.1", port, application, handler_class=QuietWSGIRequestHandler
            )
        in_a_thread(server.serve_forever)


serve(options.kind, options.proxy_port, options.tls)
serve(options.kind, options.plain_port, None)
monkey_module = sys.modules.get("gevent_proxyproto.monkey")
print(f"ready patched={monkey_module is not None and monkey_module.is_patched()}", flush=True)
threading.Event().wait()
