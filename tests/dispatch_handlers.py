"""Handlers for the dispatcher tests, imported by path ("tests.dispatch_handlers:...")."""

import socketserver


def hello(sock, address):
    """A legacy callable handler: greets with the address it was given, then closes."""
    sock.sendall(f"hello {address[0]} {address[1]}\n".encode())


class LineHandler(socketserver.StreamRequestHandler):
    """A legacy BaseRequestHandler: answers each line with its client_address and the line."""

    def handle(self):
        for line in self.rfile:
            self.wfile.write(
                f"{self.client_address[0]} {self.client_address[1]} {self.server.service} ".encode() + line
            )
            self.wfile.flush()


class NotAHandler:
    pass


def broken(sock, address):
    """A handler with a bug: it fails on every connection."""
    raise ValueError("broken on purpose")


def ticker(sock, address):
    """Writes lines until the client goes away: a reset surfaces in sendall."""
    while True:
        sock.sendall(b"tick\n" * 1000)
