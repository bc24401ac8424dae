"""Handlers for examples/multiplex.toml: XMPP, HTTP and HTTPS on one PROXY port.

Each says which address it sees: the client's own, through HAProxy. Plain
blocking code (``gevent-proxyproto serve`` monkey-patches first). Run from the
repository root, so ``examples.multiplex_handlers`` imports:

    python -m gevent_proxyproto serve --config examples/multiplex.toml
"""

import html
import http.server
import logging
import uuid

log = logging.getLogger("multiplex_example")

#: Enough for any stream opening a real client sends.
_MAX_STREAM_OPENING = 4096


def _describe(address):
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def xmpp(sock, address):
    """Answer an XMPP stream opening with our own, then a stream error saying who the client is.

    Not an XMPP server: just enough of RFC 6120 (section 4.2) for a client to
    see a well-formed answer. The bytes the multiplexer matched are read here,
    from the socket, as if nothing had looked at them.
    """
    opening = b""
    while b"<stream:stream" not in opening or not opening.rstrip().endswith(b">"):
        chunk = sock.recv(1024)
        if not chunk or len(opening) > _MAX_STREAM_OPENING:
            return
        opening += chunk
    text = f"this example only says who you are: {_describe(address)}"
    sock.sendall(
        "<?xml version='1.0'?>"
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
        f"id='{uuid.uuid4().hex}' from='localhost' version='1.0'>"
        "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        f"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{html.escape(text)}</text></stream:error>"
        "</stream:stream>".encode()
    )


class WhoAmIHTTP(http.server.BaseHTTPRequestHandler):
    """HTTP and HTTPS (the same handler: TLS is done before it runs): one text line with the client's address."""

    def do_GET(self):
        scheme = "https" if hasattr(self.request, "cipher") else "http"
        body = f"{scheme}: you are {_describe(self.client_address)}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format, *args):  # to logging, not stderr
        log.info("%s %s", _describe(self.client_address), format % args)
