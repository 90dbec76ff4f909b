"""`bridge loadtest` drives a cluster: the nodes' CPU and metrics summed, Redis's cost per call.

The bounded run (always): 2 nodes, 4 calls of 10 s. The sweep behind the opt-in marker
`cluster_perf` (`pytest -m cluster_perf tests/test_cluster_loadtest.py -s`; BRIDGE_PERF_CALLS,
BRIDGE_PERF_SECONDS) runs 1, 2 and 3 nodes with the same load and prints one line per run:
the numbers of docs/performance.md's cluster table.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import zlib

import pytest

from cluster import start_cluster  # noqa: F401  (fixture)
from stack import ROOT
from testbed.fixtures import kamailio_factory, redis_server  # noqa: F401


def quiet(d: dict) -> None:
    d["log_level"] = "info"              # debug logs of many calls cost CPU
    for route in d["routes"]["to_sip"]:
        route["max_calls"] = max(route.get("max_calls") or 0, 200)    # the sample's 50 bounds a sweep


async def loadtest(cluster, tmp_path, calls: int, seconds: float) -> dict:
    report_path = tmp_path / f"report-{len(cluster.nodes)}-{calls}.json"
    proc = await asyncio.create_subprocess_exec(
        shutil.which("bridge") or pytest.fail("the `bridge` command is not installed: run tests/run"),
        "loadtest", "-c", str(cluster.nodes[0].path), "--calls", str(calls), "--duration", str(seconds),
        "--ramp", "4", "--pesq-calls", "0", "--far-end-password", cluster.kamailio.users["2002"],
        "--far-end-rtp-ports", "42000-42999", "--json", str(report_path), "--quiet",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 120)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("bridge loadtest did not finish in time")
    text = out.decode(errors="replace")
    print(text[-2500:])
    assert proc.returncode in (0, 1), text[-3000:]
    return json.loads(report_path.read_text())


def per_node_sids(cluster) -> list[list[str]]:
    return [re.findall(r"notification: call (\S+) from", n.log()) for n in cluster.nodes]


def per_node_calls(cluster) -> list[int]:
    return [len(sids) for sids in per_node_sids(cluster)]


async def test_loadtest_drives_a_cluster_and_reports_redis_cost(start_cluster, tmp_path):  # noqa: F811
    cluster = await start_cluster(nodes=2, edit=quiet)
    report = await loadtest(cluster, tmp_path, calls=4, seconds=10)
    assert report["summary"]["calls"]["completed"] == 4, report["failures"]
    assert len(report["bridge"]["healthz"]["pids"]) == 2
    c = report["cluster"]
    assert c["nodes"] == 2 and 5 < c["redis_commands_per_call"] < 500, c
    assert report["bridge"]["metrics"]["calls"] == {"app_to_sip/normal": 4}, report["bridge"]["metrics"]
    # spread over both: each call went to the node its sid hashes to (the platform's push_url order)
    sids = per_node_sids(cluster)
    assert sum(map(len, sids)) == 4, sids
    assert all(zlib.crc32(sid.encode()) % 2 == i for i, node in enumerate(sids) for sid in node), sids


@pytest.mark.cluster_perf
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("nodes", [1, 2, 3])
async def test_cluster_sweep(start_cluster, tmp_path, nodes):  # noqa: F811
    calls = int(os.environ.get("BRIDGE_PERF_CALLS", "40"))
    seconds = float(os.environ.get("BRIDGE_PERF_SECONDS", "30"))
    cluster = await start_cluster(nodes=nodes, edit=quiet)
    report = await loadtest(cluster, tmp_path, calls, seconds)
    s, c = report["summary"], report["cluster"]
    targets = sum(1 for t in report["targets"] if t["pass"]), sum(1 for t in report["targets"] if t["pass"] is not None)
    cpu = s["bridge_process"]["cpu_pct_at_peak_concurrency"].get("mean") or s["bridge_process"]["cpu_pct"].get("mean")
    peak = s["calls"]["peak_concurrent"]
    print(f"PERF nodes={nodes} calls={calls} completed={s['calls']['completed']} failed={s['calls']['failed']} "
          f"targets={targets[0]}/{targets[1]} bridge_cpu_pct={cpu} cpu_per_call_pct={cpu / max(1, peak):.2f} "
          f"redis_cmds_per_call={c['redis_commands_per_call']} redis_usec_per_call={c['redis_usec_per_call']} "
          f"redis_cpu_ms_per_call={c['redis_cpu_ms_per_call']} per_node={per_node_calls(cluster)} "
          f"failed_targets={[t['name'] for t in report['targets'] if t['pass'] is False]}")
