"""48 kHz <-> 8 kHz resampling for 20 ms frames: polyphase FIR, stateful, numpy only.

One low-pass (Kaiser-windowed sinc, cut-off 3.6 kHz at 48 kHz) serves both directions. Each
20 ms frame costs a (160 x taps/6) matrix product, with no threads (PyAV's resampler starts a
thread per core) and no per-sample Python.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FACTOR = 6          # 48000 / 8000
TAPS = 96           # 16 per phase
_CUTOFF = 3600.0 / 48000.0


def _lowpass() -> np.ndarray:
    n = np.arange(TAPS) - (TAPS - 1) / 2
    h = 2 * _CUTOFF * np.sinc(2 * _CUTOFF * n) * np.kaiser(TAPS, 8.0)
    return h / h.sum()


_H = _lowpass()
# Upsampling phase p computes y[6n+p] = sum_k x[n-k] * h[6k+p]; columns are the phases,
# rows ordered oldest sample first to match sliding windows.
_UP = (_H.reshape(TAPS // FACTOR, FACTOR) * FACTOR)[::-1]
_DOWN = _H[::-1].copy()


def _to_int16(y: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


class Downsampler:
    """48 kHz -> 8 kHz, 960 samples in, 160 out (any multiple of 6 works)."""

    def __init__(self) -> None:
        self._history = np.zeros(TAPS - 1, np.float32)

    def __call__(self, pcm48: np.ndarray) -> np.ndarray:
        x = np.concatenate([self._history, pcm48.astype(np.float32)])
        self._history = x[-(TAPS - 1):]
        windows = sliding_window_view(x, TAPS)[FACTOR - 1::FACTOR]
        return _to_int16(windows @ _DOWN)


class Upsampler:
    """8 kHz -> 48 kHz, 160 samples in, 960 out."""

    def __init__(self) -> None:
        self._history = np.zeros(TAPS // FACTOR - 1, np.float32)

    def __call__(self, pcm8: np.ndarray) -> np.ndarray:
        x = np.concatenate([self._history, pcm8.astype(np.float32)])
        self._history = x[-(TAPS // FACTOR - 1):]
        windows = sliding_window_view(x, TAPS // FACTOR)
        return _to_int16((windows @ _UP).reshape(-1))
