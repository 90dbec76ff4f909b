"""Resampling between the legs' rates for 20 ms frames: polyphase FIR, stateful, numpy only.

Rates in use: 48 kHz (Opus), 16 kHz (G.722), 8 kHz (G.711); every pair is an integer factor
(2, 3 or 6). One low-pass per factor (Kaiser-windowed sinc, 16 taps per phase, cut-off at 45 % of
the lower rate: 3.6 kHz for 8 kHz, 7.2 kHz for 16 kHz) serves both directions. Each frame costs
one (output x taps-per-phase) matrix product, with no threads (PyAV's resampler starts a thread
per core) and no per-sample Python.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided

PHASE_TAPS = 16
_CUTOFF = 0.45      # of the lower rate


@functools.lru_cache(maxsize=None)
def _filters(factor: int) -> tuple[np.ndarray, np.ndarray]:
    """(upsampling phases, downsampling taps) of the low-pass for `factor`."""
    taps = PHASE_TAPS * factor
    cutoff = _CUTOFF / factor                # in cycles per sample of the higher rate
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, 8.0)
    h /= h.sum()
    # Upsampling phase p computes y[F*n+p] = sum_k x[n-k] * h[F*k+p]; columns are the phases,
    # rows ordered oldest sample first to match sliding windows.
    up = (h.reshape(PHASE_TAPS, factor) * factor)[::-1].astype(np.float32)
    down = h[::-1].astype(np.float32)
    up.setflags(write=False)
    down.setflags(write=False)
    return up, down


def _to_int16(y: np.ndarray) -> np.ndarray:
    np.rint(y, out=y)
    np.clip(y, -32768, 32767, out=y)
    return y.astype(np.int16)


class _Filter:
    """Input history and the frame in one float32 buffer, reused while the frame size stays:
    fewer numpy calls a frame than concatenating (~14 against ~20 us at 48 -> 8 kHz here)."""

    def __init__(self, history: int) -> None:
        self._keep = history
        self._buffer = np.zeros(history, np.float32)

    def _load(self, pcm: np.ndarray) -> np.ndarray:
        keep, buffer = self._keep, self._buffer
        if len(buffer) != keep + len(pcm):
            old = buffer[len(buffer) - keep:].copy()
            buffer = self._buffer = np.empty(keep + len(pcm), np.float32)
            buffer[:keep] = old
        else:
            buffer[:keep] = buffer[len(pcm):]
        buffer[keep:] = pcm
        return buffer


class Downsampler(_Filter):
    """By an integer `factor` (48 -> 8 kHz: 6, 48 -> 16 kHz: 3, 16 -> 8 kHz: 2); the input
    length must be a multiple of it (every 20 ms frame is)."""

    def __init__(self, factor: int = 6) -> None:
        self.factor = factor
        _, self._taps = _filters(factor)
        super().__init__(len(self._taps) - 1)

    def __call__(self, pcm: np.ndarray) -> np.ndarray:
        x = self._load(pcm)
        windows = as_strided(x[self.factor - 1:], shape=(len(pcm) // self.factor, len(self._taps)),
                             strides=(x.strides[0] * self.factor, x.strides[0]), writeable=False)
        return _to_int16(windows @ self._taps)


class Upsampler(_Filter):
    """By an integer `factor` (8 -> 48 kHz: 6, 16 -> 48 kHz: 3, 8 -> 16 kHz: 2)."""

    def __init__(self, factor: int = 6) -> None:
        self._phases, _ = _filters(factor)
        super().__init__(PHASE_TAPS - 1)

    def __call__(self, pcm: np.ndarray) -> np.ndarray:
        x = self._load(pcm)
        windows = as_strided(x, shape=(len(pcm), PHASE_TAPS), strides=(x.strides[0], x.strides[0]),
                             writeable=False)
        return _to_int16((windows @ self._phases).reshape(-1))


def resampler(source: int, target: int) -> Callable[[np.ndarray], np.ndarray]:
    """A stateful converter of 20 ms frames from `source` Hz to `target` Hz (one per stream)."""
    if source == target:
        return lambda pcm: pcm
    if source % target == 0:
        return Downsampler(source // target)
    if target % source == 0:
        return Upsampler(target // source)
    raise ValueError(f"no integer factor between {source} Hz and {target} Hz")


class Resampling:
    """One stream's resampler, made anew when the rates change (a codec fixed late, a transfer)."""

    def __init__(self) -> None:
        self._rates = (0, 0)
        self._convert: Callable[[np.ndarray], np.ndarray] = lambda pcm: pcm

    def __call__(self, pcm: np.ndarray, source: int, target: int) -> np.ndarray:
        if (source, target) != self._rates:
            self._rates, self._convert = (source, target), resampler(source, target)
        return self._convert(pcm)
