"""The load test's comparison runs: through Janus's SIP plugin, and under call churn.

Bounded runs (always): 2 calls through Janus (Debian `janus`), measured like the bridge; the
before/after harness with this tree against itself (2 calls each); and a short churn (calls
starting every 0.2 s while others end), whose report times the bridge's collections and each
call's longest stall. Behind opt-in markers, the runs whose numbers are in
docs/performance.md (each prints one PERF line per run):

- `janus_perf`: bridge and Janus side by side, interleaved, at BRIDGE_PERF_CALLS (default
  "10,40,90") calls of BRIDGE_PERF_SECONDS (30) s, with BRIDGE_CPU_HOG (e.g. 0.7) a CPU hog
  beside them: `pytest -m janus_perf tests/test_loadtest_perf.py -s`
- `ab_perf`: before and after a change: the bridge from each source tree of BRIDGE_AB_TREES (two
  or more, comma-separated: e.g. a `git worktree` of the commit before, and this one) in turn,
  interleaved BRIDGE_AB_ROUNDS (2) times, BRIDGE_AB_CALLS (40) calls of BRIDGE_PERF_SECONDS (20) s;
  BRIDGE_AB_CODECS="opus,G722" for app legs on Opus and the SIP leg on G.722 (recoded):
  `BRIDGE_AB_TREES=/tmp/before,$PWD pytest -m ab_perf tests/test_loadtest_perf.py -s`
- `churn_perf`: 5 new calls a second for BRIDGE_CHURN_SECONDS (300) s, 12 s each (60 up):
  `pytest -m churn_perf tests/test_loadtest_perf.py -s` (BRIDGE_CHURN_GATEWAY=janus: through Janus)

Numbers are printed, never asserted: goals live in the benchmark's report, not in timed tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil

import pytest

from stack import BRIDGE_PW, BRIDGE_USER, ROOT, Daemon, stack_config
from testbed.fixtures import kamailio_factory  # noqa: F401

DEMO_USERS = {BRIDGE_USER: BRIDGE_PW, "2001": "2001-demo", "2002": "2002-demo"}


def require_janus() -> None:
    if shutil.which("janus") is None:
        pytest.fail("Debian janus is not installed: run tests/run")


def for_load(data: dict) -> None:
    """The stack's config edited for many calls."""
    data["log_level"] = "warning"     # logs of many calls cost CPU
    for route in data["routes"]["to_sip"]:
        route["max_calls"] = 200


@pytest.fixture
async def bridge_stack(tmp_path, kamailio_factory):  # noqa: F811
    kamailio = kamailio_factory(DEMO_USERS, invite_auth=False)   # as bridge demo: Janus calls as guests
    daemon = Daemon(stack_config(tmp_path, kamailio.port, for_load)).start()
    try:
        await daemon.ready()
        yield daemon
    finally:
        daemon.stop()
        print(f"===== bridge log =====\n{daemon.log()[-3000:]}")


async def loadtest(stack, tmp_path, *args: str, timeout: float = 200) -> dict:
    report_path = tmp_path / "report.json"
    proc = await asyncio.create_subprocess_exec(
        shutil.which("bridge") or pytest.fail("the `bridge` command is not installed: run tests/run"),
        "loadtest", "-c", str(stack.path), "--far-end-rtp-ports", "42000-42999", "--json", str(report_path),
        "--quiet", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("bridge loadtest did not finish in time")
    text = out.decode(errors="replace")
    print(text[-3500:])
    assert proc.returncode in (0, 1), text[-3000:]
    return json.loads(report_path.read_text())


def perf_line(name: str, report: dict) -> str:
    s = report["summary"]
    bp, d = s["bridge_process"], s["directions"]
    a, b = d["app_to_sip"], d["sip_to_app"]
    peak = max(1, s["calls"]["peak_concurrent"])
    cpu = bp["cpu_pct_at_peak_concurrency"].get("mean") or bp["cpu_pct"].get("mean") or 0
    gc2 = bp["gc_pauses"].get("2", {})
    return (f"PERF {name} gateway={report['params']['gateway']} calls={report['params']['calls']} "
            f"completed={s['calls']['completed']} peak={peak} cpu_pct={cpu} cpu_per_call_pct={cpu / peak:.3f} "
            f"late_or_lost_pct={a['late_or_lost_40ms_pct']}/{b['late_or_lost_40ms_pct']} "
            f"p99_ms={a['latency_ms'].get('p99')}/{b['latency_ms'].get('p99')} "
            f"stall_max_ms={a['stall_ms'].get('max')}/{b['stall_ms'].get('max')} "
            f"calls_stalled_20ms={a['calls_stalled_over_20ms']}/"
            f"{b['calls_stalled_over_20ms']} gc2={gc2.get('count')}x{gc2.get('mean_ms')}ms "
            f"rss={bp['rss_mb']['baseline']}->{bp['rss_mb']['peak']}->{bp['rss_mb']['after_calls']} "
            f"hog={(report.get('cpu_hog') or {}).get('cpu_pct')} "
            f"pesq_min={a['pesq_mos_nb'].get('min')}/{b['pesq_mos_nb'].get('min')} "
            f"codec_alone={a['pesq_mos_nb'].get('g711_only')}/{b['pesq_mos_nb'].get('g711_only')}")


async def test_loadtest_through_janus_measures_it_like_the_bridge(bridge_stack, tmp_path):
    require_janus()
    # the same callers and far end through Janus's SIP plugin: both directions carry the
    # programs (tone bursts found by content), and Janus's own process is what is measured
    report = await loadtest(bridge_stack, tmp_path, "--gateway", "janus", "--calls", "2", "--duration", "8",
                            "--ramp", "2", "--pesq-calls", "2")
    print(perf_line("janus-smoke", report))
    assert report["params"]["gateway"] == "janus" and report["failures"] == [], report["failures"]
    s = report["summary"]
    assert s["calls"]["completed"] == 2 and s["calls"]["peak_concurrent"] == 2
    health = report["bridge"]["healthz"]
    assert health["gateway"] == "janus" and health["version"] == "1.1.2", health
    for d in ("app_to_sip", "sip_to_app"):
        x = s["directions"][d]
        assert x["bursts_detected"] >= x["bursts_sent"] - 2 and x["bursts_sent"] >= 6, (d, x)
        assert x["packets_received"] > 0.95 * x["packets_expected"] > 600, (d, x)
        assert x["pesq_mos_nb"]["min"] >= 3.5, (d, x["pesq_mos_nb"])       # the speech came through
    bp = s["bridge_process"]
    assert bp["cpu_pct"]["mean"] > 0 and bp["rss_mb"]["peak"] > 5, bp     # Janus's process, sampled
    assert bp["gc_pauses"] == {} and report["bridge"]["pid"] == health["pid"]
    assert all(c["codec"] == "PCMU" for c in report["calls"]), [c["codec"] for c in report["calls"]]


async def test_short_churn_reports_collections_and_stalls(bridge_stack, tmp_path):
    # 12 calls of 8 s, one every 0.2 s: calls start while others end; the report has every
    # call's longest stall and the bridge's collections by generation
    report = await loadtest(bridge_stack, tmp_path, "--calls", "12", "--duration", "8", "--ramp", "5",
                            "--pesq-calls", "0")
    print(perf_line("churn-smoke", report))
    s = report["summary"]
    assert s["calls"]["completed"] == 12, report["failures"]
    for d in ("app_to_sip", "sip_to_app"):
        x = s["directions"][d]
        assert x["stall_ms"]["n"] == 12 and 0 <= x["stall_ms"]["p50"] <= x["stall_ms"]["max"], (d, x)
    pauses = s["bridge_process"]["gc_pauses"]
    assert pauses["0"]["count"] > 0, pauses
    assert all(v["over_20ms"] <= v["count"] for v in pauses.values()), pauses


@pytest.mark.janus_perf
@pytest.mark.timeout(3600)
async def test_side_by_side_with_janus(bridge_stack, tmp_path):
    require_janus()
    seconds = os.environ.get("BRIDGE_PERF_SECONDS", "30")
    hog = os.environ.get("BRIDGE_CPU_HOG")           # e.g. 0.7: the contention run
    for calls in os.environ.get("BRIDGE_PERF_CALLS", "10,40,90").split(","):
        per_call = {}
        for gateway in ("bridge", "janus"):
            report = await loadtest(bridge_stack, tmp_path, "--gateway", gateway, "--calls", calls,
                                    "--duration", seconds, "--ramp", "5", "--pesq-calls", "4",
                                    *(["--cpu-hog", hog] if hog else []),
                                    timeout=float(seconds) + int(calls) / 5 + 300)
            assert report["summary"]["calls"]["completed"] > 0, report["failures"]
            line = perf_line(f"side-by-side-{calls}", report)
            print(line)
            per_call[gateway] = float(line.split("cpu_per_call_pct=")[1].split()[0])
        print(f"PERF ratio calls={calls} bridge/janus cpu per call = "
              f"{per_call['bridge'] / per_call['janus']:.2f}")


async def before_and_after(tmp_path, kamailio, trees: list[str], calls: str, seconds: str, rounds: int,
                           codecs: str = "") -> list[dict]:
    """The bridge from each source tree in turn (interleaved `rounds` times), the same load test
    each time; the reports, in the order run."""
    app, _, sip = codecs.partition(",")

    def edit(data: dict) -> None:
        for_load(data)
        if app:
            data["webrtc"]["codecs"] = [app]
        if sip:
            data["sip"]["codecs"] = [sip]
    cfg = stack_config(tmp_path, kamailio.port, edit)
    reports = []
    for r in range(rounds):
        for tree in trees if r % 2 == 0 else trees[::-1]:
            daemon = Daemon(cfg).start(wrapper=["env", f"PYTHONPATH={os.path.abspath(tree)}"])
            try:
                await daemon.ready()
                report = await loadtest(daemon, tmp_path, "--calls", calls, "--duration", seconds,
                                        "--ramp", "5", "--pesq-calls", "4")
                print(perf_line(f"ab-{tree}", report), flush=True)
                reports.append(report)
            finally:
                daemon.stop()
    return reports


async def test_before_and_after_runs_each_tree_in_turn(tmp_path, kamailio_factory):  # noqa: F811
    # the bounded form of -m ab_perf: this tree against itself, 2 calls each
    kamailio = kamailio_factory(DEMO_USERS, invite_auth=False)
    reports = await before_and_after(tmp_path, kamailio, [str(ROOT), str(ROOT)], "2", "8", 1)
    assert [r["summary"]["calls"]["completed"] for r in reports] == [2, 2], [r["failures"] for r in reports]
    assert all(r["summary"]["bridge_process"]["cpu_pct"].get("mean") for r in reports)


@pytest.mark.ab_perf
@pytest.mark.timeout(7200)
async def test_before_and_after(tmp_path, kamailio_factory):  # noqa: F811
    trees = [t for t in os.environ.get("BRIDGE_AB_TREES", "").split(",") if t]
    if len(trees) < 2:
        pytest.fail("BRIDGE_AB_TREES names two or more source trees to compare (comma-separated)")
    await before_and_after(tmp_path, kamailio_factory(DEMO_USERS, invite_auth=False), trees,
                           os.environ.get("BRIDGE_AB_CALLS", "40"), os.environ.get("BRIDGE_PERF_SECONDS", "20"),
                           int(os.environ.get("BRIDGE_AB_ROUNDS", "2")), os.environ.get("BRIDGE_AB_CODECS", ""))


@pytest.mark.churn_perf
@pytest.mark.timeout(1800)
async def test_churn_five_calls_a_second(bridge_stack, tmp_path):
    seconds = float(os.environ.get("BRIDGE_CHURN_SECONDS", "300"))
    hog = os.environ.get("BRIDGE_CPU_HOG")
    gateway = os.environ.get("BRIDGE_CHURN_GATEWAY", "bridge")     # janus: the same churn through Janus
    if gateway == "janus" and shutil.which("janus") is None:
        pytest.fail("Debian janus is not installed (tests/run)")
    report = await loadtest(bridge_stack, tmp_path, "--gateway", gateway, "--calls", str(int(5 * seconds)),
                            "--duration", "12", "--ramp", "5", "--pesq-calls", "10",
                            *(["--cpu-hog", hog] if hog else []), timeout=seconds + 400)
    print(perf_line(f"churn-{seconds:g}s", report))
