"""SIP over UDP (RFC 3261 section 18): one socket, datagrams in and out.

Datagrams are handed to the user agent as they arrive, with their source address; CRLF
keep-alives (RFC 5626 3.5.1) are answered by nothing and dropped. Sending never raises: a
datagram to an unreachable or unroutable address is counted and dropped, so no caller can
leave a call half-ended because a peer's address was bad.

With `trace` on (`sip.trace`, `bridge run --sip-trace`) every message sent and received is
logged whole on `bridge.sip.trace` at INFO, one record per message, each of its lines escaped
(`bridge.logsafe.safe`), at most TRACE_LIMIT bytes. Passwords are never in a SIP message (an
Authorization header carries a digest), so a trace holds none. With `sip.hep` every message
also goes, whole, to a Homer capture server (`bridge.sip.hep`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

from ..config import HepConfig
from ..logsafe import safe
from .hep import HepExport

log = logging.getLogger("bridge.sip")
trace_log = logging.getLogger("bridge.sip.trace")

TRACE_LIMIT = 16384

Addr = tuple[str, int]


class UdpTransport(asyncio.DatagramProtocol):
    reliable = False
    name = "UDP"

    def __init__(self, on_message: Callable[[bytes, Addr], None], trace: bool = False,
                 hep: HepConfig | None = None) -> None:
        self.on_message = on_message
        self.trace = trace
        self.hep_config = hep
        self.hep: HepExport | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self.local: Addr = ("", 0)
        self.family = socket.AF_INET
        self.send_errors = 0

    async def open(self, host: str, port: int) -> None:
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(host, port), family=self.family)
        self.local = self._transport.get_extra_info("sockname")[:2]
        if self.hep_config is not None:
            self.hep = await HepExport.open(self.hep_config)

    def datagram_received(self, data: bytes, addr) -> None:
        if not data.strip(b"\r\n\x00 "):
            return                                   # keep-alive
        if self.trace:
            _trace("received from", data, addr)
        if self.hep is not None:
            self.hep.capture(data, (addr[0], addr[1]), self.local)
        self.on_message(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket: %s", exc)

    def send(self, data: bytes, addr: Addr) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if self.trace:
            _trace("sent to", data, addr)
        if self.hep is not None:
            self.hep.capture(data, self.local, addr)
        try:
            self._transport.sendto(data, addr)
        except (OSError, ValueError, TypeError) as exc:
            self.send_errors += 1
            log.warning("SIP: cannot send to %s: %s", addr, exc)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self.hep is not None:
            self.hep.close()
            self.hep = None


def _trace(direction: str, data: bytes, addr: Addr) -> None:
    lines = [safe(line.rstrip(b"\r"), TRACE_LIMIT) for line in data[:TRACE_LIMIT].rstrip(b"\r\n").split(b"\n")]
    cut = f", first {TRACE_LIMIT} shown" if len(data) > TRACE_LIMIT else ""
    trace_log.info("SIP %s %s:%d (%d bytes%s):\n    %s", direction, safe(addr[0], 60), addr[1], len(data), cut,
                   "\n    ".join(lines))
