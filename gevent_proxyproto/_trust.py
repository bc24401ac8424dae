"""Which real peers may send a PROXY header (SPEC.md section 1).

Anyone who can reach a PROXY port can claim any client address, so only the
load balancers' networks are trusted. The default is loopback only; trusting
everyone must be asked for by name.
"""

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

#: The default: loopback only.
LOOPBACK = ("127.0.0.0/8", "::1/128")
#: The explicit spelling of "trust every source". Never the default.
EVERYONE = "*"

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """A set of networks allowed to send PROXY headers.

    Args:
        networks: CIDRs or single addresses, IPv4 and IPv6 (``"10.0.0.0/8"``,
            ``"192.0.2.7"``, ``"::1"``), or ``"*"`` for everyone.

    Raises:
        ValueError: an entry is not an address or network.
    """

    def __init__(self, networks: Iterable[str] = LOOPBACK) -> None:
        if isinstance(networks, str):
            networks = [networks]
        entries = [str(network).strip() for network in networks]
        self.everyone = EVERYONE in entries
        self.networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in entries if entry != EVERYONE
        )
        # Sources are few (the load balancers): remember the verdicts.
        self._cached_verdict = lru_cache(maxsize=4096)(self._verdict)

    def __repr__(self) -> str:
        shown = [EVERYONE] if self.everyone else [str(network) for network in self.networks]
        return f"TrustedProxies({shown!r})"

    def __contains__(self, peer: object) -> bool:
        """True when ``peer`` (a host text, or a socket address) may send a header.

        AF_UNIX peers (``str``/``bytes`` addresses) are always trusted: the
        socket file's permissions decide who connects.
        """
        if self.everyone:
            return True
        if isinstance(peer, tuple):
            peer = peer[0]
        if not isinstance(peer, str) or not peer or "/" in peer:
            return isinstance(peer, (str, bytes))  # AF_UNIX path or abstract name
        return self._cached_verdict(peer)

    def _verdict(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        # A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
        mapped = getattr(address, "ipv4_mapped", None)
        return any(address in network or (mapped is not None and mapped in network) for network in self.networks)
