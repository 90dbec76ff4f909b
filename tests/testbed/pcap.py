"""Crafted RTP for the test bed: packets built byte by byte, written as a pcap file for sipp.

Deliberately independent of ``bridge.rtp`` / ``bridge.g711`` (the code under test): RTP headers
are packed here with ``struct``, G.711 mu-law is encoded here (ITU-T G.711 segment algorithm).

sipp's ``<exec play_pcap_audio="file.pcap"/>`` (sipp 3.6, ``prepare_pcap.c``/``send_packets.c``)
reads Ethernet (or Linux SLL) + IPv4/IPv6 + UDP frames, keeps only the UDP datagram (its length
is taken from the UDP header, so that must be right; records must not be truncated), and sends
it from a raw socket (root / CAP_NET_RAW) with the ports rewritten: source = sipp's media port
(``-mp``) + (dst port - lowest dst port in the file), destination = the port of the peer's SDP
+ the same offset.  The UDP checksum is recomputed, the IP header is the kernel's, and the RTP
bytes (sequence, timestamp, SSRC, everything) go out exactly as written.  Packets are paced by
the pcap record timestamps.

    packets = [PcapRecord(t, rtp_bytes), ...]
    write_pcap(path, packets)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1

# --- G.711 mu-law (independent of bridge.g711) ---------------------------------------------

_BIAS, _CLIP = 0x84, 32635


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """16-bit linear PCM -> G.711 mu-law bytes (ITU-T G.711, with the usual 0x84 bias)."""
    x = np.asarray(pcm, dtype=np.int32)
    sign = np.where(x < 0, 0x80, 0x00)
    mag = np.minimum(np.abs(x), _CLIP) + _BIAS
    exponent = np.zeros_like(mag)
    for e in range(7, 0, -1):                       # position of the highest set bit above bit 7
        exponent = np.where((exponent == 0) & (mag >= (0x80 << e)), e, exponent)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """G.711 mu-law bytes -> int16 (for checking the encoder)."""
    u = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
    mag = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(u & 0x80, -mag, mag).astype(np.int16)


# --- RTP / RFC 4733 -----------------------------------------------------------------------------

@dataclass
class Rtp:
    """One RTP packet (RFC 3550 5.1), packed by hand."""

    pt: int
    seq: int
    ts: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrc: Sequence[int] = ()
    ext_profile: int | None = None
    ext_words: bytes = b""          # extension body, a multiple of 4 bytes
    padding: int = 0                # total padding octets (the last one holds the count)
    version: int = 2

    def pack(self) -> bytes:
        if len(self.ext_words) % 4:
            raise ValueError("extension body must be whole 32-bit words")
        b0 = (self.version << 6) | (0x20 if self.padding else 0) | \
             (0x10 if self.ext_profile is not None else 0) | len(self.csrc)
        b1 = (0x80 if self.marker else 0) | (self.pt & 0x7F)
        out = struct.pack("!BBHII", b0, b1, self.seq & 0xFFFF, self.ts & 0xFFFFFFFF, self.ssrc)
        out += b"".join(struct.pack("!I", c) for c in self.csrc)
        if self.ext_profile is not None:
            out += struct.pack("!HH", self.ext_profile, len(self.ext_words) // 4) + self.ext_words
        out += self.payload
        if self.padding:
            out += b"\x00" * (self.padding - 1) + bytes([self.padding])
        return out


def telephone_event(event: int, end: bool, volume: int, duration: int) -> bytes:
    """RFC 4733 2.3 payload."""
    return struct.pack("!BBH", event, (0x80 if end else 0) | (volume & 0x3F), duration & 0xFFFF)


def rtcp_sender_report(ssrc: int, rtp_ts: int, packets: int, octets: int) -> bytes:
    """A minimal RTCP SR (RFC 3550 6.4.1), no report blocks: PT 200, length 6 words."""
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 0xE1234567, 0x89ABCDEF, rtp_ts & 0xFFFFFFFF,
                       packets, octets)


# --- pcap ---------------------------------------------------------------------------------------

@dataclass
class PcapRecord:
    time: float                     # seconds (pcap record timestamp; sipp paces by the deltas)
    payload: bytes                  # the UDP payload
    src: tuple[str, int] = ("10.0.0.1", 7078)
    dst: tuple[str, int] = ("10.0.0.2", 6000)


def _ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def internet_checksum(data: bytes) -> int:
    return ~_ones_complement_sum(data) & 0xFFFF


def _ip(addr: str) -> bytes:
    return bytes(int(p) for p in addr.split("."))


def udp_datagram(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """UDP header + payload with the RFC 768 checksum over the IPv4 pseudo header."""
    length = 8 + len(payload)
    pseudo = _ip(src[0]) + _ip(dst[0]) + struct.pack("!BBH", 0, 17, length)
    header = struct.pack("!HHHH", src[1], dst[1], length, 0)
    csum = internet_checksum(pseudo + header + payload) or 0xFFFF
    return struct.pack("!HHHH", src[1], dst[1], length, csum) + payload


def ipv4_packet(src: str, dst: str, udp: bytes, ident: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident & 0xFFFF, 0x4000, 64, 17, 0,
                         _ip(src), _ip(dst))
    csum = internet_checksum(header)
    return header[:10] + struct.pack("!H", csum) + header[12:] + udp


def ethernet_frame(ip: bytes) -> bytes:
    return bytes.fromhex("020000000002") + bytes.fromhex("020000000001") + struct.pack("!H", 0x0800) + ip


def write_pcap(path, records: Iterable[PcapRecord]) -> Path:
    """A classic libpcap file (microsecond timestamps, Ethernet link type)."""
    path = Path(path)
    out = [struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET)]
    for i, r in enumerate(records):
        frame = ethernet_frame(ipv4_packet(r.src[0], r.dst[0], udp_datagram(r.src, r.dst, r.payload), i + 1))
        sec = int(r.time)
        usec = int(round((r.time - sec) * 1e6))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        out.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))
    return path


def read_pcap(path) -> list[tuple[float, bytes]]:
    """(time, UDP payload) of each record; verifies lengths and the IPv4/UDP checksums."""
    data = Path(path).read_bytes()
    magic, major, minor, _, _, snaplen, link = struct.unpack_from("<IHHiIII", data)
    assert (magic, major, minor, link) == (PCAP_MAGIC, 2, 4, LINKTYPE_ETHERNET)
    pos, out = 24, []
    while pos < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, pos)
        pos += 16
        frame = data[pos:pos + incl]
        pos += incl
        assert incl == orig == len(frame) and incl <= snaplen
        assert frame[12:14] == b"\x08\x00"
        ip = frame[14:]
        assert ip[0] == 0x45 and ip[9] == 17
        total = struct.unpack_from("!H", ip, 2)[0]
        assert total == len(ip), "IPv4 total length"
        assert internet_checksum(ip[:20]) == 0, "IPv4 header checksum"
        udp = ip[20:]
        length = struct.unpack_from("!H", udp, 4)[0]
        assert length == len(udp), "UDP length"
        pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, length)
        assert internet_checksum(pseudo + udp) == 0, "UDP checksum"
        out.append((sec + usec / 1e6, bytes(udp[8:])))
    return out


@dataclass
class CraftedStream:
    """What went into a crafted pcap, for the test's expectations."""

    records: list[PcapRecord] = field(default_factory=list)
    audio_frames: int = 0
    events: list[str] = field(default_factory=list)     # the RFC 4733 events, in order ('!' = flash)
    notes: dict[str, int] = field(default_factory=dict)  # kind of crafted packet -> count
