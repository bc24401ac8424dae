"""Real PROXY senders (HAProxy, nginx) as child processes of a test.

Each sender runs from a config generated in a temp dir, listens on 127.0.0.1 / ::1 only, is known to be
up once ``/proc/net/tcp`` or ``tcp6`` shows its socket in state LISTEN (never by a probe connection: a
probe would become a backend connection with a header of its own), and is stopped by PID on every path.
"""

import contextlib
import csv
import ctypes
import io
import os
import pathlib
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.socket

from ..support import read_line

#: Debian installs the senders in /usr/sbin, which a non-root PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
#: Seconds a sender gets to start listening, then to exit after SIGTERM.
START_TIMEOUT = 5.0
STOP_TIMEOUT = 3.0
#: What a sender says when a picked port was taken meanwhile (another process's bind).
_PORT_TAKEN = ("Address already in use", "cannot bind socket")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls it


def which(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


@dataclass(frozen=True)
class Endpoint:
    """A loopback address and port, spelled for each config language."""

    host: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def haproxy(self) -> str:
        """``bind`` / ``server`` syntax."""
        return f"ipv6@{self.host}:{self.port}" if self.family == socket.AF_INET6 else f"{self.host}:{self.port}"

    @property
    def nginx(self) -> str:
        """``listen`` / ``proxy_pass`` syntax."""
        return f"[{self.host}]:{self.port}" if self.family == socket.AF_INET6 else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.nginx


def pick_endpoints(hosts: Mapping[str, str]) -> dict[str, Endpoint]:
    """A free port on each host, by binding port 0.

    The probes stay bound until all are picked, so two names never get the same port. Once they close,
    another process may take a port before the sender binds it: the sender then fails to start, and
    :func:`launch` tries again with new ports.
    """
    endpoints = {}
    with contextlib.ExitStack() as probes:
        for name, host in hosts.items():
            probe = probes.enter_context(socket.socket(Endpoint(host, 0).family, socket.SOCK_STREAM))
            probe.bind((host, 0))
            endpoints[name] = Endpoint(host, probe.getsockname()[1])
    return endpoints


# -- is it listening? /proc, never a probe connection ------------------------------------------------


def _decode_proc_address(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` (32-bit words in host byte order, hex) to ``("127.0.0.1", 8080)``."""
    address_hex, port_hex = text.split(":")
    packed = b"".join(struct.pack("=I", int(address_hex[i : i + 8], 16)) for i in range(0, len(address_hex), 8))
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, packed), int(port_hex, 16)


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """The TCP addresses process ``pid`` listens on: /proc/net/tcp{,6} rows in state LISTEN whose
    socket inode is one of the process's file descriptors."""
    inodes = set()
    with contextlib.suppress(FileNotFoundError):  # the process is gone: nothing
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table, encoding="ascii") as rows:
            next(rows)  # the column titles
            for row in rows:
                fields = row.split()
                if fields[3] == _LISTEN and fields[9] in inodes:
                    found.add(_decode_proc_address(fields[1]))
    return found


def _normal(endpoint: Endpoint) -> tuple[str, int]:
    packed = socket.inet_pton(endpoint.family, endpoint.host)
    return socket.inet_ntop(endpoint.family, packed), endpoint.port


# -- child processes, waited for without blocking the hub -------------------------------------------
#
# Not gevent.subprocess: its first use installs gevent's SIGCHLD handler for the rest of the session,
# and from then on the hub reaps every child, also those of tests using the stdlib subprocess module
# (their wait() then reports 0 whatever the exit status).


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # If the test runner is killed (a CI timeout), the sender goes too instead of keeping its ports.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_exit(process: "subprocess.Popen[bytes]", timeout: float) -> int | None:
    """The exit status, or None if ``process`` still runs after ``timeout`` s; other greenlets run meanwhile.

    Sleeps on a pidfd (readable once the process exits), else polls.
    """
    if process.poll() is not None:
        return process.returncode
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # Python or kernel without pidfd: a bounded poll
        with gevent.Timeout(timeout, False):
            while process.poll() is None:
                gevent.sleep(0.01)
        return process.poll()
    try:
        gevent.socket.wait_read(pidfd, timeout=timeout, timeout_exc=TimeoutError)
    except TimeoutError:
        return None
    finally:
        os.close(pidfd)
    return process.wait()


def run(argv: Sequence[str], timeout: float = 10.0, **kwargs: Any) -> "subprocess.CompletedProcess[bytes]":
    """``subprocess.run(argv, capture_output=True)`` without blocking the hub: an in-process server keeps serving."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, **kwargs)
        if wait_exit(process, timeout) is None:
            process.kill()
            process.wait()
            raise subprocess.TimeoutExpired(list(argv), timeout)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(list(argv), process.returncode, out.read(), err.read())


class PortTaken(Exception):
    """A picked port was bound by someone else before the sender could bind it."""


class Sender:
    """A sender process: started from its config, waited for on /proc, stopped by PID."""

    name = "sender"

    def __init__(self, workdir: pathlib.Path, endpoints: Mapping[str, Endpoint]) -> None:
        self.workdir = workdir
        #: The addresses it listens on, by the names the config used.
        self.endpoints = dict(endpoints)
        self.log_path = workdir / f"{self.name}.log"
        self.config_path = workdir / f"{self.name}.conf"
        self.process: Any = None

    def __getitem__(self, name: str) -> Endpoint:
        return self.endpoints[name]

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def argv(self) -> list[str]:
        raise NotImplementedError

    def check_config(self) -> None:
        """Validate the config with the sender's own checker; fail the test if it disagrees."""

    @property
    def log(self) -> str:
        """What the sender wrote on stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        """Start it and wait until it listens on every endpoint (bounded); kill it on failure."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,
            )
        wanted = {_normal(endpoint) for endpoint in self.endpoints.values()}
        try:
            with gevent.Timeout(START_TIMEOUT, False):
                while not wanted <= listening_sockets(self.pid):
                    if self.process.poll() is not None:
                        log_text = self.log
                        if any(marker in log_text for marker in _PORT_TAKEN):
                            raise PortTaken(log_text)
                        raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{log_text}")
                    gevent.sleep(0.01)  # a bounded poll of /proc: nothing to wait on
                return
            raise AssertionError(f"{self.name} not listening on {sorted(wanted)} after {START_TIMEOUT} s:\n{self.log}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM by PID; SIGKILL if it is still there after STOP_TIMEOUT. Idempotent."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        if wait_exit(process, STOP_TIMEOUT) is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


def run_checker(argv: Sequence[str], what: str) -> None:
    result = run(argv)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace")
        raise AssertionError(f"{what} rejected by {' '.join(argv)}:\n{output}")


class HAProxy(Sender):
    """``haproxy -db -f cfg``: one process, one thread, a stats socket in its directory."""

    name = "haproxy"

    def __init__(self, workdir: pathlib.Path, endpoints: Mapping[str, Endpoint], body: str) -> None:
        super().__init__(workdir, endpoints)
        self.stats_path = workdir / "stats.sock"
        self.config_path.write_text(
            "global\n"
            "    nbthread 1\n"
            f"    stats socket {self.stats_path} mode 600 level admin\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 2s\n"
            "    timeout client 10s\n"
            "    timeout server 10s\n" + body
        )

    def argv(self) -> list[str]:
        return [str(which("haproxy")), "-db", "-f", str(self.config_path)]

    def check_config(self) -> None:
        run_checker([str(which("haproxy")), "-c", "-f", str(self.config_path)], "HAProxy config")

    def show_stat(self) -> dict[tuple[str, str], dict[str, str]]:
        """``show stat`` on the stats socket: rows by (proxy, server)."""
        with gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stats:
            stats.settimeout(5)
            stats.connect(str(self.stats_path))
            stats.sendall(b"show stat\n")
            chunks = []
            while chunk := stats.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode().lstrip("# ")
        return {(row["pxname"], row["svname"]): row for row in csv.DictReader(io.StringIO(text))}


class Nginx(Sender):
    """``nginx`` in the foreground, one process (no master), its stream module loaded."""

    name = "nginx"

    def __init__(self, workdir: pathlib.Path, endpoints: Mapping[str, Endpoint], servers: Sequence[str]) -> None:
        super().__init__(workdir, endpoints)
        blocks = "".join(f"    server {{\n        {server}\n    }}\n" for server in servers)
        self.config_path.write_text(
            f"load_module {NGINX_STREAM_MODULE};\n"
            "daemon off;\n"
            "master_process off;\n"
            "worker_processes 1;\n"
            f"pid {workdir / 'nginx.pid'};\n"
            "error_log stderr notice;\n"
            "events { worker_connections 64; }\n"
            f"stream {{\n{blocks}}}\n"
        )

    def _base(self) -> list[str]:
        # -e: the error log before the config is read (else /var/log/nginx/error.log).
        return [str(which("nginx")), "-p", str(self.workdir), "-e", "stderr", "-c", str(self.config_path)]

    def argv(self) -> list[str]:
        return self._base()

    def check_config(self) -> None:
        run_checker(self._base() + ["-t", "-q"], "nginx config")


def launch(make: Callable[[dict[str, Endpoint]], Sender], hosts: Mapping[str, str], attempts: int = 3) -> Sender:
    """Pick ports on ``hosts``, build the sender, validate its config and start it.

    When a picked port was taken before the sender bound it (other test runs share the machine), try
    again with fresh ports.
    """
    for attempt in range(attempts):
        sender = make(pick_endpoints(hosts))
        sender.check_config()
        try:
            sender.start()
        except PortTaken:
            if attempt == attempts - 1:
                raise
            continue
        return sender
    raise AssertionError("unreachable")


# -- clients -------------------------------------------------------------------------------------------


@dataclass
class Exchange:
    """What a client saw: its own address, the handler's first line, the echo, the TLS session."""

    sockname: Any
    line: bytes
    echo: bytes
    tls_version: str | None = None
    cipher: str | None = None
    alpn: str | None = None


def exchange(
    address: tuple[str, int],
    payload: bytes = b"hello through the proxy\n",
    tls_context: Any = None,
    server_hostname: str | None = None,
) -> Exchange:
    """Connect, (TLS), read the Recorder's address line, send ``payload`` and read its echo."""
    raw = gevent.socket.create_connection(address, timeout=5)
    with contextlib.closing(raw):
        sock = raw if tls_context is None else tls_context.wrap_socket(raw, server_hostname=server_hostname)
        with contextlib.closing(sock):
            sockname = sock.getsockname()
            line = read_line(sock)
            sock.sendall(payload)
            echo = b""
            while len(echo) < len(payload):
                chunk = sock.recv(len(payload) - len(echo))
                if not chunk:
                    break
                echo += chunk
            result = Exchange(sockname, line, echo)
            if tls_context is not None:
                result.tls_version = sock.version()
                result.cipher = sock.cipher()[0]
                result.alpn = sock.selected_alpn_protocol()
            return result


def expected_address(host: str, port: int) -> tuple[Any, ...]:
    """The socket module's shape: ``(host, port)``, or ``(host, port, 0, 0)`` for IPv6."""
    return (host, port, 0, 0) if ":" in host else (host, port)


# -- certificates --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """A CA, a server certificate (RSA 2048, signed by the EC CA) and a client certificate."""

    ca: str
    server_cert: str
    server_key: str
    #: Certificate and key in one file, as HAProxy's ``crt`` wants them.
    server_pem: str
    client_cert: str
    client_key: str

    #: The server certificate's names.
    SERVER_NAMES = ("localhost", "app.example.test")
    CLIENT_CN = "interop-client"
    #: What HAProxy's cert-key and cert-sig say about the server certificate.
    SERVER_KEY_ALG = "RSA2048"
    SERVER_SIG_ALG = "ecdsa-with-SHA256"


def make_certificates(directory: pathlib.Path) -> Certificates:
    """The CA and certificates, made with the openssl command."""
    openssl = str(which("openssl"))

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=directory, timeout=60)

    def path(name: str) -> str:
        return str(directory / name)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    run("req", "-x509", *ec, "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=gevent-proxyproto interop CA")  # fmt: skip
    names = ",".join(f"DNS:{name}" for name in Certificates.SERVER_NAMES)
    (directory / "server.ext").write_text(
        f"subjectAltName={names},IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    (directory / "client.ext").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    for name, key, subject in (
        ("server", ["-newkey", "rsa:2048"], "/CN=localhost"),
        ("client", ec, f"/CN={Certificates.CLIENT_CN}"),
    ):
        run("req", *key, "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
    (directory / "server.pem").write_text(
        (directory / "server.crt").read_text() + (directory / "server.key").read_text()
    )
    return Certificates(
        ca=path("ca.pem"),
        server_cert=path("server.crt"),
        server_key=path("server.key"),
        server_pem=path("server.pem"),
        client_cert=path("client.crt"),
        client_key=path("client.key"),
    )
