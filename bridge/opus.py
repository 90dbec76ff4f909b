"""Opus on the app leg, coded by bridge per packet: libopus through PyAV, mono, tuned for voice.

aiortc's own Opus encoder takes 48 kHz stereo at 96 kbit/s, complexity 10, for a call whose other
leg is a desk phone at 8 or 16 kHz: ~120-160 us a 20 ms frame here, most of a transcoded call's
CPU. libopus resamples inside and codes only the band it is given, so this encoder takes the SIP
leg's own rate (8 kHz: ~50 us a frame on speech; 16 kHz: ~65 us) and follows it when it changes
(a transfer to a G.722 phone). The decoder gives 48 kHz (FFmpeg's libopus decoder always does),
mono whatever the stream, ~20 us a frame. The RTP clock of Opus is 48 kHz at every rate (RFC 7587).
"""

from __future__ import annotations

import fractions

import av
import numpy as np

OPUS = "opus"
CLOCK_RATE = 48000
RATES = (8000, 12000, 16000, 24000, 48000)   # what libopus takes in
# Complexity 1 of 10 at a higher bitrate beats complexity 5 at the usual voice bitrates, at half
# the CPU (offline, the load test's two voices through G.711 or G.722 then Opus, PESQ against the
# SIP codec alone; docs/performance.md, "Opus: complexity against bitrate"): 8 kHz 45-55 us a frame,
# PESQ -0.01 (complexity 5 at 24 kbit/s: 81-107 us, -0.03); 16 kHz 63 us, PESQ NB -0.05/-0.08,
# WB -0.07/-0.03 (complexity 5 at 32 kbit/s: 128-132 us, NB -0.07/-0.06, WB -0.13/-0.04).
BITRATE = {8000: 32000, 12000: 40000, 16000: 48000}   # narrow, medium and wide band voice
COMPLEXITY = "1"

# a frame's length in 48 kHz units by the TOC byte's configuration (RFC 6716 3.1): SILK 10-60 ms,
# hybrid 10-20 ms, CELT 2.5-20 ms
_FRAME_UNITS = [480, 960, 1920, 2880] * 3 + [480, 960] * 2 + [120, 240, 480, 960] * 4


def packet_units(packet: bytes) -> int:
    """The audio an Opus packet carries, in 48 kHz units (0 for a malformed one)."""
    if not packet:
        return 0
    toc = packet[0]
    count = toc & 3
    frames = 1 if count == 0 else 2 if count < 3 else (packet[1] & 0x3F if len(packet) > 1 else 0)
    return _FRAME_UNITS[toc >> 3] * frames


class Encoder:
    """int16 mono frames (20 ms at a rate of `RATES`) -> one Opus packet each."""

    def __init__(self) -> None:
        self._codec: av.CodecContext | None = None
        self._rate = 0
        self._pts = 0

    def _open(self, rate: int) -> av.CodecContext:
        if rate not in RATES:
            raise ValueError(f"Opus cannot take {rate} Hz audio")
        codec = av.CodecContext.create("libopus", "w")
        codec.sample_rate, codec.layout, codec.format = rate, "mono", "s16"
        codec.bit_rate = BITRATE.get(rate, 40000)
        codec.time_base = fractions.Fraction(1, rate)
        codec.options = {"application": "voip", "compression_level": COMPLEXITY}
        codec.open()
        self._codec, self._rate, self._pts = codec, rate, 0
        return codec

    def __call__(self, pcm: np.ndarray, rate: int) -> bytes:
        codec = self._codec if rate == self._rate else self._open(rate)
        assert codec is not None
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = self._pts
        self._pts += len(pcm)
        return b"".join(bytes(p) for p in codec.encode(frame))


class Decoder:
    """Opus packets -> int16 mono samples at 48 kHz (empty for a packet libopus refuses)."""

    rate = CLOCK_RATE

    def __init__(self) -> None:
        self._codec = av.CodecContext.create("libopus", "r")
        self._codec.sample_rate, self._codec.layout, self._codec.format = CLOCK_RATE, "mono", "s16"

    def __call__(self, payload: bytes) -> np.ndarray:
        try:
            frames = self._codec.decode(av.Packet(payload))
        except av.FFmpegError:
            return np.zeros(0, np.int16)
        if len(frames) == 1:
            return frames[0].to_ndarray().reshape(-1)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]) if frames else np.zeros(0, np.int16)
