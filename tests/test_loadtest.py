"""`bridge loadtest` smoke run: 2 calls for ~10 s through a real stack (Kamailio from the test bed
with the demo's users, `bridge run` as a subprocess), run as `python -m bridge.loadtest`; the
report's fields must be there and plausible, and the chart a PNG."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.cpuhog import CpuHog

from stack import BRIDGE_PW, BRIDGE_USER, ROOT, Daemon, stack_config
from testbed.fixtures import kamailio_factory  # noqa: F401

DEMO_USERS = {BRIDGE_USER: BRIDGE_PW, "2001": "2001-demo", "2002": "2002-demo"}


@pytest.fixture
async def bridge_stack(tmp_path, kamailio_factory):  # noqa: F811
    kamailio = kamailio_factory(DEMO_USERS, invite_auth=True)

    def edit(data: dict) -> None:
        data["log_level"] = "info"        # debug logs of 2 calls are large and cost CPU
    daemon = Daemon(stack_config(tmp_path, kamailio.port, edit)).start()
    try:
        await daemon.ready()
        yield daemon
    finally:
        daemon.stop()
        print(f"===== bridge log =====\n{daemon.log()[-4000:]}")


async def test_loadtest_two_calls_report_and_chart(bridge_stack, tmp_path):
    report_path, chart_path = tmp_path / "report.json", tmp_path / "report.png"
    proc = await asyncio.create_subprocess_exec(
        shutil.which("bridge") or pytest.fail("the `bridge` command is not installed: run tests/run"),
        "loadtest", "-c", str(bridge_stack.path), "--calls", "2",
        "--duration", "10", "--ramp", "2", "--json", str(report_path), "--chart", str(chart_path),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 150)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("bridge loadtest did not finish within 150 s")
    text = out.decode(errors="replace")
    print(text)
    assert proc.returncode == 0, text[-3000:]
    assert "targets:" in text and "latency p99" in text        # the table was printed

    report = json.loads(report_path.read_text())
    assert chart_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert chart_path.stat().st_size > 10_000

    for key in ("machine", "params", "bridge", "summary", "targets", "failures", "samples", "calls",
                "measured_path"):
        assert key in report, key
    m = report["machine"]
    assert m["cores"] >= 1 and m["python"] and m["versions"]["aiortc"] and m["versions"]["pesq"]
    assert report["failures"] == []
    s = report["summary"]
    assert s["calls"] == {**s["calls"], "requested": 2, "completed": 2, "failed": 0}
    assert s["calls"]["peak_concurrent"] == 2

    for step in ("make_call_to_wait_connected", "make_call_to_invite", "make_call_to_connected"):
        assert s["setup_ms"][step]["n"] == 2 and 0 < s["setup_ms"][step]["p50"] < 10_000, step
    for step in ("notification_to_invite", "invite_to_answer", "answer_to_connected"):
        h = s["setup_ms"][f"bridge_{step}"]
        assert h["n"] == 2 and h["p50"] is not None and h["p50"] > 0, (step, h)

    for d in ("app_to_sip", "sip_to_app"):
        x = s["directions"][d]
        lat = x["latency_ms"]
        assert lat["n"] >= 6, (d, x)                       # several bursts per call detected
        assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] < 1000, (d, lat)
        assert x["bursts_detected"] >= x["bursts_sent"] - 2, (d, x)
        assert x["packets_expected"] > 800 and x["packets_received"] > 0.95 * x["packets_expected"], (d, x)
        assert x["late_or_lost_40ms_pct"] is not None and x["jitter_ms"]["n"] == 2, (d, x)
        assert set(x["bridge_frames"]) >= {"frames", "late", "underruns", "overruns"}, (d, x)
        assert x["bridge_frames"]["frames"] > 800, (d, x)
        pesq = x["pesq_mos_nb"]
        assert pesq["n"] == 2 and 1.0 <= pesq["min"] <= pesq["max"] <= 4.5, (d, pesq)
        assert 1.0 <= pesq["g711_only"] <= 4.5, (d, pesq)
    assert s["directions"]["app_to_sip"]["far_end_rtp"]["packets_received"] > 800
    assert s["directions"]["sip_to_app"]["aiortc_inbound"]["packets_received"] > 800

    for d in ("app_to_sip", "sip_to_app"):              # each call's longest stall, and the worst
        x = s["directions"][d]
        assert x["stall_ms"]["n"] == 2 and x["stall_ms"]["max"] == x["max_transit_excess_ms"], (d, x)
        assert 0 <= x["calls_stalled_over_20ms"] <= 2, (d, x)
    bp = s["bridge_process"]
    gc0 = bp["gc_pauses"]["0"]        # the bridge's young collections during the run, timed
    assert gc0["count"] > 0 and 0 < gc0["mean_ms"] <= gc0["longest_at_most_ms"], bp["gc_pauses"]
    assert bp["samples"] >= 10
    assert bp["cpu_pct"]["n"] > 0 and 0 < bp["cpu_pct"]["mean"] < 100 * m["cores"]
    assert 10 < bp["rss_mb"]["baseline"] <= bp["rss_mb"]["peak"] < 4000
    assert 0 < bp["loop_lag_ms"]["p50"] <= bp["loop_lag_ms"]["p99"] < 1000, bp["loop_lag_ms"]
    samples = report["samples"]
    assert all({"t", "active", "bridge_cpu_pct", "bridge_rss_mb"} <= set(x) for x in samples)
    assert max(x["active"] for x in samples) == 2
    assert {t["name"] for t in report["targets"]} >= {"notification -> INVITE p50", "bridge memory per call"}
    for call in report["calls"]:
        assert call["state"] == "done" and call["codec"] in ("PCMU", "PCMA"), call["failure"]
        assert call["setup_ms"]["make_call_to_connected"] > call["setup_ms"]["make_call_to_invite"] > 0


def test_loadtest_refuses_more_calls_than_the_route_takes():
    # the sample's desk route takes 50 calls: a bigger run says which key to raise, before it starts
    run = subprocess.run([sys.executable, "-m", "bridge", "loadtest", "-c", str(ROOT / "config.yaml"),
                          "--calls", "60", "--duration", "20", "--ramp", "10"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2, run.stderr
    assert "route 'desk-phones' takes at most 50 calls at once (max_calls in" in run.stderr, run.stderr
    assert "this run has up to 60" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    # and a callee routed elsewhere than to the load test's own far end
    run = subprocess.run([sys.executable, "-m", "bridge", "loadtest", "-c", str(ROOT / "config.yaml"),
                          "--calls", "2", "--duration", "20", "--far-end", "2001", "--callee", "desk-2002"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2, run.stderr
    assert "desk-2002@demo-desk is routed to 2002, not to the far end 2001" in run.stderr, run.stderr


async def test_loadtest_without_pesq_needs_neither_espeak_nor_the_extra(bridge_stack, tmp_path):
    # --pesq-calls 0: no espeak-ng on PATH, and pesq/matplotlib cannot be imported; the run still
    # measures both directions (latency by tone bursts)
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ("pesq", "matplotlib"):
        (blocked / f"{name}.py").write_text(f"raise ImportError('{name} is not installed (blocked by the test)')\n")
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    exe = shutil.which("bridge") or pytest.fail("the `bridge` command is not installed: run tests/run")
    report_path = tmp_path / "report.json"
    proc = await asyncio.create_subprocess_exec(
        exe, "loadtest", "-c", str(bridge_stack.path), "--calls", "1", "--duration", "8", "--pesq-calls", "0",
        "--cpu-hog", "0.3", "--json", str(report_path), "--quiet", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={"PATH": str(empty_bin), "PYTHONPATH": str(blocked)})
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode(errors="replace")
    print(text)
    assert proc.returncode == 0, text[-3000:]
    report = json.loads(report_path.read_text())
    assert report["machine"]["espeak_ng"] == "" and report["summary"]["calls"]["completed"] == 1
    hog = report["cpu_hog"]              # --cpu-hog: a busy process ran beside the call, measured
    assert hog["fraction"] == 0.3 and report["params"]["cpu_hog"] == 0.3, hog
    assert hog["seconds"] >= 8 and 0 < hog["cpu_pct"] <= 35, hog
    assert not Path(f"/proc/{hog['pid']}").exists() or "zombie" in Path(f"/proc/{hog['pid']}/status").read_text()
    assert any(x.get("hog_cpu_pct", 0) > 0 for x in report["samples"]), report["samples"]
    for d in ("app_to_sip", "sip_to_app"):
        x = report["summary"]["directions"][d]
        assert x["pesq_mos_nb"]["n"] == 0 and x["pesq_mos_nb"]["g711_only"] is None, x
        assert x["latency_ms"]["n"] >= 3 and x["bursts_detected"] >= x["bursts_sent"] - 1, x
    # asked for PESQ without the tools, it says what to install
    run = subprocess.run([exe, "loadtest", "-c", str(bridge_stack.path), "--calls", "1", "--duration", "8"],
                         capture_output=True, text=True, env={"PATH": str(empty_bin), "PYTHONPATH": str(blocked)})
    assert run.returncode == 2 and "espeak-ng is not installed" in run.stderr and "--pesq-calls 0" in run.stderr


def test_cpu_hog_takes_its_share_and_no_more():
    # a hog asked for half a core gets it on an idle core, and never more than it asked for
    # (a starved hog catches up at most cpuhog.MAX_DEBT); stop() ends the process
    hog = CpuHog(0.5).start()
    try:
        time.sleep(2.0)
    finally:
        result = hog.stop()
    assert result["fraction"] == 0.5 and 1.9 <= result["seconds"] <= 3.0, result
    assert 15 <= result["cpu_pct"] <= 56, result
    assert hog.proc.poll() is not None
    with pytest.raises(ValueError):
        CpuHog(1.5)
    run = subprocess.run([sys.executable, "-m", "bridge", "loadtest", "-c", str(ROOT / "config.yaml"),
                          "--cpu-hog", "2"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "--cpu-hog must be in (0, 1]" in run.stderr, run.stderr


@pytest.mark.parametrize("plain", [False, True])
def test_relayfloor_relays_every_packet_and_reports_its_cost(plain):
    """`python -m bridge.loadtest.relayfloor`, the floor docs/performance.md sets the bridge against:
    2 calls for 1 s, every packet back through the relay process, its CPU a packet printed."""
    out = subprocess.run([sys.executable, "-m", "bridge.loadtest.relayfloor", "--calls", "2", "--seconds", "1",
                          *(["--plain"] if plain else [])], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    sent, back = int(words[words.index("packets") - 1]), int(words[words.index("relayed") - 1])
    assert 190 <= sent <= 210 and back == sent, out.stdout          # 4 streams x 50 a second
    assert ("plain datagrams" in out.stdout) == plain
    float(words[words.index("us") - 1])                          # its cost a packet, a number
