"""Which addresses WebRTC offers as ICE candidates: the host candidates, and the public address
of a host behind a 1:1 NAT.

aioice offers every interface address except loopback. A bridge on one office LAN, and every
test here, wants a fixed list instead (e.g. only 127.0.0.1, or the LAN address), so that media
never leaves the intended network. An empty list keeps aioice's own choice (it then lists the
interfaces through getifaddrs(3), a netlink socket: the systemd unit must allow AF_NETLINK).

Behind a 1:1 NAT (a cloud VM with a private address and a public one mapped to it, every port
forwarded), `use_public_address` adds, for each IPv4 host candidate, a server-reflexive candidate
with the public address and the same port: what STUN would have found, without a STUN server.
Clients on the LAN still pair with the host candidate; the others reach the public one.
"""

from __future__ import annotations

import ipaddress

import aioice.ice
from aioice import Candidate
from aioice.candidate import candidate_foundation, candidate_priority

_original = aioice.ice.get_host_addresses
_gather = aioice.ice.Connection.gather_candidates


def use_host_addresses(addresses: list[str] | None) -> None:
    """Offer exactly `addresses` as host candidates from now on (None or []: aioice's default)."""
    if not addresses:
        aioice.ice.get_host_addresses = _original
        return
    checked = [str(ipaddress.ip_address(a)) for a in addresses]

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in checked if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


def use_public_address(address: str | None) -> None:
    """Add a srflx candidate at `address` (IPv4) for each IPv4 host candidate (None: none)."""
    if address is None:
        aioice.ice.Connection.gather_candidates = _gather
        return
    public = str(ipaddress.IPv4Address(address))

    async def gather_candidates(self: aioice.ice.Connection) -> None:
        started = self._local_candidates_start
        await _gather(self)
        if started:
            return
        mapped = [public_candidate(c, public) for c in self._local_candidates
                  if c.type == "host" and ":" not in c.host and c.host != public]
        known = {(c.host, c.port, c.component) for c in self._local_candidates}
        self._local_candidates += [c for c in mapped if (c.host, c.port, c.component) not in known]

    aioice.ice.Connection.gather_candidates = gather_candidates


def public_candidate(host: Candidate, public: str) -> Candidate:
    """The server-reflexive twin of a host candidate behind a 1:1 NAT."""
    return Candidate(foundation=candidate_foundation("srflx", "udp", host.host), component=host.component,
                     transport=host.transport, priority=candidate_priority(host.component, "srflx"),
                     host=public, port=host.port, type="srflx",
                     related_address=host.host, related_port=host.port)
