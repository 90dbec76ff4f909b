"""The audio codecs bridge codes itself: G.711 (PCMU, PCMA) and G.722, by their SDP names.

A `Codec` says what RTP needs (static payload type, clock and sample rates) and makes the encoder
and decoder of one stream: int16 samples <-> payload bytes. All three use an 8000 Hz RTP clock and
one payload byte per timestamp unit, so a 20 ms frame is 160 units and 160 bytes; G.722 carries
320 samples (16 kHz) in them. Opus is aiortc's business on the app leg and is not here.

Packets relay between legs (no decoding) when `relayable`: the same codec, or the two G.711 laws
(`convert`, a byte table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import g711, g722

CLOCK_RATE = 8000
FRAME_UNITS = 160            # 20 ms of the RTP clock


@dataclass(frozen=True)
class Codec:
    name: str
    payload_type: int        # static (RFC 3551)
    sample_rate: int

    @property
    def frame_samples(self) -> int:
        """Samples in 20 ms."""
        return self.sample_rate // 50

    @property
    def wideband(self) -> bool:
        return self.sample_rate > 8000

    def encoder(self) -> Callable[[np.ndarray], bytes]:
        """A new stream's encoder (int16 samples -> payload)."""
        if self.name == g722.G722:
            return g722.Encoder()
        table = g711.ENCODE_TABLES[self.name]
        return lambda pcm: table[np.asarray(pcm, dtype=np.int16).view(np.uint16)].tobytes()

    def decoder(self) -> Callable[[bytes], np.ndarray]:
        """A new stream's decoder (payload -> int16 samples)."""
        if self.name == g722.G722:
            return g722.Decoder()
        table = g711.DECODE_TABLES[self.name]
        return lambda payload: table[np.frombuffer(payload, dtype=np.uint8)]


CODECS: dict[str, Codec] = {
    g711.PCMU: Codec(g711.PCMU, g711.PT_PCMU, 8000),
    g711.PCMA: Codec(g711.PCMA, g711.PT_PCMA, 8000),
    g722.G722: Codec(g722.G722, g722.PAYLOAD_TYPE, g722.SAMPLE_RATE),
}
BY_PAYLOAD_TYPE: dict[int, Codec] = {c.payload_type: c for c in CODECS.values()}


def get(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unsupported codec {name!r} (expected one of {', '.join(CODECS)})") from None


def relayable(source: str, target: str) -> bool:
    """True if packets of `source` can go on as `target` without decoding."""
    return source == target or (source in g711.CODECS and target in g711.CODECS)


def convert(payload: bytes, source: str, target: str) -> bytes:
    """A relayable payload of `source` as `target`."""
    if source == target:
        return payload
    if not relayable(source, target):
        raise ValueError(f"{source} packets cannot be relayed as {target}")
    return g711.convert(payload, source, target)


def app_leg_order(app: tuple[str, ...], sip_codec: str | None) -> tuple[str, ...]:
    """`webrtc.codecs` for a call whose SIP leg speaks `sip_codec` (known first: desk -> app).
    When the first would not relay, those that do go first; for a wideband SIP leg with none,
    Opus (the call stays wideband). Otherwise the order is kept."""
    if sip_codec is None or not app or relayable(app[0], sip_codec):
        return app
    first = [c for c in app if relayable(c, sip_codec)]
    if not first and get(sip_codec).wideband:
        first = [c for c in app if c.lower() == "opus"]
    return tuple(dict.fromkeys(first + list(app)))
