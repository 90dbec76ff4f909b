"""RTP packets (RFC 3550 section 5.1): the parser and writer, and the relay's header read."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable




RTP_VERSION = 2
RTP_HEADER = struct.Struct("!BBHII")
RTP_FIELDS = struct.Struct("!BHII")    # from the second byte: marker and payload type, seq, ts, ssrc
PT_CN = 13

PacketSink = Callable[[int, int, int, int, bytes], None]   # pt, sequence, timestamp, ssrc, payload


class RtpParseError(ValueError):
    """A datagram that is not a well-formed RTP packet or telephone-event payload."""


# -- packets ------------------------------------------------------------------------------------


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 section 5.1); ``extension`` is the raw extension body."""

    payload_type: int = 0
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    payload: bytes = b""
    marker: bool = False
    csrc: list[int] = field(default_factory=list)
    extension_profile: int | None = None
    extension: bytes = b""
    padding_size: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse a datagram; raise :class:`RtpParseError` when it is malformed."""
        size = len(data)
        if size < RTP_HEADER.size:
            raise RtpParseError(f"RTP packet too short ({size} bytes)")
        b0, b1, seq, ts, ssrc = RTP_HEADER.unpack_from(data)
        if b0 >> 6 != RTP_VERSION:
            raise RtpParseError(f"RTP version {b0 >> 6} != 2")
        pos = RTP_HEADER.size
        cc = b0 & 0x0F
        end_csrc = pos + 4 * cc
        if end_csrc > size:
            raise RtpParseError("RTP CSRC list truncated")
        csrc = list(struct.unpack_from(f"!{cc}I", data, pos)) if cc else []
        pos = end_csrc
        profile = None
        extension = b""
        if b0 & 0x10:
            if pos + 4 > size:
                raise RtpParseError("RTP extension header truncated")
            profile, words = struct.unpack_from("!HH", data, pos)
            pos += 4
            if pos + 4 * words > size:
                raise RtpParseError("RTP extension truncated")
            extension = bytes(data[pos:pos + 4 * words])
            pos += 4 * words
        end = size
        padding = 0
        if b0 & 0x20:
            padding = data[-1]
            if padding == 0 or pos + padding > size:
                raise RtpParseError(f"RTP padding length {padding} invalid")
            end -= padding
        return cls(
            payload_type=b1 & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            payload=bytes(data[pos:end]),
            marker=bool(b1 & 0x80),
            csrc=csrc,
            extension_profile=profile,
            extension=extension,
            padding_size=padding,
        )

    def serialize(self) -> bytes:
        """Wire form; ``extension`` is padded to 32-bit words, ``padding_size`` appended."""
        b0 = (RTP_VERSION << 6) | len(self.csrc)
        if self.padding_size:
            b0 |= 0x20
        if self.extension_profile is not None:
            b0 |= 0x10
        b1 = (0x80 if self.marker else 0) | (self.payload_type & 0x7F)
        parts = [
            RTP_HEADER.pack(
                b0, b1, self.sequence_number & 0xFFFF, self.timestamp & 0xFFFFFFFF,
                self.ssrc & 0xFFFFFFFF,
            )
        ]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if self.extension_profile is not None:
            ext = self.extension + b"\x00" * (-len(self.extension) % 4)
            parts.append(struct.pack("!HH", self.extension_profile, len(ext) // 4) + ext)
        parts.append(self.payload)
        if self.padding_size:
            if not 0 < self.padding_size < 256:
                raise ValueError("padding_size must be 1..255")
            parts.append(b"\x00" * (self.padding_size - 1) + bytes([self.padding_size]))
        return b"".join(parts)


def is_rtcp(data: bytes) -> bool:
    """RTCP multiplexed on the RTP port (RFC 5761: second byte 192-223)."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def payload_span(data: bytes) -> tuple[int, int] | None:
    """Where the payload of an RTP packet (at least its 12-byte header) lies, past the CSRCs,
    the header extension and before the padding; None if those do not fit."""
    first = data[0]
    start = 12 + 4 * (first & 0x0F)
    if first & 0x10:
        if len(data) < start + 4:
            return None
        start += 4 + 4 * ((data[start + 2] << 8) | data[start + 3])
    end = len(data)
    if first & 0x20:
        padding = data[-1]
        if padding == 0:
            return None
        end -= padding
    return (start, end) if start <= end else None
