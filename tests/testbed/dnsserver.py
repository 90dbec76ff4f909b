"""A small authoritative DNS server on 127.0.0.1 for tests: A, AAAA and SRV records from a dict.

`server = await DnsServer().start(); server.add("pbx.test", "A", "127.0.0.1")`; names it does not
know get NXDOMAIN; `queries` lists (name, type) as asked, so a test can see SRV was consulted.
"""

from __future__ import annotations

import asyncio

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class DnsServer(asyncio.DatagramProtocol):
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.records: dict[tuple[str, str], list[str]] = {}
        self.queries: list[tuple[str, str]] = []
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> "DnsServer":
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, 0))
        self.port = self._transport.get_extra_info("sockname")[1]
        return self

    def add(self, name: str, rdtype: str, value: str) -> None:
        """add("_sip._udp.pbx.test", "SRV", "10 60 5070 host1.pbx.test.")"""
        self.records.setdefault((name.rstrip(".").lower() + ".", rdtype.upper()), []).append(value)

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        reply = dns.message.make_response(query)
        reply.flags |= 0x0400                       # authoritative
        question = query.question[0]
        name, rdtype = question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name.rstrip("."), rdtype))
        values = self.records.get((name, rdtype))
        if values:
            reply.answer.append(dns.rrset.from_text(name, 30, "IN", rdtype, *values))
        elif not any(n == name for n, _ in self.records):
            reply.set_rcode(dns.rcode.NXDOMAIN)
        assert self._transport is not None
        self._transport.sendto(reply.to_wire(), addr)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
