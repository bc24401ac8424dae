"""curl 7.88 ``--haproxy-protocol`` straight to ProxyStreamServer: a v1 line, then its HTTP request."""

from collections.abc import Callable
from typing import Any

import pytest

from ..support import needs_ipv6
from .peers import expected_address, run

pytestmark = pytest.mark.interop

LOOPBACKS = [pytest.param("127.0.0.1", id="ipv4"), pytest.param("::1", id="ipv6", marks=needs_ipv6)]


def http_handler(seen: list[dict[str, Any]]) -> Callable[[Any, Any], None]:
    """Answer one HTTP request with the address the handler was given."""

    def handle(sock: Any, address: Any) -> None:
        seen.append({"address": address, "header": sock.proxy_header, "real_peer": sock.real_peername()})
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = sock.recv(4096)
            if not chunk:
                return
            request += chunk
        seen[-1]["request"] = request
        body = repr(address).encode()
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))

    return handle


@pytest.mark.parametrize("host", LOOPBACKS)
def test_curl_haproxy_protocol(host: str, curl: str, proxy_server: Any) -> None:
    seen: list[dict[str, Any]] = []
    backend = proxy_server(host, handle=http_handler(seen))
    # -q first: no ~/.curlrc; --noproxy: no proxy from the environment.
    argv = [curl, "-q", "-sS", "--noproxy", "*", "--haproxy-protocol", "--max-time", "5",
            "-w", r"\n%{local_ip} %{local_port}", f"http://{backend.endpoint}/interop"]  # fmt: skip

    result = run(argv)  # the hub, and so our server, keeps running meanwhile

    assert result.returncode == 0, result.stderr.decode(errors="replace")
    body, local = result.stdout.decode().rsplit("\n", 1)
    local_ip, local_port = local.split()
    client = expected_address(local_ip, int(local_port))
    # curl writes its own connection's addresses: the proxied address is the real one.
    kind = "TCP6" if ":" in host else "TCP4"
    [request] = seen
    assert request["header"].raw == f"PROXY {kind} {local_ip} {host} {local_port} {backend.endpoint.port}\r\n".encode()
    assert request["address"] == request["real_peer"] == client
    assert request["request"].startswith(b"GET /interop HTTP/1.1\r\n")
    assert body == repr(client)
