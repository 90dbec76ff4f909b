"""RFC 4733 telephone-events: the payload, and the codes of DTMF digits."""

from __future__ import annotations

import struct
from dataclasses import dataclass



from .packet import RtpParseError

EVENT_PAYLOAD = struct.Struct("!BBH")
DEFAULT_DTMF_PT = 101

# RFC 4733 event codes 0-16: DTMF digits, then flash ("!").
EVENT_CHARS = "0123456789*#ABCD!"
_CHAR_EVENTS = {c: i for i, c in enumerate(EVENT_CHARS)}


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """RFC 4733 section 2.3 payload: event code, end bit, volume (-dBm0), duration (ts units)."""

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        if len(payload) < EVENT_PAYLOAD.size:
            raise RtpParseError("telephone-event payload shorter than 4 bytes")
        event, flags, duration = EVENT_PAYLOAD.unpack_from(payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def serialize(self) -> bytes:
        flags = (0x80 if self.end else 0) | (self.volume & 0x3F)
        return EVENT_PAYLOAD.pack(self.event & 0xFF, flags, min(self.duration, 0xFFFF))

    @property
    def char(self) -> str | None:
        """'0'-'9', '*', '#', 'A'-'D', '!' (flash); None for other events."""
        return EVENT_CHARS[self.event] if self.event < len(EVENT_CHARS) else None


def event_code(digit: str) -> int:
    """RFC 4733 event code of a DTMF character ('0'-'9', '*', '#', 'A'-'D', '!' = flash)."""
    try:
        return _CHAR_EVENTS[digit.upper()]
    except KeyError:
        raise ValueError(f"not a DTMF digit: {digit!r}") from None
