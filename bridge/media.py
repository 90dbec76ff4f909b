"""Frames between the legs of a bridged call: WebRTC (48 kHz) <-> SIP RTP (8 kHz G.711).

Each direction runs on its own 20 ms clock, so neither leg's timing leaks into the other:
- SIP -> app: `SipToApp` is the app leg's outgoing aiortc track; each tick it pulls one frame
  from the RTP jitter buffer (which conceals loss and absorbs drift) and upsamples it. Before
  the phone answers it plays ringback, or the phone's early media.
- app -> SIP: `AppToSip` receives the app leg's decoded frames, downsamples them into a short
  FIFO (at most `depth` frames; the oldest is dropped on overflow, silence sent on underrun),
  and a task sends one frame to the phone every tick.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .audio import PTIME, RATE, make_frame
from .clock import FrameClock
from .resample import Downsampler, Upsampler
from .rtp import RtpEndpoint

SIP_FRAME = 160


def _ringback(rate: int) -> np.ndarray:
    """North American ringback (440 + 480 Hz, 2 s on, 4 s off), -19 dBFS."""
    t = np.arange(2 * rate) / rate
    on = 0.5 * (np.sin(2 * np.pi * 440 * t) + np.sin(2 * np.pi * 480 * t)) * 32767 * 10 ** (-19 / 20)
    return np.concatenate([on, np.zeros(4 * rate)]).astype(np.int16)


RINGBACK = {RATE: _ringback(RATE), 8000: _ringback(8000)}


@dataclass
class DirectionStats:
    """Frame accounting for one direction (exported as metrics)."""

    frames: int = 0
    late: int = 0        # clock ticks that fired more than a quarter frame late
    underruns: int = 0   # nothing to send: silence instead
    overruns: int = 0    # too much queued: oldest frame dropped


class SipToApp(MediaStreamTrack):
    """The app leg's outgoing audio: ringback, then the desk phone's audio.

    Frames are 48 kHz for Opus; when the app leg speaks G.711 too, the phone's 8 kHz frames pass
    through without resampling. (The rate is fixed once the leg is negotiated, before the first
    frame is pulled: aiortc's encoders cannot change their input rate mid-stream.)
    """

    kind = "audio"

    def __init__(self, codec: Callable[[], str] = lambda: "") -> None:
        super().__init__()
        self.rtp: RtpEndpoint | None = None
        self.mode = "silence"     # silence, ringback, sip
        self.codec = codec        # the app leg's negotiated codec, known before media flows
        self.stats = DirectionStats()
        self._up = Upsampler()
        self._clock = FrameClock(PTIME)
        self._ring_pos = 0

    @property
    def rate(self) -> int:
        return 8000 if self.codec() in ("PCMU", "PCMA") else RATE

    def play_ringback(self) -> None:
        if self.mode == "silence":
            self.mode = "ringback"

    def connect(self, rtp: RtpEndpoint) -> None:
        """From now on carry the phone's audio (early media or the answered call)."""
        self.rtp = rtp
        self.mode = "sip"

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        tick = await anext(self._clock)
        self.stats.frames += 1
        if tick.lateness > PTIME / 4:
            self.stats.late += 1
        rate = self.rate
        size = int(rate * PTIME)
        if self.mode == "sip" and self.rtp is not None and not self.rtp.closed:
            pcm = self.rtp.read_frame()
            if rate != 8000:
                pcm = self._up(pcm)
        elif self.mode == "ringback":
            tone = RINGBACK[rate]
            start = (self._ring_pos * size) % len(tone)
            pcm = tone[start:start + size]
            self._ring_pos += 1
        else:
            pcm = np.zeros(size, np.int16)
        return make_frame(pcm, tick.index * size, rate)


class AppToSip:
    """A sink for the app leg's frames and the task that sends them to the phone."""

    def __init__(self, depth: int = 3) -> None:
        self.depth = depth
        self.stats = DirectionStats()
        self._down = Downsampler()
        self._queue: deque[np.ndarray] = deque()
        self._silence = np.zeros(SIP_FRAME, np.int16)
        self._pending = np.zeros(0, np.int16)

    def __call__(self, pcm: np.ndarray, rate: int = RATE) -> None:
        """Called by the SDK with each decoded frame (int16 mono, 48 kHz Opus or 8 kHz G.711)."""
        if rate == RATE:
            pcm = self._down(pcm)                      # Opus frames: 960 samples, a multiple of 6
        elif rate != 8000:
            raise ValueError(f"unexpected sample rate {rate}")
        if len(pcm) != SIP_FRAME or len(self._pending):   # not 20 ms: re-frame
            self._pending = np.concatenate([self._pending, pcm])
            while len(self._pending) >= SIP_FRAME:
                self._push(self._pending[:SIP_FRAME])
                self._pending = self._pending[SIP_FRAME:]
            return
        self._push(pcm)

    def _push(self, pcm8: np.ndarray) -> None:
        self._queue.append(pcm8)
        if len(self._queue) > self.depth:
            self._queue.popleft()
            self.stats.overruns += 1

    async def run(self, rtp: RtpEndpoint) -> None:
        """Send one frame to the phone every 20 ms until the endpoint closes.

        Frames queued before the phone answered are stale: they are dropped. Afterwards, a
        queue that never fell below two frames for a second gives one frame up (the app's
        clock runs faster than ours), so the delay stays at one frame.
        """
        self._queue.clear()
        lowest = self.depth
        clock = FrameClock(PTIME)
        async for tick in clock:
            if rtp.closed:
                return
            self.stats.frames += 1
            if tick.lateness > PTIME / 4:
                self.stats.late += 1
            lowest = min(lowest, len(self._queue))
            if tick.index % 50 == 49:
                if lowest >= 2:
                    self._queue.popleft()
                    self.stats.overruns += 1
                lowest = self.depth
            if self._queue:
                frame = self._queue.popleft()
            else:
                frame = self._silence
                self.stats.underruns += 1
            rtp.write_frame(frame)


async def cancel_quietly(task: asyncio.Task | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
