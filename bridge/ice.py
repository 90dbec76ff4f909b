"""Which local addresses WebRTC offers as ICE host candidates.

aioice offers every interface address except loopback. A bridge on one office LAN, and every
test here, wants a fixed list instead (e.g. only 127.0.0.1, or the LAN address), so that media
never leaves the intended network. An empty list keeps aioice's own choice.
"""

from __future__ import annotations

import ipaddress

import aioice.ice

_original = aioice.ice.get_host_addresses


def use_host_addresses(addresses: list[str] | None) -> None:
    """Offer exactly `addresses` as host candidates from now on (None or []: aioice's default)."""
    if not addresses:
        aioice.ice.get_host_addresses = _original
        return
    checked = [str(ipaddress.ip_address(a)) for a in addresses]

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in checked if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses
