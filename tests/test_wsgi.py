"""The WSGI environ of a PROXY connection (proxy_environ) and ProxyWSGIServer on real loopback sockets."""

import tempfile
from typing import Any

import gevent.socket
import pytest

import gevent_proxyproto as gpp
from gevent_proxyproto._wsgi import ProxyWSGIHandler, proxy_environ, with_proxy_environ

from .children import http_get
from .support import V1_TCP6, client_tls_context, make_certificate, read_all

SSL_USED = (gpp.TLVType.SSL, bytes([gpp.SSLClient.SSL]) + b"\0\0\0\0")
SSL_NOT_USED = (gpp.TLVType.SSL, b"\0\0\0\0\0")
V2 = gpp.build_v2(source=("203.0.113.7", 4242), destination=("192.0.2.1", 443))
V2_SSL = gpp.build_v2(source=("203.0.113.7", 4242), destination=("192.0.2.1", 443), tlvs=[SSL_USED])
V2_LOCAL = gpp.build_v2(command=gpp.Command.LOCAL)


def _environ(header_bytes: bytes | None, **options: Any) -> dict[str, Any]:
    environ = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000", "wsgi.url_scheme": "http"}
    header = None if header_bytes is None else gpp.parse(header_bytes)[0]
    proxy_environ(environ, header, **options)
    return environ


def test_the_client_and_the_load_balancer_under_gunicorns_keys() -> None:
    environ = _environ(V2)
    assert environ["gevent_proxyproto.header"] == gpp.parse(V2)[0]
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("203.0.113.7", "4242")
    assert (environ["PROXY_ADDR"], environ["PROXY_PORT"], environ["PROXY_PROTOCOL"]) == ("192.0.2.1", "443", "TCP4")
    assert environ["wsgi.url_scheme"] == "http" and "HTTPS" not in environ
    environ = _environ(V1_TCP6)
    assert (environ["REMOTE_ADDR"], environ["PROXY_ADDR"], environ["PROXY_PROTOCOL"]) == (
        "2001:db8::7",
        "2001:db8::1",
        "TCP6",
    )


@pytest.mark.parametrize(
    ("header", "protocol"),
    [(V2_LOCAL, "LOCAL"), (b"PROXY UNKNOWN\r\n", "UNKNOWN"), (gpp.build_v2(), "UNSPEC")],
)
def test_headers_without_addresses_keep_the_real_peer(header: bytes, protocol: str) -> None:
    environ = _environ(header)
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"], environ["PROXY_PROTOCOL"]) == (
        "127.0.0.1",
        "50000",
        protocol,
    )
    assert "PROXY_ADDR" not in environ and "PROXY_PORT" not in environ


def test_a_direct_connection_says_so() -> None:
    environ = _environ(None)
    assert environ["gevent_proxyproto.header"] is None and environ["REMOTE_ADDR"] == "127.0.0.1"
    assert "PROXY_PROTOCOL" not in environ


def test_the_ssl_tlvs_client_flag_makes_the_scheme_https_unless_turned_off() -> None:
    assert (_environ(V2_SSL)["wsgi.url_scheme"], _environ(V2_SSL)["HTTPS"]) == ("https", "on")
    no_tls = _environ(gpp.build_v2(source=("203.0.113.7", 4242), destination=("192.0.2.1", 80), tlvs=[SSL_NOT_USED]))
    assert no_tls["wsgi.url_scheme"] == "http" and "HTTPS" not in no_tls
    turned_off = _environ(V2_SSL, scheme_from_ssl_tlv=False)
    assert turned_off["wsgi.url_scheme"] == "http" and "HTTPS" not in turned_off


def _application(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    keys = ("REMOTE_ADDR", "REMOTE_PORT", "PROXY_ADDR", "wsgi.url_scheme", "gevent_proxyproto.header")
    body = "\n".join(f"{key}={environ.get(key)}" for key in keys).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def _seen(body: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in body.decode().splitlines())


def _serve(**kwargs: Any) -> Any:
    server = gpp.ProxyWSGIServer(("127.0.0.1", 0), _application, log=None, **kwargs)
    server.start()
    return server


def test_proxy_wsgi_server_keep_alive_requests_keep_the_clients_address() -> None:
    server = _serve()
    try:
        with gevent.socket.create_connection(server.address) as sock:
            sock.sendall(V2_SSL)
            for _ in range(3):
                status, body = http_get(sock)
                seen = _seen(body)
                assert status == 200 and (seen["REMOTE_ADDR"], seen["REMOTE_PORT"]) == ("203.0.113.7", "4242")
                assert (seen["PROXY_ADDR"], seen["wsgi.url_scheme"]) == ("192.0.2.1", "https")
    finally:
        server.stop(timeout=1)


def test_proxy_wsgi_server_policy_keywords_and_scheme_switch() -> None:
    server = _serve(trusted_proxies=["10.0.0.0/8"], untrusted="direct", scheme_from_ssl_tlv=False)
    try:
        assert server.policy.untrusted == "direct"
        with gevent.socket.create_connection(server.address) as sock:  # not a proxy: direct, no header
            seen = _seen(http_get(sock)[1])
        assert seen["REMOTE_ADDR"] == "127.0.0.1" and seen["gevent_proxyproto.header"] == "None"
    finally:
        server.stop(timeout=1)
    server = _serve(scheme_from_ssl_tlv=False)
    try:
        with gevent.socket.create_connection(server.address) as sock:
            sock.sendall(V2_SSL)
            assert _seen(http_get(sock)[1])["wsgi.url_scheme"] == "http"
        with gevent.socket.create_connection(server.address) as sock:  # no header: refused, not parsed as HTTP
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_all(sock) == b""
        assert server.failures[gpp.Reason.NOT_HDR] == 1
    finally:
        server.stop(timeout=1)
    with pytest.raises(TypeError, match="not both"):
        gpp.ProxyWSGIServer(("127.0.0.1", 0), _application, policy=gpp.ProxyPolicy(), header_timeout=3)


def test_proxy_wsgi_server_tls_after_the_header() -> None:
    with tempfile.TemporaryDirectory() as directory:
        cert, key = make_certificate(directory)
        server = _serve(certfile=cert, keyfile=key)
        try:
            with gevent.socket.create_connection(server.address) as raw:
                raw.sendall(V2)
                with client_tls_context().wrap_socket(raw) as tls:
                    seen = _seen(http_get(tls)[1])
            assert seen["REMOTE_ADDR"] == "203.0.113.7" and seen["wsgi.url_scheme"] == "https"
        finally:
            server.stop(timeout=1)


def test_a_custom_handler_class_gets_the_proxy_keys_mixed_in_once() -> None:
    from gevent.pywsgi import WSGIHandler

    class Custom(WSGIHandler):  # type: ignore[misc]
        pass

    made = with_proxy_environ(Custom)
    assert issubclass(made, Custom) and made is with_proxy_environ(Custom) and made.__name__ == "Custom"
    assert with_proxy_environ(ProxyWSGIHandler) is ProxyWSGIHandler
    server = gpp.ProxyWSGIServer(("127.0.0.1", 0), _application, handler_class=Custom)
    assert server.handler_class is made
