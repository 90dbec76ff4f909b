"""HEPv3 export: a copy of every SIP message sent and received, to a Homer capture server.

With `sip.hep: {address: host:port, id: N, password: ...}` each SIP datagram goes, as it was on
the wire, in one UDP datagram to the capture server: "HEP3", the total length (uint16), then
chunks, each [vendor id 0x0000: uint16][type: uint16][length, its 6-byte header included: uint16]
[value], big-endian (sipcapture's HEP3 Network Protocol Specification):

    1  IP family, uint8 (2: IPv4, 10: IPv6)     2  IP protocol, uint8 (17: UDP, 6: TCP/TLS)
    3  IPv4 source address (4 bytes)            4  IPv4 destination address
    5  IPv6 source address (16 bytes)           6  IPv6 destination address
    7  source port, uint16                      8  destination port, uint16
    9  timestamp, seconds (uint32)              10 timestamp, microseconds (uint32)
    11 protocol type, uint8 (1: SIP)            12 capture agent id, uint32 (`id`)
    14 authentication key (`password`; sent only when set)
    15 payload: the SIP message

Export never delays or breaks SIP: sending does not block (a backlog beyond MAX_BACKLOG bytes
is dropped), an unresolvable capture server leaves export off (logged at start), and every
failure is counted (`dropped`) and logged once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
import time

from ..config import HepConfig
from ..logsafe import safe

log = logging.getLogger("bridge.sip")

Addr = tuple[str, int]

HEADER = struct.Struct("!4sH")
CHUNK = struct.Struct("!HHH")
PROTO_UDP = 17
PROTO_TCP = 6
TYPE_SIP = 1
FAMILY = {4: 2, 6: 10}
MAX_BACKLOG = 1 << 20


def chunk(kind: int, value: bytes) -> bytes:
    return CHUNK.pack(0, kind, CHUNK.size + len(value)) + value


def encode(payload: bytes, source: Addr, destination: Addr, *, agent_id: int = 0,
           password: str | None = None, now: float | None = None, protocol: int = PROTO_UDP) -> bytes | None:
    """One HEPv3 packet for a SIP message that went from `source` to `destination` (IP
    literals); None if they are not IP addresses of one family, or it would exceed 64 KiB."""
    try:
        src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    except ValueError:
        return None
    if src.version != dst.version:
        return None
    now = time.time() if now is None else now
    seconds = int(now)
    address = (3, 4) if src.version == 4 else (5, 6)
    parts = [
        chunk(1, bytes([FAMILY[src.version]])), chunk(2, bytes([protocol])),
        chunk(address[0], src.packed), chunk(address[1], dst.packed),
        chunk(7, struct.pack("!H", source[1])), chunk(8, struct.pack("!H", destination[1])),
        chunk(9, struct.pack("!I", seconds)), chunk(10, struct.pack("!I", int((now - seconds) * 1e6))),
        chunk(11, bytes([TYPE_SIP])), chunk(12, struct.pack("!I", agent_id)),
    ]
    if password:
        parts.append(chunk(14, password.encode()))
    parts.append(chunk(15, payload))
    size = HEADER.size + sum(len(p) for p in parts)
    if size > 0xFFFF:
        return None
    return HEADER.pack(b"HEP3", size) + b"".join(parts)


class HepExport(asyncio.DatagramProtocol):
    """The capture server's socket; `capture()` sends one message's copy."""

    def __init__(self, cfg: HepConfig, tcp: bool = False) -> None:
        self.cfg = cfg
        self.protocol = PROTO_TCP if tcp else PROTO_UDP     # the IP protocol the SIP went over
        self.sent = 0
        self.dropped = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._complained = False

    @classmethod
    async def open(cls, cfg: HepConfig, tcp: bool = False) -> "HepExport | None":
        """Connect to the capture server (None, logged, if its address does not resolve).
        `tcp`: the SIP it copies goes over TCP or TLS (decrypted: the copy is the message)."""
        self = cls(cfg, tcp)
        try:
            self._transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: self, remote_addr=(cfg.host, cfg.port))
        except OSError as exc:
            log.error("HEP export to %s:%d is off: %s", safe(cfg.host, 80), cfg.port, exc)
            return None
        log.info("HEP export of SIP to %s:%d (capture agent id %d)", safe(cfg.host, 80), cfg.port, cfg.agent_id)
        return self

    def capture(self, payload: bytes, source: Addr, destination: Addr) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        packet = encode(payload, source, destination, agent_id=self.cfg.agent_id, password=self.cfg.password,
                        protocol=self.protocol)
        if packet is None or transport.get_write_buffer_size() > MAX_BACKLOG:
            self._drop("a message that cannot be encoded, or a backlog")
            return
        try:
            transport.sendto(packet)
        except (OSError, ValueError) as exc:
            self._drop(str(exc))
            return
        self.sent += 1

    def error_received(self, exc: Exception) -> None:      # e.g. ICMP port unreachable
        self._drop(str(exc))

    def _drop(self, why: str) -> None:
        self.dropped += 1
        if not self._complained:
            self._complained = True
            log.warning("HEP export to %s:%d dropped a message (%s); further drops are only counted",
                        safe(self.cfg.host, 80), self.cfg.port, why)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
