"""The run's report: every call, the summary over them and its targets, the machine it ran on."""

from __future__ import annotations

import contextlib
import os
import platform as _platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from .. import __version__
from .program import APP_TONE_HZ, BURST_FRAMES, BURST_PERIOD_FRAMES, FAR_TONE_HZ, LATE_MS, PTIME

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


class Summary:
    """The load test's report of its run (a part of `LoadTest`)."""

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
