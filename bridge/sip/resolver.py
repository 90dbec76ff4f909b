"""Where a SIP host is: RFC 3263 server location (SRV, then A/AAAA), asynchronous and cached.

- An IP literal is used as it is (port 5060 unless given).
- A name with an explicit port: its A/AAAA records (RFC 3263 4.2).
- A name without a port: `_sip._udp.<name>` SRV records (`_sips._tcp` for TLS, `_sip._tcp` for
  TCP), ordered by priority and weight (RFC 2782), then each target's A/AAAA; no SRV: A/AAAA
  on port 5060 (5061 for TLS). NAPTR is not consulted: the transport comes from the config.
- A/AAAA come from the system resolver (`getaddrinfo`: /etc/hosts, nsswitch) unless
  `nameservers` are given, then from those servers (dnspython), as SRV always does.
- Only addresses of the socket's family are returned (an IPv4 socket cannot reach ::1); a
  dual-stack socket (`::`, family AF_UNSPEC here) takes both, IPv6 first (RFC 6724's default).
- Answers are cached for their TTL (60 s for getaddrinfo, which has none; 5 s for failures);
  `forget(host)` drops a name after a transaction to it failed, so the next request
  resolves it again (a PBX that moved, or a DNS failover).
Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from .uri import is_ip

log = logging.getLogger("bridge.sip")

Addr = tuple[str, int]
POSITIVE_TTL = 60.0
NEGATIVE_TTL = 5.0
LOOKUP_TIMEOUT = 2.0


class ResolveError(OSError):
    """A SIP host name that does not resolve to an address this transport can reach."""


@dataclass
class _Entry:
    addresses: list[Addr]
    expires: float
    error: str = ""


class Resolver:
    def __init__(self, family: int = socket.AF_INET, nameservers: list[Addr] | None = None) -> None:
        self.family = family
        self.nameservers = nameservers or []
        self._cache: dict[tuple[str, int | None, str], _Entry] = {}
        self._dns: dns.asyncresolver.Resolver | None = None

    def _resolver(self) -> dns.asyncresolver.Resolver:
        if self._dns is None:
            configure = not self.nameservers
            try:
                r = dns.asyncresolver.Resolver(configure=configure)
            except dns.resolver.NoResolverConfiguration:
                r = dns.asyncresolver.Resolver(configure=False)
            if self.nameservers:
                r.nameservers = [host for host, _ in self.nameservers]
                r.port = self.nameservers[0][1]
            r.lifetime = LOOKUP_TIMEOUT
            self._dns = r
        return self._dns

    async def resolve(self, host: str, port: int | None = None, transport: str = "udp") -> list[Addr]:
        """Addresses to try, in order; raises ResolveError."""
        default = 5061 if transport == "tls" else 5060
        if is_ip(host):
            if not self._reachable(host):
                raise ResolveError(f"{host} is not reachable from an IPv{6 if self.family == socket.AF_INET6 else 4} socket")
            return [(host, port or default)]
        key = (host.lower(), port, transport)
        entry = self._cache.get(key)
        now = time.monotonic()
        if entry is None or entry.expires < now:
            entry = await self._lookup(host, port, transport, default)
            self._cache[key] = entry
        if entry.error:
            raise ResolveError(entry.error)
        return list(entry.addresses)

    def _reachable(self, ip: str) -> bool:
        return self.family == socket.AF_UNSPEC or (":" in ip) == (self.family == socket.AF_INET6)

    def forget(self, host: str) -> None:
        for key in [k for k in self._cache if k[0] == host.lower()]:
            del self._cache[key]

    async def _lookup(self, host: str, port: int | None, transport: str, default: int) -> _Entry:
        now = time.monotonic()
        try:
            if port is None and host.lower() != "localhost":
                srv = await self._srv(host, transport)
                if srv:
                    addresses: list[Addr] = []
                    ttl = POSITIVE_TTL
                    for target, target_port, srv_ttl in srv:
                        found, a_ttl = await self._addresses(target, target_port)
                        addresses += [a for a in found if a not in addresses]
                        ttl = min(ttl, srv_ttl, a_ttl)
                    if addresses:
                        log.info("SIP host %s: SRV -> %s", host, ", ".join(f"{h}:{p}" for h, p in addresses))
                        return _Entry(addresses, now + max(ttl, 1.0))
            addresses, ttl = await self._addresses(host, port or default)
        except (OSError, dns.exception.DNSException) as exc:
            return _Entry([], now + NEGATIVE_TTL, f"cannot resolve SIP host {host}: {exc}")
        if not addresses:
            kind = {socket.AF_INET6: "IPv6 ", socket.AF_INET: "IPv4 "}.get(self.family, "")
            return _Entry([], now + NEGATIVE_TTL, f"SIP host {host} has no {kind}address")
        return _Entry(addresses, now + max(ttl, 1.0))

    async def _srv(self, host: str, transport: str) -> list[tuple[str, int, float]]:
        name = {"tls": f"_sips._tcp.{host}", "tcp": f"_sip._tcp.{host}"}.get(transport, f"_sip._udp.{host}")
        try:
            answer = await self._resolver().resolve(name, "SRV", raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers,
                dns.exception.Timeout):
            return []
        if answer.rrset is None:
            return []
        ttl = float(answer.rrset.ttl)
        records = sorted(answer.rrset, key=lambda r: r.priority)
        ordered: list[tuple[str, int, float]] = []
        for priority in dict.fromkeys(r.priority for r in records):
            group = [r for r in records if r.priority == priority]
            while group:                                   # RFC 2782 weighted selection
                total = sum(r.weight for r in group)
                pick = random.uniform(0, total) if total else 0
                for r in group:
                    pick -= r.weight
                    if pick <= 0 or not total:
                        break
                group.remove(r)
                ordered.append((r.target.to_text(omit_final_dot=True), r.port, ttl))
        return ordered

    async def _addresses(self, host: str, port: int) -> tuple[list[Addr], float]:
        if is_ip(host):
            return ([(host, port)] if self._reachable(host) else []), POSITIVE_TTL
        if self.nameservers:
            kinds = {socket.AF_INET6: ["AAAA"], socket.AF_INET: ["A"]}.get(self.family, ["AAAA", "A"])
            found: list[Addr] = []
            ttl = POSITIVE_TTL
            for rdtype in kinds:
                try:
                    answer = await self._resolver().resolve(host, rdtype)
                except dns.resolver.NoAnswer:
                    continue
                except dns.resolver.NXDOMAIN as exc:
                    raise ResolveError(str(exc)) from None
                found += [(r.address, port) for r in answer]
                ttl = min(ttl, float(answer.rrset.ttl if answer.rrset else POSITIVE_TTL))
            if not found:
                raise ResolveError(f"{host} has no {' or '.join(kinds)} record")
            return found, ttl
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(LOOKUP_TIMEOUT * 2):
            infos = await loop.getaddrinfo(host, port, family=self.family, type=socket.SOCK_DGRAM)
        addresses: list[Addr] = []
        infos = sorted(infos, key=lambda info: info[0] != socket.AF_INET6)     # IPv6 first, stable
        for *_, sockaddr in infos:
            addr = (str(sockaddr[0]), int(sockaddr[1]))
            if addr not in addresses:
                addresses.append(addr)
        return addresses, POSITIVE_TTL
