"""Who may talk SIP to the bridge, and where its media may go (DESIGN.md section 8).

- Out-of-dialog requests are taken only from the PBX (the registrar's resolved addresses) and
  from `sip.trusted_peers` (addresses or CIDRs). Others get 403 or are dropped
  (`sip.untrusted: reject | drop`), logged once per source per minute, and counted.
- In-dialog requests are taken only from the dialog's peers (see `Dialog.peers`) or the above.
- Media goes only to the signalling peer's address or into `sip.media_networks` (CIDRs;
  default: the trusted peers and the PBX). An SDP address outside them is answered 488, and
  RTP from outside them is never latched.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Iterable

from ..logsafe import safe

log = logging.getLogger("bridge.sip")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(values: Iterable[str]) -> list[Network]:
    """'10.0.0.0/8', '192.0.2.7', '::1' -> networks; raises ValueError naming the bad one."""
    result: list[Network] = []
    for value in values:
        try:
            result.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR network") from None
    return result


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustPolicy:
    def __init__(self, trusted: list[Network], media: list[Network] | None = None, action: str = "reject",
                 log_interval: float = 60.0) -> None:
        self.trusted_networks = trusted
        self.media_networks = media            # None: the trusted peers and the PBX
        self.action = action
        self.pbx: set[str] = set()             # the registrar/proxy, as resolved
        self.log_interval = log_interval
        self._logged: dict[str, float] = {}

    def set_pbx(self, addresses: Iterable[str]) -> None:
        self.pbx = {str(_ip(a)) for a in addresses if _ip(a) is not None}

    def trusted(self, host: str) -> bool:
        address = _ip(host)
        if address is None:
            return False
        return str(address) in self.pbx or any(address in n for n in self.trusted_networks)

    def media_allowed(self, host: str, signalling_peer: str | None = None) -> bool:
        """May RTP go to (or be latched from) `host`? Only IP literals qualify."""
        address = _ip(host)
        if address is None:
            return False
        if signalling_peer is not None and _ip(signalling_peer) == address:
            return True
        if self.media_networks is None:
            return self.trusted(host)
        return str(address) in self.pbx or any(address in n for n in self.media_networks)

    def should_log(self, host: str) -> bool:
        """True once per source per `log_interval` (a flood writes one line a minute)."""
        now = time.monotonic()
        if len(self._logged) > 10000:
            self._logged = {h: t for h, t in self._logged.items() if now - t < self.log_interval}
        last = self._logged.get(host)
        if last is not None and now - last < self.log_interval:
            return False
        self._logged[host] = now
        return True

    def refused(self, host: str, what: str) -> None:
        if self.should_log(host):
            log.warning("SIP: %s from untrusted source %s refused (%s; not the PBX or sip.trusted_peers; "
                        "further refusals from it are not logged for %.0f s)",
                        safe(what, 60), host, self.action, self.log_interval)
