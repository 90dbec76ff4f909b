"""Operating a cluster: every node's /healthz says its role and the cluster's state, its
/metrics its own calls beside the cluster's gauges, and both follow a node's death. Three
`bridge run` nodes and two `bridge platform` nodes on one Redis, Kamailio with the dispatcher,
baresip desk phones and SDK users, all real, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import time

from cluster import HEARTBEAT, LEASE, start_cluster  # noqa: F401  (fixture)
from parties import Party
from testbed.fixtures import baresip_factory, kamailio_factory, redis_server  # noqa: F401


def gauge(metrics: str, name: str, labels: str = "") -> float:
    """The value of `name{labels}` in Prometheus text (0 if absent); `labels` without braces."""
    total = 0.0
    for m in re.finditer(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", metrics, re.M):
        if labels in (m.group(1) or ""):
            total += float(m.group(2))
    return total


async def test_healthz_and_metrics_say_each_nodes_role_state_and_the_clusters_gauges(  # noqa: F811
        start_cluster, baresip_factory):
    cluster = await start_cluster(platforms=2)
    bridges, platforms = cluster.nodes, cluster.platforms
    everyone = sorted([n.id for n in bridges] + ["p0-platform", "p1-platform"])
    await asyncio.sleep(2 * HEARTBEAT)                          # every node saw every other join
    for node in bridges:
        status, body = await node.health()
        assert status == 200 and body["role"] == "bridge" and body["platform"] == "remote", body
        c = body["cluster"]
        assert (c["node_id"], c["state"], c["redis"]) == (node.id, "up", cluster.redis_url), c
        assert c["live_nodes"] == everyone and c["lease_renewed_seconds_ago"] < LEASE, c
    for i, p in enumerate(platforms):
        status, body = await p.health()
        assert status == 200 and body["role"] == "platform", body
        assert (body["cluster"]["node_id"], body["cluster"]["state"]) == (f"p{i}-platform", "up"), body
        assert body["cluster"]["live_nodes"] == everyone, body
    # three app -> desk calls at once: each node counts its own, every node the cluster's three
    phones = [baresip_factory(ext, cluster.kamailio) for ext in ("2001", "2002", "2003")]
    callers = [Party(cluster.platforms[i % 2].platform_url, f"caller-{i}", tone=1000) for i in range(3)]
    for i, caller in enumerate(callers):
        await caller.make_call((f"desk-{2001 + i}", "demo-desk"), cluster.token(caller.user))
    for caller in callers:
        await asyncio.wait_for(caller.events.connected.wait(), 15)
    await asyncio.sleep(2 * HEARTBEAT)
    texts = [await n.metrics() for n in bridges]
    own = [gauge(t, "bridge_active_calls") for t in texts]
    assert sum(own) == 3 and own == [n.calls_taken() for n in bridges], own
    for t in texts + [await p.metrics() for p in platforms]:
        assert gauge(t, "bridge_cluster_up") == 1 and gauge(t, "bridge_cluster_nodes") == 5, t[-2000:]
        assert gauge(t, "bridge_cluster_calls") == 3, t[-2000:]
    assert sum(gauge(t, "bridge_platform_active_calls") for t in [await p.metrics() for p in platforms]) == 3
    # kill -9 of a node with calls: within a lease and a heartbeat one survivor reaped it, and
    # every node's health and gauges say so
    victim = max(range(3), key=lambda i: own[i])
    lost = int(own[victim])
    bridges[victim].kill()
    started = time.monotonic()
    survivors = [n for i, n in enumerate(bridges) if i != victim]
    while True:
        bodies = [(await n.health())[1] for n in survivors] + [(await p.health())[1] for p in platforms]
        if all(bridges[victim].id not in b["cluster"]["live_nodes"] for b in bodies):
            break
        assert time.monotonic() - started < LEASE + 2 * HEARTBEAT + 1, bodies
        await asyncio.sleep(0.1)
    await asyncio.sleep(2 * HEARTBEAT)
    texts = [await n.metrics() for n in survivors] + [await p.metrics() for p in platforms]
    assert sum(gauge(t, "bridge_cluster_reaped_nodes") for t in texts) == 1, [t[-1500:] for t in texts]
    assert sum(gauge(t, "bridge_cluster_reaped_calls") for t in texts) == lost
    for t in texts:
        assert gauge(t, "bridge_cluster_nodes") == 4 and gauge(t, "bridge_cluster_calls") == 3 - lost, t[-2000:]
    for caller in callers:
        await caller.call.end_call()
