"""One direction of one call, measured from the packets received: loss, lateness and jitter on
the wire, burst latencies, the packets played out, PESQ."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .. import codecs
from ..resample import resampler
from .program import LATE_MS, Program, SIP_FRAME, SIP_RATE, Sender, TONE_DBFS


def _since(packets: list, t0: float) -> list:
    """Packets (arrival first) from 0.2 s before the programs started at `t0`."""
    return [p for p in packets if p[0] >= t0 - 0.2]


def _narrowband(codec: str) -> Callable[[bytes], np.ndarray]:
    """A decoder of one stream's payloads (in order) to 8 kHz samples, one per RTP timestamp unit
    (G.722's 16 kHz audio downsampled), for the narrowband analysis and PESQ."""
    spec = codecs.get(codec)
    decode = spec.decoder()
    if spec.sample_rate == SIP_RATE:
        return decode
    down = resampler(spec.sample_rate, SIP_RATE)
    return lambda payload: down(decode(payload))


def _codec_alone(codec: str, program: Program) -> np.ndarray:
    """A side's speech through the SIP leg's codec alone, decoded to 8 kHz: what that side sends,
    at the codec's own rate (an app's wideband speech goes into G.722 wideband; the far end's
    narrowband speech stays narrowband)."""
    spec = codecs.get(codec)
    encode, decode = spec.encoder(), _narrowband(codec)
    if program.rate < spec.sample_rate:           # narrowband into G.722, as a SIP endpoint does it
        up, speech = resampler(SIP_RATE, spec.sample_rate), program.speech8k
        frames = [up(speech[i:i + SIP_FRAME]) for i in range(0, len(speech) - SIP_FRAME + 1, SIP_FRAME)]
    else:
        speech, size = program.speech_at(spec.sample_rate), spec.sample_rate // 50
        frames = [speech[i:i + size] for i in range(0, len(speech) - size + 1, size)]
    return np.concatenate([decode(encode(f)) for f in frames] or [np.zeros(0, np.int16)])


def _playout(packets: list[tuple[float, int, int, bytes]], codec: str) -> np.ndarray:
    """G.711 or G.722 packets (arrival, seq, ts, payload) decoded (8 kHz) and placed by RTP timestamp."""
    if not packets:
        return np.zeros(0, np.int16)
    origin = packets[0][2]
    offsets = [(ts - origin) & 0xFFFFFFFF for _, _, ts, _ in packets]
    end = max(o + len(p[3]) for o, p in zip(offsets, packets) if o < 1 << 31)
    out = np.zeros(end, np.int16)
    decode = _narrowband(codec)
    for o, (_, _, _, payload) in zip(offsets, packets):
        pcm = decode(payload)
        if o < 1 << 31:
            out[o:o + len(pcm)] = pcm[:end - o]
    return out


def _wire_stats(packets: list[tuple[float, int, int]], rate: int, t0: float, duration: float) -> dict:
    """Loss, frames later than LATE_MS, RFC 3550 jitter, from (arrival, seq, ts) of one call.

    Only packets of the program (t0 .. t0 + duration) count. A packet is late when its transit
    (arrival - RTP time) exceeds the call's best transit by more than LATE_MS."""
    pk = [p for p in packets if t0 <= p[0] <= t0 + duration]
    if not pk:
        return {"expected": 0, "received": 0, "lost": 0, "late_40ms": 0}
    seqs = np.unwrap(np.array([p[1] for p in pk], dtype=float), period=65536)
    ts = np.unwrap(np.array([p[2] for p in pk], dtype=float), period=2 ** 32)
    arrival = np.array([p[0] for p in pk])
    expected = int(seqs.max() - seqs.min() + 1)
    received = len(np.unique(seqs))
    transit = arrival - ts / rate
    excess = 1000 * (transit - transit.min())
    d = np.abs(np.diff(transit)) * rate
    jitter = 0.0
    for x in d:
        if x < rate:
            jitter += (x - jitter) / 16
    return {"expected": expected, "received": received, "lost": max(expected - received, 0),
            "late_40ms": int((excess > LATE_MS).sum()), "max_transit_excess_ms": round(float(excess.max()), 2),
            "late_t_abs": arrival[excess > LATE_MS].tolist(),
            "transit_excess_p99_ms": round(float(np.percentile(excess, 99)), 2),
            "jitter_ms": round(1000 * jitter / rate, 3)}


def _latencies(stream: list, rate: int, sender: Sender, program: Program, t0: float) -> dict:
    """Burst onsets in a received stream [(arrival, seq, ts, samples)], matched to the sender's
    burst send times. Each sample's time is its packet's arrival plus its offset in the packet."""
    stream = sorted(stream, key=lambda s: (s[0], s[2]))
    sent = sorted(sender.burst_sent.items())
    out: dict = {"bursts_sent": len(sent), "bursts_detected": 0, "latencies_ms": [], "burst_times_s": []}
    if not stream or not sent:
        return out
    x = np.concatenate([s[3] for s in stream]).astype(np.int32)
    times = np.concatenate([s[0] + np.arange(len(s[3])) / rate for s in stream])
    gate = t0 + program.burst_window_start
    amplitude = 32767 * 10 ** (TONE_DBFS / 20)
    loud = np.flatnonzero((np.abs(x) > 0.3 * amplitude) & (times >= gate))
    if len(loud) == 0:
        return out
    quiet_gap = int(0.2 * rate)
    starts = loud[np.concatenate([[True], np.diff(loud) > quiet_gap])]
    onsets = []
    win = int(0.02 * rate)
    for i in starts:
        seg = x[i:i + 2 * win].astype(float)
        if len(seg) < win:
            continue
        spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
        f = np.argmax(spec) * rate / len(seg)
        if abs(f - program.tone_hz) <= 0.15 * program.tone_hz:
            onsets.append(float(times[i]))
    out["bursts_detected"] = len(onsets)
    send_times = [t for _, t in sent]
    if len(onsets) == len(send_times):
        pairs = list(zip(onsets, send_times))                  # every burst arrived: in order
    else:
        pairs = []
        for a in onsets:                                       # else the latest burst sent before it
            earlier = [t for t in send_times if t <= a]
            if earlier:
                pairs.append((a, earlier[-1]))
    out["latencies_ms"] = [round(1000 * (a - s), 2) for a, s in pairs]
    out["burst_times_s"] = [round(s - t0, 3) for _, s in pairs]
    out["latency_t_abs"] = [s for _, s in pairs]
    return out


def _pesq(ref: np.ndarray, deg: np.ndarray) -> dict:
    """PESQ NB MOS-LQO of `deg` against `ref` (8 kHz), after aligning by cross-correlation."""
    import pesq
    if len(deg) < len(ref) // 2:
        return {"mos": None, "error": f"only {len(deg) / SIP_RATE:.2f} s recorded"}
    r = ref.astype(np.float64)
    d = deg.astype(np.float64)
    search = d[:len(r) + 3 * SIP_RATE]
    n = 1 << int(math.ceil(math.log2(len(search) + len(r))))
    corr = np.fft.irfft(np.fft.rfft(search, n) * np.conj(np.fft.rfft(r, n)), n)
    lag = int(np.argmax(corr[:len(search)]))
    aligned = d[lag:lag + len(r)]
    if len(aligned) < len(r):
        aligned = np.concatenate([aligned, np.zeros(len(r) - len(aligned))])
    norm = float(np.sqrt(np.sum(r ** 2) * np.sum(aligned ** 2))) or 1.0
    try:
        mos = float(pesq.pesq(SIP_RATE, r.astype(np.float32), aligned.astype(np.float32), "nb"))
    except Exception as exc:   # noqa: BLE001 - pesq raises its own error types
        return {"mos": None, "error": f"{type(exc).__name__}: {exc}", "lag_ms": lag / 8}
    return {"mos": round(mos, 3), "lag_ms": round(lag / 8, 2),
            "correlation": round(float(corr[lag]) / norm, 4)}
