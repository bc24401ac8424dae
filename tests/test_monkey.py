"""gevent_proxyproto.monkey: every patched case runs in its own subprocess (patching must not leak).

The servers are tests/monkey_servers.py, started with the API (``--patch``) or
under the runner; this process is only their client, over real loopback sockets.
"""

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field

import gevent
import gevent.socket
import pytest

from .conftest import REPO, TESTS, require_tool
from .support import (
    V1_TCP4,
    V2_TCP6,
    client_tls_context,
    make_certificate,
    read_all,
    read_line,
    serving,
    still_open,
    wait_until,
)

SERVERS = TESTS / "monkey_servers.py"
#: The kinds monkey_servers.py knows, and those of them that speak HTTP.
KINDS = [
    "streamserver",
    "pywsgi",
    "tcpserver",
    "threadingtcpserver",
    "httpserver",
    "threadinghttpserver",
    "wsgiref",
    "acceptloop",
]
HTTP_KINDS = {"pywsgi", "httpserver", "threadinghttpserver", "wsgiref"}

HEADERS = {
    "v1": (V1_TCP4, ("203.0.113.7", "4242")),
    "v2": (V2_TCP6, ("2001:db8::7", "4242")),
}
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def free_port() -> int:
    with gevent.socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Running:
    process: subprocess.Popen  # type: ignore[type-arg]
    proxy_port: int
    plain_port: int = 0
    #: The line the program printed once listening.
    ready_line: str = ""
    #: The program's stderr, once it has been stopped.
    stderr: str = field(default="")


@contextlib.contextmanager
def running(command: list[str], proxy_port: int, plain_port: int = 0, ready: str = "ready") -> Iterator[Running]:
    """Run ``command`` until the block ends; it is ready when it prints a line starting with ``ready``."""
    # The stdlib's Popen, not gevent.subprocess: gevent's installs a SIGCHLD
    # handler for the rest of the session, after which the hub reaps every
    # child and other tests' Popen.wait() report 0 whatever the exit status.
    process = subprocess.Popen(
        command, cwd=str(REPO), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    result = Running(process, proxy_port, plain_port)
    try:
        gevent.socket.wait_read(process.stdout.fileno(), timeout=10,
                                timeout_exc=AssertionError("the program did not get ready in 10 s"))  # fmt: skip
        result.ready_line = process.stdout.readline().decode()  # the program prints whole lines
        if not result.ready_line.startswith(ready):
            process.kill()
            raise AssertionError(f"not ready: {result.ready_line!r} {process.communicate(timeout=5)[1].decode()}")
        yield result
    finally:
        if process.poll() is None:
            process.terminate()
        result.stderr = process.communicate(timeout=5)[1].decode()


def servers(
    kind: str, *options: str, runner: list[str] | None = None, module: bool = False
) -> contextlib.AbstractContextManager[Running]:
    """tests/monkey_servers.py serving KIND: patched through the API, or under the runner."""
    proxy_port, plain_port = free_port(), free_port()
    program = ["-m", "tests.monkey_servers"] if module else [str(SERVERS)]
    arguments = [kind, str(proxy_port), str(plain_port), *options]
    if runner is None:
        command = [sys.executable, str(SERVERS), *arguments, "--patch"]
    else:
        runner_options = ["--proxy-ports", str(proxy_port), *runner]
        command = [sys.executable, "-m", "gevent_proxyproto.monkey", *runner_options, *program, *arguments]
    return running(command, proxy_port, plain_port)


def connect(port: int, data: bytes = b"", source: str | None = None) -> gevent.socket.socket:
    sock = gevent.socket.create_connection(("127.0.0.1", port), source_address=(source, 0) if source else None)
    if data:
        sock.sendall(data)
    return sock


def ask(kind: str, port: int, header: bytes = b"", source: str | None = None) -> tuple[tuple[str, str], tuple]:
    """The client address the program reports, and this client's own address."""
    with connect(port, header, source) as client:
        own = client.getsockname()
        if kind in HTTP_KINDS:
            client.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
            response = read_all(client)
            assert response.startswith(b"HTTP/1.") and b" 200 " in response.split(b"\r\n")[0], response
            reported = response.rsplit(b"\r\n\r\n", 1)[1].decode().split()
        else:
            reported = read_line(client).decode().split()
            client.sendall(b"payload after the header\n")
            assert read_line(client) == b"payload after the header\n"  # the program reads on from the right byte
    assert len(reported) == 2, reported
    return (reported[0], reported[1]), own


def expected_plain(kind: str, own: tuple) -> tuple[str, str]:
    return own[0], "-" if kind == "wsgiref" else str(own[1])  # wsgiref sets no REMOTE_PORT


def listen_queue(port: int) -> int:
    """Connections waiting in the kernel's accept queue of the listener on ``port`` (Linux)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in rows.readlines()[1:]:
                fields = row.split()
                # fields[3] is the state (0A: LISTEN); for a listener, rx_queue is its accept backlog
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on {port}")


@pytest.mark.parametrize("version", sorted(HEADERS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_server_kind_reports_the_client_address(kind: str, version: str) -> None:
    header, client = HEADERS[version]
    with servers(kind) as program:
        assert program.ready_line.strip() == "ready patched=True"
        reported, _ = ask(kind, program.proxy_port, header)
        assert reported == (client[0], "-" if kind == "wsgiref" else client[1])
        reported, own = ask(kind, program.plain_port)  # the other port stays plain: no header expected
        assert reported == expected_plain(kind, own)
    assert "Traceback" not in program.stderr and "refused" not in program.stderr


@pytest.mark.parametrize("kind", ["streamserver", "tcpserver", "acceptloop", "wsgiref"])
def test_a_bad_connection_is_closed_logged_and_never_seen(kind: str) -> None:
    with servers(kind) as program:
        with connect(program.proxy_port, b"GET / HTTP/1.0\r\n\r\n") as bad:
            assert read_all(bad) == b""  # a program that saw it would answer (400, or an address line)
        reported, _ = ask(kind, program.proxy_port, V1_TCP4)  # nothing else is affected
        assert reported[0] == "203.0.113.7"
    refusals = [line for line in program.stderr.splitlines() if "refused" in line]
    assert len(refusals) == 1, program.stderr
    assert "NOT_HDR" in refusals[0] and f"on 127.0.0.1:{program.proxy_port}" in refusals[0]
    assert "Traceback" not in program.stderr


@pytest.mark.parametrize("kind", ["tcpserver", "httpserver", "acceptloop", "streamserver"])
def test_silent_clients_do_not_stall_a_single_threaded_accept_loop(kind: str) -> None:
    with servers(kind, "--header-timeout", "15") as program:
        silent = [connect(program.proxy_port) for _ in range(10)]
        trickling = [connect(program.proxy_port, V1_TCP4[:9]) for _ in range(10)]
        reported, _ = ask(kind, program.proxy_port, V1_TCP4)
        assert reported[0] == "203.0.113.7"
        # Served while every slow client still waits for its header (15 s): a sequential
        # header read would still be waiting for the first of them.
        assert all(still_open(client) for client in silent + trickling)
        for client in silent + trickling:
            client.close()


def test_a_header_read_while_the_loop_is_busy_is_not_lost() -> None:
    """socketserver waits in a selector: it must learn of connections the accept loop already took."""
    with servers("tcpserver") as program:
        with connect(program.proxy_port, V1_TCP4) as first:
            assert read_line(first) == b"203.0.113.7 4242\n"  # the only thread is in first's handler now
            with connect(program.proxy_port, V2_TCP6) as second:
                # The accept loop takes `second` off the kernel's queue (and reads its
                # header) meanwhile: the listener's descriptor will not be readable again.
                wait_until(lambda: listen_queue(program.proxy_port) == 0)
                first.sendall(b"done\n")
                assert read_line(first) == b"done\n"
                with gevent.Timeout(5, AssertionError("the second connection was never served")):
                    assert read_line(second) == b"2001:db8::7 4242\n"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_certificate(str(tmp_path_factory.mktemp("tls")))


@pytest.mark.parametrize("style", ["ssl_context", "ssl_args"])
@pytest.mark.parametrize("kind", ["streamserver", "pywsgi"])
def test_tls_after_the_header(kind: str, style: str, certificate: tuple[str, str]) -> None:
    options = ["--tls", *certificate] + (["--ssl-args"] if style == "ssl_args" else [])
    with servers(kind, *options) as program:
        with connect(program.proxy_port, V2_TCP6) as raw, client_tls_context().wrap_socket(raw) as client:
            if kind == "pywsgi":
                client.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
                assert read_all(client).endswith(b"\r\n\r\n2001:db8::7 4242\n")
            else:
                assert read_line(client) == b"2001:db8::7 4242\n"
    assert "TLS handshake failed" not in program.stderr and "Traceback" not in program.stderr


@pytest.mark.parametrize("form", ["script", "module"])
def test_runner_runs_an_unmodified_program(form: str) -> None:
    kind = "streamserver" if form == "script" else "tcpserver"
    with servers(kind, runner=[], module=form == "module") as program:
        assert program.ready_line.strip() == "ready patched=True"  # one monkey module, seen by the program
        for header, client in HEADERS.values():
            assert ask(kind, program.proxy_port, header)[0] == client
        reported, own = ask(kind, program.plain_port)
        assert reported == expected_plain(kind, own)
    assert "MonkeyPatchWarning" not in program.stderr  # patch_all() ran before anything imported ssl


def test_importing_the_module_imports_neither_gevent_nor_ssl() -> None:
    """The runner (and a program) must be able to call gevent's patch_all() after importing it."""
    code = (
        "import sys, gevent_proxyproto.monkey\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('gevent', 'ssl', 'socketserver')))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, timeout=15)
    assert result.stdout == b"[]\n", result.stderr.decode()


def test_runner_options_reach_the_policy() -> None:
    options = ["--trusted-proxies", "10.0.0.0/8,127.0.0.2", "--header-timeout", "0.5"]
    with servers("httpserver", runner=options) as program:
        with connect(program.proxy_port, V1_TCP4) as untrusted:  # from 127.0.0.1
            assert read_all(untrusted) == b""
        # The 0.5 s given, not the default 5 s: the silent connection is closed while one to a
        # server with a 2.5 s header_timeout, opened after it, is still open.
        with serving(lambda sock, address: None, header_timeout=2.5) as reference:
            with connect(program.proxy_port, source="127.0.0.2") as silent, connect(reference.address[1]) as later:
                assert read_all(silent) == b""
                assert still_open(later)
        assert ask("httpserver", program.proxy_port, V1_TCP4, source="127.0.0.2")[0] == HEADERS["v1"][1]
    assert "UNTRUSTED" in program.stderr and "TIMEOUT" in program.stderr


@pytest.mark.parametrize(
    "arguments, message",
    [
        ([], "the following arguments are required: --proxy-ports"),
        (["--proxy-ports", "http", "x.py"], "invalid literal"),
        (["--proxy-ports", "0", "x.py"], "a PROXY port is an int in 1..65535"),
        (["--proxy-ports", "80", "--header-timeout", "0", "x.py"], "header_timeout must be a positive number"),
        (["--proxy-ports", "80", "--trusted-proxies", "10.0.0.0/33", "x.py"], "10.0.0.0/33"),
    ],
    ids=["no-ports", "bad-port", "port-0", "bad-timeout", "bad-network"],
)
def test_runner_refuses_bad_options(arguments: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gevent_proxyproto.monkey", *arguments], env=ENV, capture_output=True, timeout=15
    )
    assert result.returncode == 2
    assert message in result.stderr.decode()


API_CONTRACT = """
import logging, socket, sys
import gevent_proxyproto.monkey as proxy_monkey

PORT, SERVER_PORT, HEADER = int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3])

try:
    proxy_monkey.patch([PORT])
except RuntimeError as error:
    assert "patch_all" in str(error)
else:
    raise AssertionError("patch() before patch_all() must fail")

from gevent import monkey
monkey.patch_all()
import socket, socketserver, gevent.server, gevent.socket

early = socket.socket()                      # made before the patch: stays plain (documented)
early.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
early.bind(("127.0.0.1", PORT))
import gevent.event
seen = gevent.event.AsyncResult()
server = gevent.server.StreamServer(("127.0.0.1", SERVER_PORT), lambda sock, address: seen.set(address))

originals = (socket.socket, socketserver._ServerSelector, gevent.server.StreamServer.init_socket)
for bad in ([], [0], [70000], ["80"], [True]):
    try:
        proxy_monkey.patch(bad)
    except ValueError:
        pass
    else:
        raise AssertionError(bad)
assert not proxy_monkey.is_patched()

proxy_monkey.patch([PORT, SERVER_PORT])
patched = (socket.socket, socketserver._ServerSelector, gevent.server.StreamServer.init_socket)
assert proxy_monkey.is_patched() and all(a is not b for a, b in zip(patched, originals))
assert proxy_monkey.get_original("socket", "socket") is gevent.socket.socket
assert proxy_monkey.is_object_patched("gevent.server.StreamServer", "init_socket")
proxy_monkey.patch([PORT, SERVER_PORT])       # idempotent: nothing wrapped twice
assert (socket.socket, socketserver._ServerSelector, gevent.server.StreamServer.init_socket) == patched
assert proxy_monkey.get_original("socket", "socket") is gevent.socket.socket

# Sockets gevent makes itself are still socket.socket instances.
a, b = socket.socketpair()
assert isinstance(a, socket.socket) and issubclass(gevent.socket.socket, socket.socket)
assert isinstance(socket.socket(), socket.socket) and "gevent_proxyproto.monkey.socket" in repr(socket.socket())

early.listen(8)
client = socket.create_connection(("127.0.0.1", PORT))
client.sendall(HEADER)
conn, address = early.accept()
assert conn.recv(len(HEADER)) == HEADER and address == client.getsockname(), "an early listener stays plain"
early.close()

server.start()                                # created before the patch, started after: its port decides
with socket.create_connection(("127.0.0.1", SERVER_PORT)) as client:
    client.sendall(HEADER)
    assert seen.get(timeout=5) == ("203.0.113.7", 4242)
server.stop()

records = []
logging.getLogger("gevent_proxyproto").addHandler(type("H", (logging.Handler,), {"emit": lambda self, r: records.append(r.getMessage())})())
import ssl
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
proxy_monkey.patch([listener.getsockname()[1]])
listener.listen(8)
ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).wrap_socket(listener, server_side=True).close()
assert any("wrapped in TLS" in message for message in records), records

proxy_monkey.unpatch()
assert not proxy_monkey.is_patched() and proxy_monkey.saved == {}
assert (socket.socket, socketserver._ServerSelector, gevent.server.StreamServer.init_socket) == originals
proxy_monkey.unpatch()                        # harmless twice
print("ok")
"""


def test_api_contract() -> None:
    arguments = [str(free_port()), str(free_port()), V1_TCP4.hex()]
    command = [sys.executable, "-c", textwrap.dedent(API_CONTRACT), *arguments]
    result = subprocess.run(command, env=ENV, capture_output=True, timeout=15)
    assert result.stdout == b"ok\n", result.stderr.decode()


REUSED_DESCRIPTOR = """
import socket, socketserver, sys, threading
from gevent import monkey
monkey.patch_all()
import gevent.pywsgi, gevent_proxyproto.monkey

PORT = int(sys.argv[1])
gevent_proxyproto.monkey.patch([PORT])
listener = socket.socket()
listener.bind(("127.0.0.1", PORT))
listener.listen(8)
descriptor = listener.fileno()
wsgi = gevent.pywsgi.WSGIServer(listener, lambda environ, start_response: [])
wsgi.start()
wsgi.stop()  # closes the raw socket, not `listener`: its registration outlives the descriptor

class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(b"plain")

plain = socketserver.TCPServer(("127.0.0.1", 0), Handler)
assert plain.fileno() == descriptor  # the case under test: the same number, a plain listener
threading.Thread(target=plain.serve_forever, daemon=True).start()
client = socket.create_connection(plain.server_address)
client.settimeout(5)
print(client.recv(5).decode())
"""


def test_a_plain_server_on_a_reused_descriptor_stays_plain() -> None:
    """A PROXY listener closed by a gevent server leaves its number to the next socket."""
    command = [sys.executable, "-c", textwrap.dedent(REUSED_DESCRIPTOR), str(free_port())]
    result = subprocess.run(command, env=ENV, capture_output=True, timeout=15)
    assert result.stdout == b"plain\n", result.stderr.decode()


# -- the examples, run unmodified under the runner, as the README shows ---------


def test_pywsgi_example_answers_curl_with_the_client_address() -> None:
    if shutil.which("curl") is None:
        require_tool("curl", "sends the PROXY header in the pywsgi example's test")
    port = free_port()
    command = [sys.executable, "-m", "gevent_proxyproto.monkey", "--proxy-ports", str(port)]
    command += [str(REPO / "examples" / "pywsgi_app.py"), "--port", str(port)]
    with running(command, port, ready="pywsgi app on"):
        curl = subprocess.run(
            ["curl", "-sS", "--haproxy-protocol", "--max-time", "5", "-w", " local_port=%{local_port}",
             f"http://127.0.0.1:{port}/"],
            capture_output=True, timeout=10,
        )  # fmt: skip
        assert curl.returncode == 0, curl.stderr
        body, _, local_port = curl.stdout.decode().rpartition(" local_port=")
        # curl's header names its own socket: unpatched, the server would answer 400 to "PROXY TCP4 ...".
        assert body == f"REMOTE_ADDR=127.0.0.1 REMOTE_PORT={local_port}\n"


def test_legacy_socketserver_example() -> None:
    port = free_port()
    command = [sys.executable, "-m", "gevent_proxyproto.monkey", "--proxy-ports", str(port)]
    command += [str(REPO / "examples" / "legacy_socketserver.py"), "--port", str(port)]
    with running(command, port, ready="socketserver on") as program:
        with connect(port, V2_TCP6 + b"hello\n") as client:
            assert read_line(client) == b"hello [2001:db8::7]:4242\n"
            assert read_line(client) == b"hello\n"
        gevent.socket.wait_read(program.process.stdout.fileno(), timeout=5)
        line = program.process.stdout.readline()
        assert line == b"connection from [2001:db8::7]:4242\n"
