"""ITU-T G.722 (wideband: 16 kHz audio in 64 kbit/s) for 16-bit linear PCM, by FFmpeg's codec.

The codec is FFmpeg's `g722` (through PyAV), not written here. G.722 is ADPCM: an `Encoder` and a
`Decoder` keep state from one frame to the next, so each RTP stream has its own, fed in order.
A 20 ms frame is 320 samples in, 160 bytes out (and back); FFmpeg adds no delay beyond its
filter (22 samples, 1.4 ms, measured encode -> decode).

The RTP clock of G.722 is 8000 Hz although it samples at 16 kHz (RFC 3551 4.5.2, an error kept
for compatibility): timestamps advance 160 per 20 ms frame, one per payload byte, as G.711's do.
"""

from __future__ import annotations

import fractions

import av
import numpy as np

G722 = "G722"
PAYLOAD_TYPE = 9              # static (RFC 3551)
CLOCK_RATE = 8000             # RTP timestamp units per second
SAMPLE_RATE = 16000           # audio samples per second
SAMPLES_PER_UNIT = SAMPLE_RATE // CLOCK_RATE
_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


def _context(mode: str) -> av.AudioCodecContext:
    codec = av.CodecContext.create("g722", mode)
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = SAMPLE_RATE
    if mode == "w":
        codec.time_base = _TIME_BASE
    return codec


class Encoder:
    """int16 samples at 16 kHz -> G.722 bytes (half as many bytes as samples)."""

    def __init__(self) -> None:
        self._codec = _context("w")
        self._pts = 0

    def __call__(self, pcm: np.ndarray) -> bytes:
        samples = np.ascontiguousarray(pcm, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        self._pts += len(samples)
        return b"".join(bytes(packet) for packet in self._codec.encode(frame))


class Decoder:
    """G.722 bytes -> int16 samples at 16 kHz (two per byte)."""

    def __init__(self) -> None:
        self._codec = _context("r")

    def __call__(self, payload: bytes) -> np.ndarray:
        if not payload:
            return np.zeros(0, np.int16)
        frames = self._codec.decode(av.Packet(payload))
        if len(frames) == 1:
            return frames[0].to_ndarray().reshape(-1)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]) if frames else np.zeros(0, np.int16)
