"""SIP over UDP (RFC 3261 section 18): one socket, datagrams in and out.

Datagrams are handed to the user agent as they arrive, with their source address; CRLF
keep-alives (RFC 5626 3.5.1) are answered by nothing and dropped. Sending never raises: a
datagram to an unreachable or unroutable address is counted and dropped, so no caller can
leave a call half-ended because a peer's address was bad.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

log = logging.getLogger("bridge.sip")

Addr = tuple[str, int]


class UdpTransport(asyncio.DatagramProtocol):
    reliable = False
    name = "UDP"

    def __init__(self, on_message: Callable[[bytes, Addr], None]) -> None:
        self.on_message = on_message
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

    def datagram_received(self, data: bytes, addr) -> None:
        if not data.strip(b"\r\n\x00 "):
            return                                   # keep-alive
        self.on_message(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket: %s", exc)

    def send(self, data: bytes, addr: Addr) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._transport.sendto(data, addr)
        except (OSError, ValueError, TypeError) as exc:
            self.send_errors += 1
            log.warning("SIP: cannot send to %s: %s", addr, exc)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
