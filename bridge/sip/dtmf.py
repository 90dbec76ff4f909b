"""DTMF in SIP INFO requests: `application/dtmf-relay` (Cisco's `Signal=5`/`Duration=160`) and
`application/dtmf` (a bare digit), the two bodies PBXs use when RFC 4733 is not negotiated.
"""

from __future__ import annotations

INFO_TYPES = ("application/dtmf-relay", "application/dtmf")
DIGITS = "0123456789*#ABCD"
_EVENTS = {str(i): DIGITS[i] for i in range(16)}   # some phones send the event code: 10 = '*'


def _digit(value: str) -> str | None:
    value = value.strip().upper()
    if len(value) == 1 and value in DIGITS:
        return value
    return _EVENTS.get(value)


def from_info(content_type: str, body: bytes) -> str | None:
    """The digits an INFO body carries; None if it is not a DTMF body we know."""
    if content_type not in INFO_TYPES or len(body) > 1024:
        return None
    text = body.decode("ascii", "replace")
    if content_type == "application/dtmf":
        return _digit(text)
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip().lower() == "signal":
            return _digit(value)
    return None


def to_info(digit: str, duration_ms: int = 160) -> tuple[str, str]:
    """(Content-Type, body) of an INFO carrying one digit, in the dtmf-relay form."""
    return "application/dtmf-relay", f"Signal={digit}\r\nDuration={duration_ms}\r\n"
