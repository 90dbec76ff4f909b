"""SIP over UDP (RFC 3261 section 18): one socket, datagrams in and out; and the SIP trace.

The user agent sees every transport the same way (`UdpTransport` here, `StreamTransport` for
TCP and TLS in `bridge.sip.stream`): `send(data, addr)`, messages handed to it with their
source address, `reliable` (no retransmissions over TCP and TLS), `name` (the Via's transport).

Datagrams are handed to the user agent as they arrive, with their source address; CRLF
keep-alives (RFC 5626 3.5.1) are answered by nothing and dropped. Sending never raises: a
datagram to an unreachable or unroutable address is counted and dropped, so no caller can
leave a call half-ended because a peer's address was bad. A socket on `::` is dual-stack;
IPv4 peers are seen, and written to, as plain IPv4 addresses (`bridge.inet`).

With `trace` on (`sip.trace`, `bridge run --sip-trace`) every message sent and received is
logged whole on `bridge.sip.trace` at INFO, one record per message, each of its lines escaped
(`bridge.logsafe.safe`), at most TRACE_LIMIT bytes. Passwords are never in a SIP message (an
Authorization header carries a digest), and SRTP keys (SDES `a=crypto` inline keys) are
replaced by `<redacted>`, so a trace holds neither. With `sip.hep` every message also goes,
whole but for the same redaction, to a Homer capture server (`bridge.sip.hep`). `Tap` does both
for every transport.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

from .. import inet
from ..config import HepConfig
from ..logsafe import safe
from .hep import HepExport
from .sdes import redact

log = logging.getLogger("bridge.sip")
trace_log = logging.getLogger("bridge.sip.trace")

TRACE_LIMIT = 16384

Addr = tuple[str, int]


class Tap:
    """What a transport shows of the messages it carries: the trace log and the HEP copy."""

    def __init__(self, name: str, trace: bool = False, hep: HepConfig | None = None) -> None:
        self.name = name
        self.trace = trace
        self.hep_config = hep
        self.hep: HepExport | None = None

    async def open(self) -> None:
        if self.hep_config is not None:
            self.hep = await HepExport.open(self.hep_config, tcp=self.name != "UDP")

    def received(self, data: bytes, source: Addr, local: Addr) -> None:
        if self.trace:
            trace("received from", data, source, self.name)
        if self.hep is not None:
            self.hep.capture(redact(data), source, local)

    def sent(self, data: bytes, local: Addr, destination: Addr) -> None:
        if self.trace:
            trace("sent to", data, destination, self.name)
        if self.hep is not None:
            self.hep.capture(redact(data), local, destination)

    def close(self) -> None:
        if self.hep is not None:
            self.hep.close()
            self.hep = None


class UdpTransport(asyncio.DatagramProtocol):
    reliable = False
    name = "UDP"

    def __init__(self, on_message: Callable[[bytes, Addr], None], trace: bool = False,
                 hep: HepConfig | None = None) -> None:
        self.on_message = on_message
        self.tap = Tap(self.name, trace, hep)
        self._transport: asyncio.DatagramTransport | None = None
        self.local: Addr = ("", 0)
        self.family = socket.AF_INET
        self.send_errors = 0

    async def open(self, host: str, port: int) -> None:
        self.family = inet.family(host)
        sock = inet.udp_socket(host, port)
        try:
            self._transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: self, sock=sock)
        except BaseException:
            sock.close()
            raise
        self.local = inet.peer(self._transport.get_extra_info("sockname"))
        await self.tap.open()

    def datagram_received(self, data: bytes, addr) -> None:
        if not data.strip(b"\r\n\x00 "):
            return                                   # keep-alive
        source = inet.peer(addr)
        self.tap.received(data, source, self.local)
        self.on_message(data, source)

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket: %s", exc)

    def send(self, data: bytes, addr: Addr) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self.tap.sent(data, self.local, addr)
        try:
            self._transport.sendto(data, inet.sockaddr(addr, self.family))
        except (OSError, ValueError, TypeError) as exc:
            self.send_errors += 1
            log.warning("SIP: cannot send to %s: %s", addr, exc)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.tap.close()


def trace(direction: str, data: bytes, addr: Addr, transport: str = "UDP") -> None:
    """One message on `bridge.sip.trace`, escaped, SRTP keys redacted."""
    shown = redact(data[:TRACE_LIMIT])
    lines = [safe(line.rstrip(b"\r"), TRACE_LIMIT) for line in shown.rstrip(b"\r\n").split(b"\n")]
    cut = f", first {TRACE_LIMIT} shown" if len(data) > TRACE_LIMIT else ""
    host = f"[{safe(addr[0], 60)}]" if ":" in addr[0] else safe(addr[0], 60)
    over = "" if transport == "UDP" else f" over {transport}"
    trace_log.info("SIP %s %s:%d%s (%d bytes%s):\n    %s", direction, host, addr[1], over, len(data), cut,
                   "\n    ".join(lines))
