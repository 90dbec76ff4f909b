"""SDP for the SIP leg: session descriptions (RFC 4566) and their offer/answer (RFC 3264).

The bridge speaks one audio stream: PCMU, PCMA or G.722 (all with an 8000 Hz RTP clock, RFC 3551)
plus RFC 4733 telephone-event. What it promises:
- Parsing keeps every m-line of a description, in order, with its own `c=`, direction, `a=rtpmap`
  and `a=ptime`; session-level `c=` and direction are the defaults, media-level ones win.
  Anything else (`b=`, `a=fmtp`, `a=rtcp`, `a=maxptime`, unknown attributes, profiles, media) is
  tolerated and ignored; encoding names and attribute names are read in any case.
- `choose` takes the first audio stream with a port, a profile `sip.srtp` allows and a codec of
  ours, even if an earlier audio stream is unusable. In it, G.722 is taken when both sides have it
  (wideband), else the offerer's first codec of ours. No such stream: `SdpError`.
- SRTP (SDES, `bridge.sip.sdes`): with `srtp` off, an RTP/SAVP(F) stream is unusable and
  `a=crypto` lines on RTP/AVP are ignored (answered as plain RTP); with `optional`, a stream is
  used with the first usable `a=crypto` line of its m-line when it has one, RTP/SAVP(F) only
  then, RTP/AVP(F) with or without (best-effort SRTP, as baresip's `mediaenc=srtp` and
  liblinphone offer it); with `required`, only streams with a usable `a=crypto` line are taken.
  The answer keeps the offer's profile; the bridge's own offer is RTP/SAVP (`required`) or
  RTP/AVP (`optional`) with one `a=crypto` line per suite, or plain RTP/AVP (`off`).
- An answer (`build` with the offer) has one m-line for every m-line of the offer, in order
  (RFC 3264 6): ours for the chosen stream, port 0 and the first offered format for every other
  (video, an unknown medium, a second audio stream, a disabled one). A re-offer of ours keeps the
  m-lines of the session in the same way (RFC 3264 8). The bridge's own first offer (and its offer
  in a 2xx, for a delayed offer) is one audio m-line.
- At most `MAX_STREAMS` m-lines are read: a larger description is refused (no amplification).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import sdes

STATIC = {0: ("PCMU", 8000), 8: ("PCMA", 8000), 9: ("G722", 8000)}   # RFC 3551 static payload types
STATIC_PT = {name: pt for pt, (name, _) in STATIC.items()}
SUPPORTED = ("PCMU", "PCMA", "G722")
WIDEBAND = "G722"
CLOCK_RATE = 8000       # the RTP clock of each of SUPPORTED (G.722's too: RFC 3551 4.5.2)
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
PROFILES = ("RTP/AVP", "RTP/AVPF")
SECURE_PROFILES = ("RTP/SAVP", "RTP/SAVPF")
SRTP_MODES = ("off", "optional", "required")
MAX_STREAMS = 16
NO_AUDIO = "no audio stream in SDP"


class SdpError(ValueError):
    """The SDP cannot be used (malformed, or no common codec)."""


@dataclass
class Media:
    """One m-line and what follows it up to the next (media-level values are None when absent)."""

    kind: str                   # audio, video, application, ... (as written)
    port: int
    protocol: str
    formats: list[str]
    address: str | None = None
    direction: str | None = None
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)   # pt -> (name, clock rate)
    ptime: int | None = None
    crypto: list[str] = field(default_factory=list)     # a=crypto values (SDES), as written

    @property
    def is_audio(self) -> bool:
        return self.kind.lower() == "audio"

    @property
    def payloads(self) -> list[int]:
        return [int(f) for f in self.formats if f.isdigit()]

    def declined(self) -> str:
        """This stream's m-line in an answer (or re-offer) that declines it: port 0 (RFC 3264 6)."""
        return f"m={self.kind} 0 {self.protocol} {self.formats[0] if self.formats else '0'}"


@dataclass
class SessionDescription:
    """A parsed SDP body: session-level defaults and every m-line, in order."""

    address: str | None
    direction: str
    media: list[Media]

    def audio(self, index: int, crypto: sdes.Crypto | None = None) -> "Audio":
        """The m-line at `index` as an audio stream, session-level defaults applied."""
        m = self.media[index]
        return Audio(address=m.address or self.address or "", port=m.port, payloads=m.payloads,
                     codecs=dict(m.rtpmap), direction=m.direction or self.direction, protocol=m.protocol,
                     ptime=m.ptime or 20, index=index, streams=tuple(self.media), crypto=crypto)


@dataclass
class Audio:
    """The audio stream the bridge uses, and the m-lines of the description it came from."""

    address: str
    port: int
    payloads: list[int]
    codecs: dict[int, tuple[str, int]] = field(default_factory=dict)   # pt -> (name, rate)
    direction: str = "sendrecv"
    protocol: str = "RTP/AVP"
    ptime: int = 20
    index: int = 0                         # its m-line in `streams`
    streams: tuple[Media, ...] = ()
    crypto: sdes.Crypto | None = None      # the SDES line taken: SRTP with the peer's key

    def codec(self, pt: int) -> str | None:
        name = self.codecs.get(pt, STATIC.get(pt, ("", 0)))[0]
        return name.upper() or None

    def rate(self, pt: int) -> int:
        return self.codecs.get(pt, STATIC.get(pt, ("", 0)))[1]

    @property
    def telephone_event(self) -> int | None:
        for pt in self.payloads:
            name, rate = self.codecs.get(pt, ("", 0))
            if name.lower() == "telephone-event" and rate == CLOCK_RATE:
                return pt
        return None

    @property
    def held_by_address(self) -> bool:
        """RFC 2543 hold: connection address 0.0.0.0 (or ::)."""
        return self.address in ("0.0.0.0", "::")

    @property
    def on_hold(self) -> bool:
        return self.direction in ("sendonly", "inactive") or self.held_by_address


def parse(body: bytes | str) -> SessionDescription:
    """Every m-line of `body`, with the session-level `c=` and direction; SdpError if malformed."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    session = SessionDescription(None, "sendrecv", [])
    current: Media | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            current = _media_line(value)
            session.media.append(current)
            if len(session.media) > MAX_STREAMS:
                raise SdpError(f"more than {MAX_STREAMS} media streams")
        elif kind == "c":
            parts = value.split()
            if len(parts) >= 3:
                address = parts[2].split("/")[0]
                if current is not None:
                    current.address = address
                else:
                    session.address = address
        elif kind == "a":
            name, _, arg = value.partition(":")
            name = name.strip().lower()
            if name in DIRECTIONS:
                if current is not None:
                    current.direction = name
                else:
                    session.direction = name
            elif current is not None and name == "rtpmap":
                _rtpmap(current, arg)
            elif current is not None and name == "ptime" and arg.strip().isdigit():
                current.ptime = int(arg)
            elif current is not None and name == "crypto" and len(current.crypto) < MAX_STREAMS:
                current.crypto.append(arg.strip())
    return session


def _media_line(value: str) -> Media:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"bad m= line: {value[:80]}")
    try:
        port = int(parts[1].split("/")[0])
    except ValueError:
        raise SdpError(f"bad m= line: {value[:80]}") from None
    if not 0 <= port <= 65535:
        raise SdpError(f"bad m= port: {value[:80]}")
    return Media(parts[0], port, parts[2], parts[3:])


def _rtpmap(media: Media, arg: str) -> None:
    pt, _, encoding = arg.strip().partition(" ")
    bits = encoding.strip().split("/")
    try:
        media.rtpmap[int(pt)] = (bits[0], int(bits[1]) if len(bits) > 1 else CLOCK_RATE)
    except ValueError:
        pass


def choose(session: SessionDescription, supported: tuple[str, ...] = SUPPORTED,
           srtp: str = "off") -> tuple[Audio, tuple[str, int]]:
    """The first usable audio stream of `session` and its codec (name, payload type); `srtp`:
    off, optional or required (see the module docstring)."""
    why = NO_AUDIO
    for index, media in enumerate(session.media):
        if not media.is_audio:
            continue
        if media.port == 0:
            why = "every audio stream is disabled (port 0)" if why == NO_AUDIO else why
            continue
        secure = media.protocol.upper() in SECURE_PROFILES
        if media.protocol.upper() not in PROFILES + SECURE_PROFILES or (secure and srtp == "off"):
            why = f"unsupported media profile {media.protocol[:40]}" + (" (sip.srtp is off)" if secure else "")
            continue
        crypto = sdes.usable(media.crypto)[:1] if srtp != "off" else []
        if not crypto and (secure or srtp == "required"):
            why = ("SRTP is required (sip.srtp) and the offer has no usable a=crypto line" if not media.crypto
                   else "no usable a=crypto line (bridge has AES_CM_128_HMAC_SHA1_80 and _32, one inline key, no MKI)")
            continue
        audio = session.audio(index, crypto[0] if crypto else None)
        codec = _codec(audio, supported)
        if codec is None:
            why = f"no common codec (bridge speaks {', '.join(supported)})"
            continue
        if not audio.address:
            raise SdpError("no connection address in SDP")
        return audio, codec
    raise SdpError(why)


def _codec(audio: Audio, supported: tuple[str, ...]) -> tuple[str, int] | None:
    ours = [(audio.codec(pt), pt) for pt in audio.payloads
            if audio.codec(pt) in supported and audio.rate(pt) == CLOCK_RATE]
    wide = [(name, pt) for name, pt in ours if name == WIDEBAND]
    chosen = (wide or ours or [None])[0]
    return None if chosen is None else (str(chosen[0]), chosen[1])


def offer_codecs(codecs: tuple[str, ...], prefer: str | None = None) -> list[tuple[str, int]]:
    """(name, payload type) to offer: G.722 first when configured (wideband wherever the far end
    can), but the G.711 laws first when `prefer` is one (the app leg speaks it: packets relay)."""
    g711 = ("PCMU", "PCMA")
    first = [prefer] if prefer in codecs else []
    if prefer in g711:
        first += [c for c in codecs if c in g711]
    first += [WIDEBAND] if WIDEBAND in codecs else []
    order = list(dict.fromkeys(first + list(codecs)))
    return [(c, STATIC_PT[c]) for c in order]


class SessionVersion:
    """o= line state: one session id, a version that grows with each new description."""

    def __init__(self) -> None:
        self.id = int(time.time() * 1000) % 10**12
        self.version = 0

    def next(self) -> int:
        self.version += 1
        return self.version


def build(address: str, port: int, codecs: list[tuple[str, int]], *, session: SessionVersion,
          telephone_event: int | None = 101, direction: str = "sendrecv", like: Audio | None = None,
          crypto: list[sdes.Crypto] | None = None, protocol: str = "RTP/AVP") -> str:
    """An SDP body offering/answering `codecs` [(name, pt)] on address:port, with `crypto` lines.

    `like`: the remote audio stream of the session being answered or re-offered; the body then
    has one m-line for each of its description's, ours in its place, the others declined, and
    ours keeps its profile (else `protocol`)."""
    ip = "IP6" if ":" in address else "IP4"
    pts = [pt for _, pt in codecs] + ([telephone_event] if telephone_event is not None else [])
    if like is not None and like.protocol.upper() in PROFILES + SECURE_PROFILES:
        protocol = like.protocol
    ours = [f"m=audio {port} {protocol} {' '.join(str(pt) for pt in pts)}"]
    ours += [line.attribute() for line in crypto or []]
    ours += [f"a=rtpmap:{pt} {name}/{CLOCK_RATE}" for name, pt in codecs]
    if telephone_event is not None:
        ours += [f"a=rtpmap:{telephone_event} telephone-event/{CLOCK_RATE}", f"a=fmtp:{telephone_event} 0-16"]
    ours += ["a=ptime:20", f"a={direction}"]
    if like is None or not like.streams:
        media = ours
    else:
        media = []
        for n, stream in enumerate(like.streams):
            media += ours if n == like.index else [stream.declined()]
    lines = ["v=0", f"o=bridge {session.id} {session.next()} IN {ip} {address}", "s=bridge",
             f"c=IN {ip} {address}", "t=0 0"] + media
    return "\r\n".join(lines) + "\r\n"
