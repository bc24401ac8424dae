"""Which real peers may send a PROXY header (SPEC.md section 1).

Anyone who can reach a PROXY port can claim any client address, so only the
load balancers' networks are trusted. The default is loopback only; trusting
everyone must be asked for by name.

Entries are read strictly, because a loose reading trusts more or less than
meant: ``192.168.1.5/16`` (host bits set) may be a typo for a /32 or for the
network, a dotted mask may be a netmask or a hostmask, and a scope id
(``fe80::1%eth0``) would not restrict the interface (a peer's address matches
on every interface), so each of these is an error naming the entry.
"""

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable
from functools import lru_cache

#: The default: loopback only.
LOOPBACK = ("127.0.0.0/8", "::1/128")
#: The explicit spelling of "trust every source". Never the default.
EVERYONE = "*"

log = logging.getLogger("gevent_proxyproto")

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: An address, optionally with a prefix length: no dotted masks.
_PREFIX_LENGTH = re.compile(r"[^/]+(?:/[0-9]{1,3})?")


def parse_network(entry: str) -> _Network:
    """One ``trusted_proxies`` entry: an address or ``address/prefix-length``.

    Raises:
        ValueError: naming the entry, and what to write instead where that is known.
    """
    if "%" in entry:
        address = entry.partition("%")[0]
        raise ValueError(
            f"{entry!r}: a scope id cannot limit trust to one interface; write {address!r} (trusted on every interface)"
        )
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IPv4 or IPv6 address or network (CIDR)") from None
    if not _PREFIX_LENGTH.fullmatch(entry):
        raise ValueError(f"{entry!r}: write the prefix length, not a mask: {network}")
    if network.network_address != ipaddress.ip_address(entry.partition("/")[0]):
        single = entry.partition("/")[0]
        raise ValueError(
            f"{entry!r} has host bits set: write {str(network)!r} for the network, or {single!r} for one address"
        )
    return network


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
        self.networks: tuple[_Network, ...] = tuple(parse_network(entry) for entry in entries if entry != EVERYONE)
        #: Whether the host of an IP peer (``address[0]``) may send a header;
        #: the verdicts are remembered, sources being few (the load balancers).
        self.trusts_host: Callable[[str], bool] = lru_cache(maxsize=4096)(self._host_verdict)

    def __repr__(self) -> str:
        shown = [EVERYONE] if self.everyone else [str(network) for network in self.networks]
        return f"TrustedProxies({shown!r})"

    @property
    def everyone_entries(self) -> list[str]:
        """The entries that trust every source of a family: ``*``, ``0.0.0.0/0``, ``::/0``."""
        return ([EVERYONE] if self.everyone else []) + [str(net) for net in self.networks if net.prefixlen == 0]

    def __contains__(self, peer: object) -> bool:
        """True when ``peer`` (a host text, or a socket address) may send a header.

        AF_UNIX peers (``str``/``bytes`` addresses) are always trusted: the
        socket file's permissions decide who connects.
        """
        if isinstance(peer, tuple):
            peer = peer[0]
        if isinstance(peer, str):
            return self.trusts_host(peer)
        return self.everyone or isinstance(peer, bytes)  # an abstract AF_UNIX name

    def _host_verdict(self, host: str) -> bool:
        if self.everyone or not host or "/" in host:  # everyone; an AF_UNIX path
            return True
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        # A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
        mapped = getattr(address, "ipv4_mapped", None)
        return any(address in network or (mapped is not None and mapped in network) for network in self.networks)


def warn_if_trusting_everyone(trusted: TrustedProxies, setting: str) -> None:
    """One WARNING at start when ``*``, ``0.0.0.0/0`` or ``::/0`` is trusted: rarely what is meant."""
    everyone = trusted.everyone_entries
    if everyone:
        log.warning(
            "%s %s: every source may send a PROXY header and claim any client address; "
            "list the load balancers' addresses instead",
            setting,
            ", ".join(map(repr, everyone)),
        )
