"""Real senders in front of the command line: `gevent-proxyproto serve` as a subprocess."""

import json
import signal
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import gevent_proxyproto as gpp

from ..support import CommandLine
from .peers import Endpoint, HAProxy, Nginx, exchange, expected_address, pick_endpoints
from .test_haproxy import UNIQUE_ID_FORMAT, relay

pytestmark = pytest.mark.interop


@pytest.fixture
def serve(tmp_path: Any) -> Iterator[Callable[[], Endpoint]]:
    """`gevent-proxyproto serve` with whoami on one PROXY port; stopped with SIGTERM, exit status checked."""
    processes: list[CommandLine] = []

    def start() -> Endpoint:
        endpoint = pick_endpoints({"whoami": "127.0.0.1"})["whoami"]
        config = tmp_path / "serve.toml"
        config.write_text(textwrap.dedent(f"""
            proxy_ports = [{endpoint.port}]
            [proxy_port_mappings]
            {endpoint.port} = "whoami"
        """))  # fmt: skip
        process = CommandLine("serve", "--config", str(config))
        processes.append(process)
        process.wait_for(r"ready: ")  # this serve says so: not "something listens on the port"
        return endpoint

    yield start
    for process in processes:
        with process:
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0  # SIGTERM is a clean shutdown
        assert "Traceback" not in process.log


def _whoami(front: Endpoint) -> tuple[Any, dict[str, Any]]:
    seen = exchange(front.address)
    return seen.sockname[:2], json.loads(seen.line)


@pytest.mark.parametrize("version", [1, 2], ids=["v1", "v2"])
def test_haproxy_in_front_of_serve(version: int, serve: Any, haproxy: Callable[..., HAProxy]) -> None:
    backend = serve()
    options = "send-proxy" if version == 1 else "send-proxy-v2 proxy-v2-options crc32c,unique-id"
    frontend = f"    unique-id-format {UNIQUE_ID_FORMAT}\n" if version == 2 else ""
    proxy = haproxy(relay(backend, options + " check inter 100ms", frontend), fe="127.0.0.1")
    client, document = _whoami(proxy["fe"])
    assert document["service"] == "whoami" and document["port"] == backend.port
    assert document["peer"] == list(client)  # the client's own address, not HAProxy's
    assert document["sock"] == list(proxy["fe"].address)
    assert document["proxy"]["version"] == version and document["proxy"]["command"] == "PROXY"
    if version == 2:
        types = [tlv_type for tlv_type, _ in document["proxy"]["tlvs"]]
        assert types == [gpp.TLVType.CRC32C, gpp.TLVType.UNIQUE_ID]


def test_nginx_in_front_of_serve(serve: Any, nginx: Callable[..., Nginx]) -> None:
    backend = serve()
    proxy = nginx(lambda fe: [f"listen {fe.nginx}; proxy_pass {backend.nginx}; proxy_protocol on;"], fe="::1")
    client, document = _whoami(proxy["fe"])
    assert tuple(document["peer"]) == expected_address(*client)[:2]
    assert document["proxy"]["family"] == "AF_INET6"
