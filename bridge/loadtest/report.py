"""The report as a table and a chart."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .program import LATE_MS

log = logging.getLogger("bridge.loadtest")

# --- output ------------------------------------------------------------------------------------

def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.1f}{unit}" if abs(x) >= 10 else f"{x:.2f}{unit}"
    return f"{x}{unit}"


def format_table(report: dict) -> str:
    s = report["summary"]
    p = report["params"]
    c = s["calls"]
    lines = [f"bridge loadtest: {p['calls']} calls x {p['duration_s']:g} s, ramp {p['ramp_per_s']:g}/s, "
             f"-> {p['callee']} through {p.get('gateway', 'bridge')} ({report['machine']['cores']} cores)",
             f"calls: {c['completed']} completed, {c['failed']} failed, peak {c['peak_concurrent']} concurrent", ""]
    lines.append(f"{'setup (ms)':<34}{'p50':>9}{'p99':>9}{'mean':>9}{'n':>6}")
    for k, v in s["setup_ms"].items():
        lines.append(f"  {k:<32}{_fmt(v.get('p50')):>9}{_fmt(v.get('p99')):>9}{_fmt(v.get('mean')):>9}"
                     f"{v.get('n', 0):>6}")
    lines.append("")
    lines.append(f"{'per direction':<34}{'app->SIP':>14}{'SIP->app':>14}")
    a, b = s["directions"]["app_to_sip"], s["directions"]["sip_to_app"]

    def row(label: str, fa: Any, fb: Any) -> None:
        lines.append(f"  {label:<32}{_fmt(fa):>14}{_fmt(fb):>14}")
    row("latency p50 (ms)", a["latency_ms"].get("p50"), b["latency_ms"].get("p50"))
    row("latency p99 (ms)", a["latency_ms"].get("p99"), b["latency_ms"].get("p99"))
    row("latency max (ms)", a["latency_ms"].get("max"), b["latency_ms"].get("max"))
    row("bursts detected / sent", f"{a['bursts_detected']}/{a['bursts_sent']}",
        f"{b['bursts_detected']}/{b['bursts_sent']}")
    row("packets expected", a["packets_expected"], b["packets_expected"])
    row("lost", a["lost"], b["lost"])
    row(f"late > {LATE_MS:.0f} ms", a["late_40ms"], b["late_40ms"])
    row("late or lost (%)", a["late_or_lost_40ms_pct"], b["late_or_lost_40ms_pct"])
    row("max transit excess (ms)", a["max_transit_excess_ms"], b["max_transit_excess_ms"])
    row("jitter mean (ms)", a["jitter_ms"].get("mean"), b["jitter_ms"].get("mean"))
    row("bridge late ticks / frames", f"{a['bridge_frames'].get('late', '-')}/{a['bridge_frames'].get('frames', '-')}",
        f"{b['bridge_frames'].get('late', '-')}/{b['bridge_frames'].get('frames', '-')}")
    row("bridge underruns", a["bridge_frames"].get("underruns"), b["bridge_frames"].get("underruns"))
    row("bridge overruns", a["bridge_frames"].get("overruns"), b["bridge_frames"].get("overruns"))
    row("PESQ NB mean", a["pesq_mos_nb"].get("mean"), b["pesq_mos_nb"].get("mean"))
    row("PESQ NB min", a["pesq_mos_nb"].get("min"), b["pesq_mos_nb"].get("min"))
    row("PESQ NB of the SIP codec alone", a["pesq_mos_nb"].get("g711_only"), b["pesq_mos_nb"].get("g711_only"))
    lines.append("")
    bp, lt = s["bridge_process"], s["loadtest_process"]
    lines.append(f"{p.get('gateway', 'bridge')} process: CPU mean {_fmt(bp['cpu_pct'].get('mean'))} % max {_fmt(bp['cpu_pct'].get('max'))} %, "
                 f"RSS {_fmt(bp['rss_mb']['baseline'])} -> peak {_fmt(bp['rss_mb']['peak'])} MB "
                 f"({_fmt(bp['rss_mb']['per_call'])} MB/call), after {_fmt(bp['rss_mb']['after_calls'])} MB, "
                 f"threads max {bp['threads_max']}, loop lag p50 {_fmt(bp['loop_lag_ms'].get('p50'))} / p99 "
                 f"{_fmt(bp['loop_lag_ms'].get('p99'))} ms")
    gcp = bp.get("gc_pauses") or {}
    if gcp:
        lines.append("bridge GC: " + ", ".join(
            f"gen {g}: {v['count']} x {_fmt(v['mean_ms'])} ms ({v['over_20ms']} > 20 ms, longest <= "
            f"{_fmt(v['longest_at_most_ms'])} ms)" for g, v in gcp.items()))
    row_stall = [s["directions"][k]["stall_ms"] for k in ("app_to_sip", "sip_to_app")]
    lines.append(f"longest stall per call (ms, worst packet beyond the call's best): app->SIP p50 "
                 f"{_fmt(row_stall[0].get('p50'))} max {_fmt(row_stall[0].get('max'))}, SIP->app p50 "
                 f"{_fmt(row_stall[1].get('p50'))} max {_fmt(row_stall[1].get('max'))}; calls with one > 20 ms: "
                 f"{a['calls_stalled_over_20ms']} / {b['calls_stalled_over_20ms']}")
    lines.append(f"load test process: CPU mean {_fmt(lt['cpu_pct'].get('mean'))} %, loop lag p99 "
                 f"{_fmt(lt['loop_lag_ms'].get('p99'))} ms, late send ticks {lt['late_send_ticks']}/{lt['send_ticks']}")
    hog = report.get("cpu_hog")
    if hog:
        lines.append(f"CPU hog: asked for {100 * hog['fraction']:.0f} % of a core while the calls ran, took "
                     f"{_fmt(hog['cpu_pct'])} % over {_fmt(hog['seconds'])} s")
    cl = report.get("cluster")
    if cl:
        beat = cl.get("heartbeat_per_s", {})
        lines.append(f"cluster: {cl['nodes']} bridge nodes (CPU and RSS above: their sum); Redis per call "
                     f"{cl['redis_commands_per_call']} commands, {cl['redis_usec_per_call']} us inside Redis, "
                     f"{cl['redis_cpu_ms_per_call']} ms of its CPU (heartbeats apart: "
                     f"{_fmt(beat.get('calls'))} commands/s, {_fmt(beat.get('usec'))} us/s)")
    lines.append("")
    lines.append("targets:")
    for t in report["targets"]:
        mark = {True: "ok  ", False: "FAIL", None: "n/a "}[t["pass"]]
        lines.append(f"  {mark} {t['name']:<46} {_fmt(t['value']):>9}  (target {t['target']})")
    if report["failures"]:
        lines.append("")
        lines.append("failed calls:")
        for f in report["failures"]:
            lines.append(f"  {f['user']}: {f['reason']}")
    return "\n".join(lines)


def _legend(ax, twin) -> None:
    """One legend for a plot and its twin axis."""
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)


def write_chart(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["samples"]
    t = [x["t"] for x in s]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    p = report["params"]
    fig.suptitle(f"bridge loadtest: {p['calls']} calls x {p['duration_s']:g} s, ramp {p['ramp_per_s']:g}/s "
                 f"({report['machine']['cores']} cores, {report['started_at']})")

    ax = axes[0][0]
    ax.step(t, [x["active"] for x in s], where="post", color="black", label="concurrent calls")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("concurrent calls")
    ax2 = ax.twinx()
    ax2.plot(t, [x["bridge_cpu_pct"] for x in s], color="tab:red", label="bridge CPU %")
    ax2.plot(t, [x["loadtest_cpu_pct"] for x in s], color="tab:orange", alpha=0.6, linestyle="--",
             label="load test CPU %")
    ax2.set_ylabel("CPU % (100 = one core)")
    ax.set_title("concurrent calls and CPU")
    _legend(ax, ax2)

    ax = axes[0][1]
    ax.plot(t, [x["bridge_rss_mb"] for x in s], color="tab:blue", label="bridge RSS (MB)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("RSS (MB)")
    ax2 = ax.twinx()
    ax2.step(t, [x["active"] for x in s], where="post", color="black", alpha=0.4, label="concurrent calls")
    ax2.set_ylabel("concurrent calls")
    ax.set_title("bridge memory")
    _legend(ax, ax2)

    ax = axes[1][0]
    colors = {"app_to_sip": "tab:green", "sip_to_app": "tab:purple"}
    for d in ("app_to_sip", "sip_to_app"):
        xs, ys = [], []
        for c in report["calls"]:
            dd = c.get(d) or {}
            for tt, lat in zip(dd.get("latency_t_s", []), dd.get("latencies_ms", [])):
                xs.append(tt)
                ys.append(lat)
        summ = report["summary"]["directions"][d]["latency_ms"]
        label = f"{d.replace('_', ' ')} (p50 {_fmt(summ.get('p50'))}, p99 {_fmt(summ.get('p99'))} ms)"
        ax.scatter(xs, ys, s=8, color=colors[d], alpha=0.6, label=label)
    ax.set_xlabel("time of the burst (s)")
    ax.set_ylabel("added one-way latency (ms)")
    ax.set_title("latency per direction (burst onsets)")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    bins = np.arange(0, (max(t) if t else 1) + 1, 1.0)
    for d in ("app_to_sip", "sip_to_app"):
        late_t = [x for c in report["calls"] for x in (c.get(d) or {}).get("late_times_s", [])]
        counts, _ = np.histogram(late_t, bins=bins) if len(bins) > 1 else ([], [])
        ax.plot(bins[:-1], counts, color=colors[d], label=f"{d.replace('_', ' ')}: "
                f"{report['summary']['directions'][d]['late_40ms']} late, "
                f"{report['summary']['directions'][d]['lost']} lost")
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"frames later than {LATE_MS:.0f} ms per second")
    ax.set_title("late frames")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
