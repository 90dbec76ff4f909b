"""Ringback: what an app caller hears while the desk phone rings (`bridge.ringback`, and per
route `routes.to_sip[].ringback`).

A national ringing tone, one cycle of which is made once per sample rate and looped, at a peak
of -19 dBFS (frequencies and cadences: ITU-T E.180 Supplement 2, "Various tones used in national
networks"; the European one: ETSI TR 101 041-2 / ETSI ES 201 970):

    us   440 + 480 Hz                       2 s on, 4 s off
    uk   400 + 450 Hz                       0.4 s on, 0.2 s off, 0.4 s on, 2 s off
    eu   425 Hz (ETSI/CEPT)                 1 s on, 4 s off
    jp   400 Hz amplitude-modulated by 16 Hz (85 % depth)    1 s on, 2 s off

or a WAV file (16-bit PCM of any rate and channel count: mixed down and resampled once), looped.
A WAV that cannot be read when a call needs it falls back to `us`, logged once per file.
"""

from __future__ import annotations

import logging
import wave
from dataclasses import dataclass

import numpy as np

from .audio import read_wav
from .config import RINGBACK_TONES

log = logging.getLogger("bridge.call")

LEVEL_DBFS = -19.0
JP_DEPTH = 0.85       # E.180 names the modulating frequency, not the depth


@dataclass(frozen=True)
class Tone:
    """Frequencies sounded together, an optional amplitude modulation, and the cadence."""

    frequencies: tuple[float, ...]
    cadence: tuple[float, ...]          # seconds: on, off, on, off, ...
    modulation: float = 0.0             # Hz of amplitude modulation (0: none)

    def cycle(self, rate: int) -> np.ndarray:
        """One whole cadence cycle as int16 samples at `rate`."""
        peak = 32767 * 10 ** (LEVEL_DBFS / 20)
        parts = []
        for n, seconds in enumerate(self.cadence):
            count = round(seconds * rate)
            if n % 2:
                parts.append(np.zeros(count))
                continue
            t = np.arange(count) / rate
            sound = sum(np.sin(2 * np.pi * f * t) for f in self.frequencies) / len(self.frequencies)
            if self.modulation:
                sound = sound * (1 + JP_DEPTH * np.sin(2 * np.pi * self.modulation * t)) / (1 + JP_DEPTH)
            parts.append(sound)
        return (np.concatenate(parts) * peak).astype(np.int16)


TONES: dict[str, Tone] = {
    "us": Tone((440.0, 480.0), (2.0, 4.0)),
    "uk": Tone((400.0, 450.0), (0.4, 0.2, 0.4, 2.0)),
    "eu": Tone((425.0,), (1.0, 4.0)),
    "jp": Tone((400.0,), (1.0, 2.0), modulation=16.0),
}
assert set(TONES) == set(RINGBACK_TONES), "config.RINGBACK_TONES names the tones of this module"


class Ringback:
    """One ringback (a tone name or a WAV path): its samples at each rate, made once."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._cycles: dict[int, np.ndarray] = {}

    def samples(self, rate: int) -> np.ndarray:
        """One cycle at `rate` (int16 mono), to be looped. Raises OSError/ValueError for a bad WAV."""
        cycle = self._cycles.get(rate)
        if cycle is None:
            tone = TONES.get(self.spec)
            cycle = tone.cycle(rate) if tone is not None else read_wav(self.spec, rate)
            if not len(cycle):
                raise ValueError(f"{self.spec} holds no audio")
            self._cycles[rate] = cycle
        return cycle

    def __repr__(self) -> str:
        return f"Ringback({self.spec!r})"


class Ringbacks:
    """The ringbacks of a daemon, each made once; a broken WAV gives `us` (logged once)."""

    def __init__(self) -> None:
        self._known: dict[str, Ringback] = {}
        self._broken: set[str] = set()

    def get(self, spec: str | None, rate: int) -> np.ndarray:
        spec = spec or "us"
        if spec in self._broken:
            spec = "us"
        ringback = self._known.setdefault(spec, Ringback(spec))
        try:
            return ringback.samples(rate)
        except (OSError, ValueError, EOFError, wave.Error) as exc:
            log.error("ringback %s cannot be read (%s): playing the us tone instead", spec, exc)
            self._broken.add(spec)
            return self.get("us", rate)
