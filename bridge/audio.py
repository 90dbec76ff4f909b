"""Audio for app-side legs: paced aiortc tracks (tone, WAV), a gate, a WAV recorder, tone analysis.

Frames are 20 ms of 16-bit mono PCM at 48 kHz unless said otherwise.
"""

from __future__ import annotations

import fractions
import wave
from typing import TYPE_CHECKING, Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .clock import FrameClock

if TYPE_CHECKING:
    from .rtcdirect import DirectSender

RATE = 48000
PTIME = 0.020
FRAME = int(RATE * PTIME)
TIME_BASE = fractions.Fraction(1, RATE)

Sink = Callable[[np.ndarray, int], None]    # (int16 mono samples of one frame, sample rate)


def make_frame(samples: np.ndarray, pts: int, rate: int = RATE) -> av.AudioFrame:
    """An av.AudioFrame of int16 mono `samples`."""
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, rate)
    return frame


def frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """int16 mono samples of a decoded frame (first channel of packed s16)."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.name != "s16":
        raise ValueError(f"unexpected sample format {frame.format.name}")
    return data.reshape(-1, channels)[:, 0].copy() if channels > 1 else data.reshape(-1).copy()


def tone(freq: float, seconds: float, rate: int = RATE, dbfs: float = -10.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    amplitude = 32767 * 10 ** (dbfs / 20)
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def looped(samples: np.ndarray, start: int, size: int) -> np.ndarray:
    """`size` of `samples` from `start`, the sound looped (a frame may wrap past its end)."""
    return np.take(samples, np.arange(start, start + size), mode="wrap")


def read_wav(path: str, rate: int = RATE) -> np.ndarray:
    """A 16-bit PCM WAV file as int16 mono at `rate` (mixed down and resampled)."""
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV files are supported")
        channels, source_rate = w.getnchannels(), w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
    if source_rate == rate or len(data) == 0:
        return data.astype(np.int16)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(make_frame(data, 0, source_rate))]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.int16) if out else np.zeros(0, np.int16)


def write_wav(path: str, samples: np.ndarray, rate: int = RATE) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


class SamplesTrack(MediaStreamTrack):
    """Plays int16 mono samples at 48 kHz, paced in real time, then silence (or loops)."""

    kind = "audio"

    def __init__(self, samples: np.ndarray, loop: bool = False) -> None:
        super().__init__()
        self._samples = samples.astype(np.int16)
        self._loop = loop and len(samples) > 0
        self._pos = 0
        self._clock = FrameClock(PTIME)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        tick = await anext(self._clock)
        self._pos += FRAME * tick.skipped
        if self._loop:
            self._pos %= len(self._samples)
        chunk = self._samples[self._pos:self._pos + FRAME]
        self._pos += FRAME
        if len(chunk) < FRAME:
            if self._loop:
                self._pos = FRAME - len(chunk)
                chunk = np.concatenate([chunk, self._samples[:self._pos]])
            else:
                chunk = np.concatenate([chunk, np.zeros(FRAME - len(chunk), np.int16)])
        return make_frame(chunk, tick.index * FRAME)


class ToneTrack(SamplesTrack):
    """A continuous sine tone."""

    def __init__(self, freq: float, dbfs: float = -10.0) -> None:
        # a whole number of periods in one second, so looping is seamless
        super().__init__(tone(freq, 1.0, dbfs=dbfs), loop=True)


class WavTrack(SamplesTrack):
    """A WAV file, played once (or looped)."""

    def __init__(self, path: str, loop: bool = False) -> None:
        super().__init__(read_wav(path), loop=loop)


class GatedTrack(MediaStreamTrack):
    """Sends silence until opened (the call is connected) and while muted or held.

    The source is not read before the gate opens, so a WAV starts at its beginning on answer.
    A source may give encoded packets (`av.Packet`, as the bridge's relay does): they pass as they
    are, their timestamps moved on to follow the gate's own; muted, they are not sent at all.
    Such a source may also hand them over as they arrive (`push`, given to a source that has a
    `push` attribute), when the sender sends directly (`direct`, a `rtcdirect.DirectSender`).
    """

    kind = "audio"

    def __init__(self, source: MediaStreamTrack | None) -> None:
        super().__init__()
        self.source = source
        self.open = False
        self.muted = False
        self.held = False          # the call is on hold by this side: silence, like muted
        self._clock = FrameClock(PTIME)
        self._pts = 0
        self._packet_offset: int | None = None
        self._rate = RATE
        self.direct: DirectSender | None = None
        if hasattr(source, "push"):
            source.push = self.push

    async def recv(self) -> av.AudioFrame | av.Packet:
        if self.open and self.source is not None:
            try:
                frame = await self.source.recv()
            except Exception:
                self.source = None
                return await self.recv()
            if isinstance(frame, av.Packet):
                return await self.recv() if self.silent else self._follow(frame)
            self._rate = frame.sample_rate
            if self.silent:
                frame = make_frame(np.zeros(frame.samples, np.int16), 0, frame.sample_rate)
            frame.pts = self._pts * frame.sample_rate // RATE
            self._pts += frame.samples * RATE // frame.sample_rate
            return frame
        await anext(self._clock)
        if self.source is not None:       # silence at the source's own rate, kept if it fails:
            self._rate = getattr(self.source, "rate", RATE)   # the sender's encoder is set up for it
        rate = self._rate
        frame = make_frame(np.zeros(int(rate * PTIME), np.int16), self._pts * rate // RATE, rate)
        self._pts += FRAME
        return frame

    @property
    def silent(self) -> bool:
        return self.muted or self.held

    def _follow(self, packet: av.Packet) -> av.Packet:
        """Shift an encoded packet's pts to continue this track's timeline (gaps kept)."""
        packet.pts = self._follow_pts(packet.pts, packet.time_base.denominator // packet.time_base.numerator)
        return packet

    def _follow_pts(self, pts: int, per_second: int) -> int:
        if self._packet_offset is None:
            self._packet_offset = self._pts * per_second // RATE - pts
        pts += self._packet_offset
        self._pts = (pts * RATE) // per_second + FRAME
        return pts

    def push(self, payload: bytes, pts: int) -> bool:
        """Send the source's encoded packet (`pts` on an 8 kHz clock, whatever the codec's) now,
        not when the sender next asks; False if it cannot (the gate is shut, or no direct sender
        runs), so the source keeps it for `recv`. Muted or held, it is taken and dropped."""
        direct = self.direct
        if direct is None or not direct.running or not self.open or self.source is None:
            return False
        if not (self.muted or self.held):
            direct.send(payload, self._follow_pts(pts, 8000) * direct.clock_rate // 8000)
        return True

    def stop(self) -> None:
        super().stop()
        if self.source is not None:
            self.source.stop()
        self.source = self.direct = None      # what this call's gate led to is let go


class WavRecorder:
    """A sink that collects received samples (at `rate`; 8 and 16 kHz frames are resampled) and
    writes them to a WAV file on close()."""

    def __init__(self, path: str | None = None, rate: int = RATE) -> None:
        self.path = path
        self.rate = rate
        self._chunks: list[np.ndarray] = []
        self._convert: Callable[[np.ndarray], np.ndarray] | None = None

    def __call__(self, samples: np.ndarray, rate: int = RATE) -> None:
        if rate != self.rate:
            if self._convert is None:
                from .resample import resampler
                self._convert = resampler(rate, self.rate)     # ValueError: no integer factor
            samples = self._convert(samples)
        self._chunks.append(samples)

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)

    def close(self) -> None:
        if self.path:
            write_wav(self.path, self.samples, self.rate)


def tone_analysis(samples: np.ndarray, rate: int = RATE) -> tuple[float, float]:
    """(dominant frequency in Hz, SNR in dB of that tone against everything else).

    Uses a Hann window; the tone's energy is the peak bin +-3 bins.
    """
    x = samples.astype(np.float64)
    if len(x) < rate // 10:
        raise ValueError("need at least 100 ms of audio")
    x -= x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    spectrum[:int(50 * len(x) / rate)] = 0.0  # ignore DC and hum below 50 Hz
    peak = int(np.argmax(spectrum))
    band = spectrum[max(peak - 3, 0):peak + 4].sum()
    rest = spectrum.sum() - band
    snr = 10 * np.log10(band / rest) if rest > 0 else 200.0
    if band == 0:
        return 0.0, -200.0
    return peak * rate / len(x), float(snr)
