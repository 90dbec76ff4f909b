"""What the run's packets tell: per call and direction, latency, loss, stalls, PESQ; the summary
and its targets."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform as _platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .. import __version__, codecs, g711
from ..resample import resampler
from .program import (
    APP_TONE_HZ, BURST_FRAMES, BURST_PERIOD_FRAMES, FAR_TONE_HZ, LATE_MS, PTIME, Program,
    SIP_FRAME, SIP_RATE, Sender, TONE_DBFS, _resample,
)

if TYPE_CHECKING:
    from .run import CallRecord

log = logging.getLogger("bridge.loadtest")

MEASURED_PATH = {
    "app_to_sip": (
        "from the load test's app-side 20 ms tick that hands a burst's first frame to aiortc (G.711: "
        "an encoded packet; Opus: a 48 kHz frame, encoded in aiortc's thread pool), its SRTP; loopback "
        "UDP; in the bridge, relay (G.711 app leg, bridge.media: relay): SRTP, the packet passed on "
        "(law converted by a table if needed); transcode (Opus, or bridge.media: transcode): SRTP, "
        "the receive jitter buffer (webrtc.receive_prefetch), the decode thread, 48->8 kHz FIR for "
        "Opus, the AppToSip FIFO drained on the bridge's 20 ms clock, G.711 encode; loopback UDP; to "
        "the packet's arrival at the far end's RTP socket, plus the onset's offset inside it"),
    "sip_to_app": (
        "from the far end's 20 ms tick that sends a burst's first G.711 packet; loopback UDP; in the "
        "bridge, relay: the packet passed on to aiortc's sender (SRTP); transcode: the RTP jitter "
        "buffer (sip.jitter_target), the SipToApp track on the bridge's 20 ms clock, 8->48 kHz FIR "
        "and Opus encode for Opus, SRTP; loopback UDP; to the packet's arrival in the load test's "
        "aiortc receiver after SRTP, plus the onset's offset inside the packet (Opus's 6.5 ms "
        "look-ahead shows here)"),
    "not_inside": (
        "both endpoints' playout jitter buffers are outside the measured path: they belong to the "
        "endpoints, not to the bridge. PESQ is scored on the received packets played out by RTP "
        "timestamp (a lost packet is silence): content and loss; lateness is the late-frames figure"),
}


class Analysis:
    """The load test's analysis of its calls (a part of `LoadTest`)."""

    # --- analysis ----------------------------------------------------------------------------
    def _analyse(self) -> dict:
        recs = sorted(self.records.values(), key=lambda r: r.index)
        per_call = {}
        for rec in recs:
            per_call[rec.index] = {
                "app_to_sip": self._direction_far(rec) if rec.t0 is not None else {},
                "sip_to_app": self._direction_app(rec) if rec.t0 is not None else {},
            }
        good = [r for r in recs if r.state == "done"]
        k = min(self.args.pesq_calls, len(good))
        chosen = {good[int(j * len(good) / k)].index for j in range(k)} if k else set()
        for rec in recs:
            if rec.index in chosen:
                per_call[rec.index]["app_to_sip"]["pesq"] = self._pesq_far(rec)
                per_call[rec.index]["sip_to_app"]["pesq"] = self._pesq_app(rec)
        return per_call

    def _direction_far(self, rec: CallRecord) -> dict:
        """app -> SIP, at the far end's socket: G.711 or G.722 packets."""
        out = self._packet_direction(rec, rec.far_packets, rec.codec, rec.app_sender, self.app_program)
        out["far_end_rtp"] = rec.far_stats
        return self._relative(out)

    def _packet_direction(self, rec: CallRecord, packets: list, codec: str, sender: Sender,
                        program: Program) -> dict:
        """Wire statistics and burst latencies of one direction received as G.711 or G.722 packets
        (arrival, seq, ts, payload), from shortly before the programs started."""
        assert rec.t0 is not None
        decode = _narrowband(codec or g711.PCMU)
        stream = [(a, seq, ts, decode(payload)) for a, seq, ts, payload in _since(packets, rec.t0)]
        out = _wire_stats([(a, seq, ts) for a, seq, ts, _ in stream], SIP_RATE, rec.t0, self.args.duration)
        out.update(_latencies(stream, SIP_RATE, sender, program, rec.t0))
        return out

    def _direction_app(self, rec: CallRecord) -> dict:
        """SIP -> app, at the app side's aiortc receiver: packets, decoded frames by pts (both on
        the RTP clock of the negotiated codec: 48 kHz Opus or 8 kHz G.711)."""
        assert rec.t0 is not None
        if rec.app_raw:
            out = self._packet_direction(rec, rec.app_raw, rec.app_codec, rec.far_sender, self.far_program)
            out["aiortc_inbound"] = rec.app_stats
            return self._relative(out)
        out = _wire_stats(_since(rec.app_packets, rec.t0), rec.app_rate, rec.t0, self.args.duration)
        arrival = self._app_arrivals(rec)
        stream = []
        unmatched = 0
        for pts, samples in rec.app_frames:
            a = arrival.get(pts % (1 << 32))
            if a is None:
                unmatched += 1
                continue
            if a >= rec.t0 - 0.2:
                stream.append((a, 0, pts, samples))
        out.update(_latencies(stream, rec.app_rate, rec.far_sender, self.far_program, rec.t0))
        out["frames_without_packet_time"] = unmatched
        out["aiortc_inbound"] = rec.app_stats
        return self._relative(out)

    def _relative(self, out: dict) -> dict:
        """Loop times -> seconds since the run's start (for the chart)."""
        out["latency_t_s"] = [round(t - self.t_zero, 3) for t in out.pop("latency_t_abs", [])]
        out["late_times_s"] = [round(t - self.t_zero, 3) for t in out.pop("late_t_abs", [])]
        return out

    @staticmethod
    def _app_arrivals(rec: CallRecord) -> dict[int, float]:
        """pts of a decoded frame -> arrival of its packet. aiortc 1.16 hands frames over with
        pts = RTP timestamp - the first packet's timestamp (its TimestampMapper)."""
        if not rec.app_packets:
            return {}
        origin = rec.app_packets[0][2]
        return {(ts - origin) % (1 << 32): a for a, _, ts in rec.app_packets}

    def _pesq_far(self, rec: CallRecord) -> dict:
        assert rec.t0 is not None
        deg = _playout(_since(rec.far_packets, rec.t0), rec.codec or g711.PCMU)
        return _pesq(self.app_program.speech8k, deg)

    def _pesq_app(self, rec: CallRecord) -> dict:
        assert rec.t0 is not None
        if rec.app_raw:         # played out by RTP timestamp: a gap is silence, as lost audio would be
            deg = _playout(_since(rec.app_raw, rec.t0), rec.app_codec or g711.PCMU)
            return _pesq(self.far_program.speech8k, deg)
        arrival = self._app_arrivals(rec)
        frames = [s for pts, s in rec.app_frames if arrival.get(pts % (1 << 32), rec.t0) >= rec.t0 - 0.2]
        deg = np.concatenate(frames or [np.zeros(0, np.int16)])
        if rec.app_rate != SIP_RATE:
            deg = _resample(deg, rec.app_rate, SIP_RATE)
        return _pesq(self.far_program.speech8k, deg)

    # --- the report ----------------------------------------------------------------------------
    def _report(self, started_at: str, pid: int, health: dict, bridge: dict, per_call: dict) -> dict:
        recs = sorted(self.records.values(), key=lambda r: r.index)

        def ms(a: float | None, b: float | None) -> float | None:
            return round(1000 * (b - a), 2) if a is not None and b is not None else None

        calls = []
        for r in recs:
            calls.append({
                "index": r.index, "user": f"{r.user}@{self.app_service}", "state": r.state, "failure": r.failure,
                "disconnect": r.disconnect, "codec": r.codec,
                "start_s": round(r.t_start - self.t_zero, 3) if r.t_start else None,
                "end_s": round(r.t_end - self.t_zero, 3) if r.t_end else None,
                "setup_ms": {"make_call_to_wait_connected": ms(r.t_start, r.t_wait_connected),
                             "make_call_to_invite": ms(r.t_start, r.t_invite),
                             "invite_to_far_answered": ms(r.t_invite, r.t_far_answered),
                             "make_call_to_connected": ms(r.t_start, r.t_connected)},
                **per_call.get(r.index, {}),
            })
        failures = [{"call": c["index"], "user": c["user"], "reason": c["failure"]}
                    for c in calls if c["state"] != "done"]
        summary = self._summary(calls, bridge)
        return {
            "tool": "bridge loadtest", "bridge_version": __version__, "started_at": started_at,
            "command": " ".join(["python -m bridge.loadtest"] + sys.argv[1:]) if sys.argv[0].endswith(
                ("loadtest.py", "loadtest/__main__.py")) else " ".join(sys.argv),
            "params": {"calls": self.args.calls, "duration_s": self.args.duration, "ramp_per_s": self.args.ramp,
                       "far_end": self.args.far_end,
                       "callee": f"{self.args.callee.replace('{ext}', self.args.far_end)}@{self.desk_service}",
                       "app_service": self.app_service, "config": self.cfg.path,
                       "platform_url": self.cfg.platform.public_url, "pesq_calls": self.args.pesq_calls,
                       "cpu_hog": self.args.cpu_hog, "gateway": self.args.gateway,
                       "program": {"speech_s": self.app_program.speech_frames * PTIME,
                                   "bursts_per_call": len(self.app_program.bursts),
                                   "burst_ms": BURST_FRAMES * 20, "burst_period_ms": BURST_PERIOD_FRAMES * 20,
                                   "tones_hz": {"app_to_sip": APP_TONE_HZ, "sip_to_app": FAR_TONE_HZ}}},
            "machine": machine(),
            "bridge": {"pid": pid, "healthz": health, "metrics": bridge},
            "measured_path": MEASURED_PATH,
            "cpu_hog": self.hog_report,
            "summary": summary,
            "targets": targets(summary),
            "failures": failures,
            "samples": self.samples,
            "calls": calls,
        }

    def _summary(self, calls: list[dict], bridge: dict) -> dict:
        done = [c for c in calls if c["state"] == "done"]
        measured = [c for c in calls if c.get("app_to_sip")]
        setup = {k: _dist([c["setup_ms"][k] for c in calls if c["setup_ms"][k] is not None])
                 for k in ("make_call_to_wait_connected", "make_call_to_invite", "invite_to_far_answered",
                           "make_call_to_connected")}
        for step, h in bridge["setup"].items():
            setup[f"bridge_{step}"] = {"p50": _r(h["p50_ms"]), "p99": _r(h["p99_ms"]), "mean": _r(h["mean_ms"]),
                                       "n": h["count"], "source": "bridge /metrics histogram (bucket-interpolated)"}
        directions = {}
        for d in ("app_to_sip", "sip_to_app"):
            lat = [x for c in measured for x in c[d].get("latencies_ms", [])]
            expected = sum(c[d].get("expected", 0) for c in measured)
            late = sum(c[d].get("late_40ms", 0) for c in measured)
            lost = sum(c[d].get("lost", 0) for c in measured)
            pesq_values = [c[d]["pesq"]["mos"] for c in measured if c[d].get("pesq", {}).get("mos") is not None]
            directions[d] = {
                "latency_ms": _dist(lat),
                "bursts_sent": sum(c[d].get("bursts_sent", 0) for c in measured),
                "bursts_detected": sum(c[d].get("bursts_detected", 0) for c in measured),
                "packets_expected": expected,
                "packets_received": sum(c[d].get("received", 0) for c in measured),
                "lost": lost,
                "late_40ms": late,
                "late_or_lost_40ms_pct": round(100 * (late + lost) / expected, 3) if expected else None,
                "jitter_ms": _dist([c[d]["jitter_ms"] for c in measured if c[d].get("jitter_ms") is not None]),
                "max_transit_excess_ms": max((c[d].get("max_transit_excess_ms", 0) for c in measured), default=None),
                # a call's longest stall: its worst packet's delay beyond its best (a pause of the
                # bridge, GC or otherwise, shows here in every call it held)
                "stall_ms": _dist([c[d]["max_transit_excess_ms"] for c in measured
                                   if c[d].get("max_transit_excess_ms") is not None]),
                "calls_stalled_over_20ms": sum(1 for c in measured if c[d].get("max_transit_excess_ms", 0) > 20),
                "pesq_mos_nb": {**_dist(pesq_values), "values": pesq_values,
                            "g711_only": self.pesq_ceiling.get(d)},
                "bridge_frames": bridge["frames"].get(d, {}),
            }
        far = [c["app_to_sip"].get("far_end_rtp", {}) for c in measured]
        directions["app_to_sip"]["far_end_rtp"] = {k: sum(f.get(k, 0) for f in far)
                                                   for k in ("packets_received", "lost", "late", "concealed",
                                                             "dropped", "inserted")}
        app = [c["sip_to_app"].get("aiortc_inbound", {}) for c in measured]
        directions["sip_to_app"]["aiortc_inbound"] = {
            "packets_received": sum(a.get("packets_received") or 0 for a in app),
            "packets_lost": sum(a.get("packets_lost") or 0 for a in app),
            "jitter_ms": _dist([a["jitter_ms"] for a in app if a.get("jitter_ms") is not None])}
        s = self.samples
        t_first = min((c["start_s"] for c in calls if c["start_s"] is not None), default=0)
        base = [x["bridge_rss_mb"] for x in s if x["t"] <= t_first] or [s[0]["bridge_rss_mb"]] if s else []
        busy = [x for x in s if x["active"] > 0]
        peak_calls = max((x["active"] + x["calling"] for x in s), default=0)
        baseline = float(np.median(base)) if base else None
        peak = max((x["bridge_rss_mb"] for x in s), default=None)
        last = s[-1]["bridge_rss_mb"] if s else None
        full = [x for x in busy if x["active"] == max((y["active"] for y in s), default=0)]
        return {
            "calls": {"requested": len(calls), "connected": sum(c["setup_ms"]["make_call_to_connected"] is not None
                                                                for c in calls),
                      "completed": len(done), "failed": len(calls) - len(done),
                      "peak_concurrent": max((x["active"] for x in s), default=0)},
            "setup_ms": setup,
            "directions": directions,
            "bridge_process": {
                "cpu_pct": _dist([x["bridge_cpu_pct"] for x in busy]),
                "cpu_pct_at_peak_concurrency": _dist([x["bridge_cpu_pct"] for x in full]),
                "rss_mb": {"baseline": _r(baseline), "peak": peak, "after_calls": last,
                           "per_call": _r((peak - baseline) / peak_calls) if peak_calls and baseline and peak
                           else None,
                           "retained_after_calls": _r(last - baseline) if last and baseline else None},
                "threads_max": max((x["bridge_threads"] for x in s), default=None),
                "loop_lag_ms": {k: _r(bridge.get("loop_lag", {}).get(f"{k}_ms")) for k in ("p50", "p99", "mean")}
                | {"source": "bridge_loop_lag_seconds (50 ms timer, bucket-interpolated)"},
                "gc_pauses": bridge.get("gc", {}),
                "samples": len(s)},
            "loadtest_process": {
                "cpu_pct": _dist([x["loadtest_cpu_pct"] for x in busy]),
                "loop_lag_ms": _dist([x["loadtest_loop_lag_ms"] for x in busy]),
                "late_send_ticks": sum(r.app_sender.late_ticks + r.far_sender.late_ticks
                                       for r in self.records.values()),
                "send_ticks": sum(r.app_sender.ticks + r.far_sender.ticks for r in self.records.values())},
        }


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(float(x), nd)


def _dist(values: list) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return {"n": 0}
    return {"n": int(len(v)), "p50": _r(np.percentile(v, 50)), "p99": _r(np.percentile(v, 99)),
            "mean": _r(v.mean()), "min": _r(v.min()), "max": _r(v.max())}


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


def targets(summary: dict) -> list[dict]:
    """The issue's targets, each with its value and whether it was met."""
    d = summary["directions"]
    rows = []

    def add(name: str, target: str, value: float | None, ok: bool | None) -> None:
        rows.append({"name": name, "target": target, "value": value, "pass": ok})

    for k in ("app_to_sip", "sip_to_app"):
        v = d[k]["late_or_lost_40ms_pct"]
        add(f"frames later than {LATE_MS:.0f} ms or lost, {k}", "< 0.5 %", v, None if v is None else v < 0.5)
    for k in ("app_to_sip", "sip_to_app"):
        v = d[k]["latency_ms"].get("p99")
        add(f"p99 added latency, {k}", "<= 20 ms", v, None if v is None else v <= 20)
    v = summary["setup_ms"].get("bridge_notification_to_invite", {}).get("p50")
    add("notification -> INVITE p50", "<= 20 ms", v, None if v is None else v <= 20)
    for k in ("app_to_sip", "sip_to_app"):
        v = d[k]["pesq_mos_nb"].get("min")
        add(f"PESQ NB MOS (min of the calls), {k}", ">= 4.0", v, None if v is None else v >= 4.0)
    for k in ("app_to_sip", "sip_to_app"):
        v = d[k]["stall_ms"].get("max")
        add(f"longest stall in any call, {k}", "<= 20 ms", v, None if v is None else v <= 20)
    v = summary["bridge_process"]["rss_mb"]["per_call"]
    add("bridge memory per call", "<= 5 MB", v, None if v is None else v <= 5)
    f = summary["calls"]["failed"]
    add("failed calls", "0", f, f == 0)
    return rows


def machine() -> dict:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1]) // 1024
    espeak = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
    return {"cores": os.cpu_count(), "cpu_model": cpu, "mem_total_mb": mem,
            "python": sys.version.split()[0], "implementation": _platform.python_implementation(),
            "platform": _platform.platform(), "kernel": _platform.release(),
            "versions": {d: version(d) for d in ("bridge", "aiortc", "av", "aiohttp", "numpy", "uvloop",
                                                  "pyVoIP", "pesq", "matplotlib", "prometheus-client")},
            "espeak_ng": espeak}
