"""Audio helpers for the test bed: make test tones, read WAVs, find tones by FFT."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


def tone_samples(freq: float, seconds: float, rate: int = 8000, dbfs: float = -13.0) -> np.ndarray:
    """A sine as int16 samples; ``dbfs`` is the peak level relative to full scale."""
    n = int(round(seconds * rate))
    amp = 32767.0 * 10.0 ** (dbfs / 20.0)
    t = np.arange(n, dtype=np.float64) / rate
    return np.round(amp * np.sin(2.0 * np.pi * freq * t)).astype(np.int16)


def write_wav(path, samples: np.ndarray, rate: int = 8000) -> Path:
    """Write mono 16-bit PCM."""
    path = Path(path)
    data = np.asarray(samples)
    if data.dtype != np.int16:
        data = np.clip(np.round(data), -32768, 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.astype("<i2").tobytes())
    return path


def tone_wav(path, freq: float, seconds: float, rate: int = 8000, dbfs: float = -13.0) -> Path:
    """Write a mono 16-bit WAV holding a sine of ``freq`` Hz at ``dbfs`` (peak) for ``seconds``."""
    return write_wav(path, tone_samples(freq, seconds, rate, dbfs), rate)


def silence_wav(path, seconds: float, rate: int = 8000) -> Path:
    return write_wav(path, np.zeros(int(round(seconds * rate)), dtype=np.int16), rate)


def read_wav(path) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM WAV -> (float samples in [-1, 1), rate). Multi-channel is averaged."""
    with wave.open(str(path), "rb") as w:
        rate = w.getframerate()
        ch = w.getnchannels()
        width = w.getsampwidth()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise ValueError(f"{path}: only 16-bit PCM supported, got {width * 8}-bit")
    data = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    if ch > 1:
        data = data.reshape(-1, ch).mean(axis=1)
    return data, rate


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level in dBFS (float samples in [-1, 1]); -inf for digital silence."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(x * x)))
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def active_part(samples: np.ndarray, rate: int, frame_ms: int = 20, threshold_dbfs: float = -50.0) -> np.ndarray:
    """Cut leading/trailing frames quieter than ``threshold_dbfs`` (audio starts late in calls)."""
    x = np.asarray(samples, dtype=np.float64)
    n = max(1, rate * frame_ms // 1000)
    frames = len(x) // n
    if frames == 0:
        return x
    levels = [rms_dbfs(x[i * n:(i + 1) * n]) for i in range(frames)]
    loud = [i for i, lv in enumerate(levels) if lv > threshold_dbfs]
    if not loud:
        return x[:0]
    return x[loud[0] * n:(loud[-1] + 1) * n]


def dominant_frequency(samples, rate: int, guard_bins: int = 3) -> tuple[float, float]:
    """Strongest frequency in ``samples`` and its SNR.

    Hann-windowed real FFT; the peak bin (DC and the lowest bins excluded) is refined by
    parabolic interpolation of the log magnitude.  SNR = energy in the peak bin +- ``guard_bins``
    (the window's main lobe is +-2 bins) versus all the other bins except DC, in dB.
    Returns (freq_hz, snr_db); (0.0, -inf) for silence / too-short input.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.dtype.kind in "iu":
        x = x / 32768.0
    if x.size < 16:
        return 0.0, float("-inf")
    x = x - x.mean()
    spec = np.fft.rfft(x * np.hanning(x.size))
    power = (spec.real ** 2) + (spec.imag ** 2)
    lo = 2  # skip DC leakage
    if power[lo:].sum() <= 0:
        return 0.0, float("-inf")
    k = lo + int(np.argmax(power[lo:]))
    # parabolic interpolation on log magnitude for a sub-bin estimate
    delta = 0.0
    if 1 <= k < power.size - 1:
        a, b, c = (np.log(power[k - 1] + 1e-300), np.log(power[k] + 1e-300), np.log(power[k + 1] + 1e-300))
        denom = a - 2 * b + c
        if denom != 0:
            delta = 0.5 * (a - c) / denom
    freq = (k + delta) * rate / x.size
    s0, s1 = max(lo, k - guard_bins), min(power.size, k + guard_bins + 1)
    signal = power[s0:s1].sum()
    noise = power[lo:].sum() - signal
    if noise <= 0:
        return float(freq), float("inf")
    return float(freq), float(10.0 * np.log10(signal / noise))


def wav_dominant_frequency(path, skip_seconds: float = 0.0, trim_silence: bool = True) -> tuple[float, float]:
    """dominant_frequency() of a WAV file, optionally skipping the start and cutting silence."""
    data, rate = read_wav(path)
    data = data[int(skip_seconds * rate):]
    if trim_silence:
        data = active_part(data, rate)
    return dominant_frequency(data, rate)
