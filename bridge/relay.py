"""The relay's parts (`bridge.media: relay`): packets passed on as they arrive, one at a time.

- `Timeline` maps one leg's RTP timestamps onto the other leg's, keeping the gaps (a lost packet,
  silence suppression, hold) and dropping the late.
- `encoder` and `decoder` make one stream's coder for each codec bridge codes itself: G.711,
  G.722 (`codecs`) and Opus (`opus`), so both directions pick them the same way.
- `Recoder` turns the phone's packets into the app leg's codec when the two differ (Opus on the
  app leg, or G.711 against G.722): each decoded, resampled and cut into 20 ms frames, encoded
  again (a part frame waits for the next packet; a gap pads it with silence). Opus is coded at
  the SIP leg's rate both ways (libopus resamples inside, at half the cost of 48 kHz audio).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from . import codecs, opus
from .resample import Resampling
from .rtp import RtpEndpoint

FRAME_UNITS = codecs.FRAME_UNITS          # 20 ms of the RTP clock, for every codec of ours
MAX_GAP = 2 * codecs.CLOCK_RATE   # a timestamp jump beyond this (units) starts a new stream
MAX_MISORDER = 100        # sequence numbers this far behind the newest are late packets
MAX_DROPOUT = 3000        # ... this far ahead, the same stream; beyond either, a new one

Encode = Callable[[np.ndarray, int], bytes]    # (int16 samples, their rate) -> payload
Decode = Callable[[bytes], np.ndarray]         # payload -> int16 samples


def ours(codec: str) -> bool:
    """A codec bridge codes per packet itself (G.711, G.722, Opus)."""
    return codec in codecs.CODECS or codec == opus.OPUS


def encoder(codec: str) -> Encode:
    """A new stream's encoder: Opus takes any rate of `opus.RATES`, the others their own."""
    if codec == opus.OPUS:
        return opus.Encoder()
    encode = codecs.get(codec).encoder()
    return lambda pcm, rate: encode(pcm)


def decoder(codec: str, rate: int = opus.CLOCK_RATE) -> tuple[Decode, int]:
    """A new stream's decoder and the rate of what it gives (Opus: `rate`, the one wanted)."""
    if codec == opus.OPUS:
        return opus.Decoder(rate), rate
    return codecs.get(codec).decoder(), codecs.get(codec).sample_rate


def clock_rate(codec: str) -> int:
    """The codec's RTP clock: 48 kHz for Opus, 8 kHz for the others (G.722's too)."""
    return opus.CLOCK_RATE if codec == opus.OPUS else codecs.CLOCK_RATE


def units(codec: str, payload: bytes) -> int:
    """RTP timestamp units a payload spans (Opus: read from its TOC byte, 48 kHz)."""
    return opus.packet_units(payload) if codec == opus.OPUS else len(payload)


def _signed(delta: int, bits: int = 32) -> int:
    """An RTP timestamp (32-bit) or sequence (16-bit) difference as a signed number."""
    half = 1 << (bits - 1)
    return ((delta + half) & ((1 << bits) - 1)) - half


class Timeline:
    """Maps one leg's RTP timestamps onto the other leg's, keeping gaps and dropping the late.

    `place(ssrc, seq, ts, samples)` gives how many samples the source skipped since its previous
    packet (0 for the next one in line), or None for a packet to drop: one not newer (by
    sequence number) than one already placed, or a straggler of the previous source.
    A discontinuity starts afresh: it gives 0 then, and sets `restarted`. That is a new source,
    the return of an earlier one (music on hold switched back), a sequence jump, or a timestamp
    that does not follow the sequence (behind the last one, or more than MAX_GAP ahead: hold,
    a restart).
    """

    def __init__(self) -> None:
        self._ssrc: int | None = None
        self._seq = 0
        self._next = 0
        self._previous: tuple[int, int] | None = None   # the source before: (ssrc, newest seq)
        self.restarted = False

    def place(self, ssrc: int, seq: int, ts: int, samples: int) -> int | None:
        if ts == self._next and ssrc == self._ssrc and seq == (self._seq + 1) & 0xFFFF:   # next in line
            self._seq = seq
            self._next = (ts + samples) & 0xFFFFFFFF
            self.restarted = False
            return 0
        skipped = 0
        if ssrc == self._ssrc:
            step = _signed(seq - self._seq, 16)
            if -MAX_MISORDER <= step <= 0:
                return None                       # late, or a duplicate
            skipped = _signed(ts - self._next)
            self.restarted = not (0 < step <= MAX_DROPOUT and 0 <= skipped <= MAX_GAP)
        else:
            previous = self._previous
            if previous is not None and ssrc == previous[0] and -MAX_MISORDER <= _signed(seq - previous[1], 16) <= 0:
                return None                       # a straggler of the previous source
            if self._ssrc is not None:
                self._previous = (self._ssrc, self._seq)
            self.restarted = True
        self._ssrc, self._seq = ssrc, seq
        self._next = (ts + samples) & 0xFFFFFFFF
        return 0 if self.restarted else skipped


class Recoder:
    """The app leg's encoder (`encode`, also for ringback and silence in its codec) and the
    phone's packets recoded into it (`frames`). `codec()` names the app leg's codec."""

    def __init__(self, codec: Callable[[], str]) -> None:
        self.codec = codec
        self._encode: Encode | None = None
        self._decoder: tuple[RtpEndpoint, str, Decode] | None = None
        self._resample = Resampling()
        self._pending = np.zeros(0, np.int16)   # decoded samples short of a frame

    def rate(self, rtp: RtpEndpoint | None) -> int:
        """The rate of the audio to encode: the app codec's, or for Opus the SIP leg's."""
        codec = codecs.CODECS.get(self.codec())
        if codec is not None:
            return codec.sample_rate
        return rtp.sample_rate if rtp is not None else codecs.CLOCK_RATE

    def encode(self, pcm: np.ndarray, rate: int) -> bytes:
        if self._encode is None:
            self._encode = encoder(self.codec())
        return self._encode(pcm, rate)

    def frames(self, rtp: RtpEndpoint, payload: bytes, skipped: int) -> Iterator[tuple[int, bytes | None]]:
        """One of the phone's packets (`skipped` units after the one before) as 20 ms frames of
        the app leg's codec: (units skipped before it, payload) each; a skip with no whole frame
        yet comes with None."""
        if self._decoder is None or self._decoder[:2] != (rtp, rtp.codec):
            self._decoder = (rtp, rtp.codec, decoder(rtp.codec)[0])
            self._pending = self._pending[:0]
        rate = self.rate(rtp)
        pcm = self._resample(self._decoder[2](payload), rtp.sample_rate, rate)
        size = rate // 50
        pending = self._pending
        if skipped and len(pending):            # the part frame before a gap: out, padded
            pad = size - len(pending)
            yield 0, self.encode(np.concatenate([pending, np.zeros(pad, np.int16)]), rate)
            skipped = max(0, skipped - pad * codecs.CLOCK_RATE // rate)
            pending = pending[:0]
        if len(pending):
            pcm = np.concatenate([pending, pcm])
        start = 0
        while len(pcm) - start >= size:
            yield skipped, self.encode(pcm[start:start + size], rate)
            skipped = 0
            start += size
        self._pending = pcm[start:]
        if skipped:
            yield skipped, None
