"""The program each call plays: speech for PESQ, then tone bursts, both ways; its senders."""

from __future__ import annotations

import fractions
import logging
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .. import g711, rtcprobe
from ..audio import FRAME, RATE, make_frame, read_wav
from ..clock import FrameClock
from ..sdk import Call

log = logging.getLogger("bridge.loadtest")

PTIME = 0.020
SIP_RATE = 8000
SIP_FRAME = 160
APP_TONE_HZ = 1000.0          # app -> SIP bursts
FAR_TONE_HZ = 440.0           # SIP -> app bursts
TONE_DBFS = -16.0
SPEECH_RMS_DBFS = -20.0
LEAD_S = 0.5                  # program starts this long after both ends are connected
SPEECH_MAX_S = 6.0
NO_SPEECH_S = 2.5             # --pesq-calls 0: this much silence instead of speech
GAP_FRAMES = 50               # 1 s of silence between speech and bursts
BURST_FRAMES = 5              # 100 ms
BURST_PERIOD_FRAMES = 25      # every 500 ms
TAIL_FRAMES = 25              # the last 500 ms stay silent
LATE_MS = 40.0
MIN_DURATION = 8.0

SPEECH_TEXT = {
    "app": "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background.",
    "far": "Rice is often served in round bowls. The juice of lemons makes fine punch.",
}
# voices whose speech keeps PESQ NB high through G.711 alone (~4.35; espeak's default male
# voices only reach ~4.0 through G.711, which would hide what the bridge adds)
SPEECH_VOICE = {"app": "en-us+f3", "far": "en-us+f2"}


class LoadTestError(Exception):
    """The stack or a tool is not there: printed as one line, exit status 2."""


# --- audio programs ----------------------------------------------------------------------------

def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst or len(x) == 0:
        return x.astype(np.int16)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=dst)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(make_frame(x.astype(np.int16), 0, src))]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.int16) if out else np.zeros(0, np.int16)


def speech(which: str, work: Path) -> np.ndarray:
    """espeak-ng speech at 48 kHz, trimmed of silence, at SPEECH_RMS_DBFS, at most SPEECH_MAX_S."""
    path = work / f"speech-{which}.wav"
    try:
        subprocess.run(["espeak-ng", "-v", SPEECH_VOICE[which], "-s", "160", "-w", str(path),
                        SPEECH_TEXT[which]], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise LoadTestError(f"espeak-ng failed: {exc}") from None
    x = read_wav(str(path), RATE).astype(np.float64)
    loud = np.flatnonzero(np.abs(x) > 0.01 * 32767)
    if len(loud) == 0:
        raise LoadTestError("espeak-ng produced silence")
    x = x[max(loud[0] - RATE // 20, 0):loud[-1] + RATE // 20]
    x = x[:int(SPEECH_MAX_S * RATE)]
    rms = math.sqrt(float(np.mean(x ** 2))) or 1.0
    x *= 32767 * 10 ** (SPEECH_RMS_DBFS / 20) / rms
    return np.clip(x, -32767, 32767).astype(np.int16)


@dataclass
class Program:
    """What one side sends, by 20 ms frame index from the program's start."""

    rate: int
    samples: np.ndarray           # the whole program (int16 mono at `rate`)
    speech_frames: int
    bursts: list[int]             # first frame of each burst
    tone_hz: float

    @property
    def frame(self) -> int:
        return int(self.rate * PTIME)

    @property
    def frames(self) -> int:
        return len(self.samples) // self.frame

    def chunk(self, n: int) -> np.ndarray:
        f = self.frame
        if n < 0 or n >= self.frames:
            return np.zeros(f, np.int16)
        return self.samples[n * f:(n + 1) * f]

    @property
    def speech8k(self) -> np.ndarray:
        """The speech as it should arrive on the narrow-band side: the PESQ reference."""
        return self.speech_at(SIP_RATE)

    def speech_at(self, rate: int) -> np.ndarray:
        """The speech this side sends, at `rate`."""
        s = self.samples[:self.speech_frames * self.frame]
        return s if self.rate == rate else _resample(s, self.rate, rate)

    @property
    def burst_window_start(self) -> float:
        """Seconds from the program start after which only bursts are sent."""
        return (self.speech_frames + GAP_FRAMES // 2) * PTIME


def build_program(speech48: np.ndarray, rate: int, tone_hz: float, duration: float) -> Program:
    frame = int(rate * PTIME)
    total = int(round(duration / PTIME))
    sp = speech48 if rate == RATE else _resample(speech48, RATE, rate)
    speech_frames = min(math.ceil(len(sp) / frame), total - GAP_FRAMES - BURST_PERIOD_FRAMES - TAIL_FRAMES)
    if speech_frames < 100:
        raise LoadTestError(f"--duration {duration:g} s leaves no room for speech and bursts")
    x = np.zeros(total * frame, np.int16)
    sp = sp[:speech_frames * frame]
    x[:len(sp)] = sp
    t = np.arange(BURST_FRAMES * frame) / rate
    burst = (32767 * 10 ** (TONE_DBFS / 20) * np.sin(2 * np.pi * tone_hz * t)).astype(np.int16)
    ramp = min(frame // 4, len(burst) // 2)          # no click at the end of a burst
    burst[-ramp:] = (burst[-ramp:] * np.linspace(1, 0, ramp)).astype(np.int16)
    bursts = []
    n = speech_frames + GAP_FRAMES
    while n + BURST_FRAMES <= total - TAIL_FRAMES:
        x[n * frame:(n + BURST_FRAMES) * frame] = burst
        bursts.append(n)
        n += BURST_PERIOD_FRAMES
    return Program(rate, x, speech_frames, bursts, tone_hz)


class Sender:
    """One side's program on its own clock: silence until `t0`, then the program frame by frame.

    Remembers when each burst's first frame was handed to the transport (loop time)."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.t0: float | None = None
        self.n = -1
        self.burst_sent: dict[int, float] = {}     # burst index -> loop time
        self.late_ticks = 0
        self.ticks = 0
        self._next_burst = 0

    def next(self, now: float, skipped: int, lateness: float, program: Program | None = None) -> np.ndarray:
        """The frame for this tick; from `program` if given (the same program at another rate)."""
        self.ticks += 1
        program = program or self.program
        if lateness > PTIME / 4:
            self.late_ticks += 1
        if self.t0 is None or now < self.t0 - PTIME / 2:
            return np.zeros(program.frame, np.int16)
        self.n += 1 + (skipped if self.n >= 0 else 0)
        bursts = self.program.bursts
        while self._next_burst < len(bursts) and bursts[self._next_burst] <= self.n:
            if self.n < bursts[self._next_burst] + BURST_FRAMES:
                self.burst_sent[self._next_burst] = now
            self._next_burst += 1
        return program.chunk(self.n)


class ProgramTrack(MediaStreamTrack):
    """The app side's outgoing audio, paced by its own FrameClock: 48 kHz, or the 8 kHz copy
    of the program when the leg speaks G.711 (as a browser would: aiortc's G.711 encoder holds
    a 48 kHz frame back 20 ms in its resampler, which is the endpoint's delay, not the bridge's)."""

    kind = "audio"

    def __init__(self, sender: Sender, narrow: Program, codec: Callable[[], str]) -> None:
        super().__init__()
        self.sender = sender
        self.narrow = narrow
        self.codec = codec
        self._clock = FrameClock(PTIME)

    @property
    def rate(self) -> int:
        """The rate of this track's frames (the SDK's gate sends its silence at this rate too)."""
        return SIP_RATE if self.codec() in g711.CODECS else RATE

    async def recv(self) -> av.AudioFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        tick = await anext(self._clock)
        if self.rate == SIP_RATE:          # G.711: encoded here, a table look-up (as bridge's relay)
            pcm = self.sender.next(tick.now, tick.skipped, tick.lateness, self.narrow)
            packet = av.Packet(g711.encode(self.codec(), pcm))
            packet.pts, packet.time_base = tick.index * self.narrow.frame, fractions.Fraction(1, SIP_RATE)
            return packet
        pcm = self.sender.next(tick.now, tick.skipped, tick.lateness)
        return make_frame(pcm, tick.index * FRAME)


class LoadCall(Call):
    """An SDK call that hands its received frames over with their RTP timestamp (pts)."""

    def __init__(self, url: str, on_frame) -> None:
        super().__init__(url)
        self._on_frame = on_frame

    def _peer_frame(self, frame: av.AudioFrame) -> None:
        self._on_frame(frame)

    def hook_receiver(self, on_packet) -> bool:
        return rtcprobe.stamp_arrivals(self._pc, on_packet) if self._pc is not None else False

    async def inbound_stats(self) -> dict:
        # aiortc reports jitter in RTP timestamp units; 48 kHz as this load test always read it
        return await rtcprobe.inbound_stats(self._pc, 48) if self._pc is not None else {}
