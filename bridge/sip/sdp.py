"""SDP for the SIP leg: one audio stream, G.711 (PCMU/PCMA) and RFC 4733 telephone-event.

Parsing is tolerant (unknown lines, profiles and attributes are ignored); negotiation picks the
first of the offerer's codecs that bridge supports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

STATIC = {0: ("PCMU", 8000), 8: ("PCMA", 8000)}
STATIC_PT = {"PCMU": 0, "PCMA": 8}
SUPPORTED = ("PCMU", "PCMA")
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class SdpError(ValueError):
    """The SDP cannot be used (malformed, or no common codec)."""


@dataclass
class Audio:
    """The audio stream of a session description."""

    address: str
    port: int
    payloads: list[int]
    codecs: dict[int, tuple[str, int]] = field(default_factory=dict)   # pt -> (name, rate)
    direction: str = "sendrecv"
    protocol: str = "RTP/AVP"
    ptime: int = 20

    def codec(self, pt: int) -> str | None:
        name = self.codecs.get(pt, STATIC.get(pt, ("", 0)))[0]
        return name.upper() or None

    @property
    def telephone_event(self) -> int | None:
        for pt in self.payloads:
            name, rate = self.codecs.get(pt, ("", 0))
            if name.lower() == "telephone-event" and rate == 8000:
                return pt
        return None

    @property
    def held_by_address(self) -> bool:
        """RFC 2543 hold: connection address 0.0.0.0 (or ::)."""
        return self.address in ("0.0.0.0", "::")

    @property
    def on_hold(self) -> bool:
        return self.direction in ("sendonly", "inactive") or self.held_by_address


def parse(body: bytes | str) -> Audio:
    """The first audio m= line of `body` (with session-level c= and direction as defaults)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    session_addr, session_dir = None, "sendrecv"
    audio: Audio | None = None
    in_audio = False
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            parts = value.split()
            in_audio = audio is None and len(parts) >= 4 and parts[0] == "audio"
            if in_audio:
                try:
                    payloads = [int(p) for p in parts[3:]]
                    port = int(parts[1].split("/")[0])
                except ValueError:
                    raise SdpError(f"bad m= line: {value[:80]}") from None
                audio = Audio(address=session_addr or "", port=port, payloads=payloads,
                              protocol=parts[2], direction=session_dir)
        elif kind == "c":
            parts = value.split()
            if len(parts) >= 3:
                address = parts[2].split("/")[0]
                if in_audio and audio is not None:
                    audio.address = address
                elif audio is None:
                    session_addr = address
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name in DIRECTIONS:
                if in_audio and audio is not None:
                    audio.direction = name
                elif audio is None:
                    session_dir = name
            elif in_audio and audio is not None and name == "rtpmap":
                pt, _, enc = arg.partition(" ")
                bits = enc.split("/")
                try:
                    audio.codecs[int(pt)] = (bits[0], int(bits[1]) if len(bits) > 1 else 8000)
                except ValueError:
                    continue
            elif in_audio and audio is not None and name == "ptime" and arg.strip().isdigit():
                audio.ptime = int(arg)
    if audio is None:
        raise SdpError("no audio stream in SDP")
    if not audio.address:
        raise SdpError("no connection address in SDP")
    return audio


def choose(offer: Audio, supported: tuple[str, ...] = SUPPORTED) -> tuple[str, int]:
    """(codec name, payload type): the offerer's first codec that we support."""
    if offer.protocol not in ("RTP/AVP", "RTP/AVPF"):
        raise SdpError(f"unsupported media profile {offer.protocol}")
    for pt in offer.payloads:
        name = offer.codec(pt)
        if name in supported:
            return name, pt
    raise SdpError("no common codec (bridge speaks PCMU and PCMA)")


class SessionVersion:
    """o= line state: one session id, a version that grows with each new description."""

    def __init__(self) -> None:
        self.id = int(time.time() * 1000) % 10**12
        self.version = 0

    def next(self) -> int:
        self.version += 1
        return self.version


def build(address: str, port: int, codecs: list[tuple[str, int]], *, session: SessionVersion,
          telephone_event: int | None = 101, direction: str = "sendrecv") -> str:
    """An SDP body offering/answering `codecs` [(name, pt)] on address:port."""
    ip = "IP6" if ":" in address else "IP4"
    pts = [pt for _, pt in codecs] + ([telephone_event] if telephone_event is not None else [])
    lines = [
        "v=0",
        f"o=bridge {session.id} {session.next()} IN {ip} {address}",
        "s=bridge",
        f"c=IN {ip} {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(str(pt) for pt in pts)}",
    ]
    lines += [f"a=rtpmap:{pt} {name}/8000" for name, pt in codecs]
    if telephone_event is not None:
        lines += [f"a=rtpmap:{telephone_event} telephone-event/8000", f"a=fmtp:{telephone_event} 0-16"]
    lines += ["a=ptime:20", f"a={direction}"]
    return "\r\n".join(lines) + "\r\n"
