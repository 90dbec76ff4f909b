"""The cluster's shared state on a real Redis: claims, limits, leases, reaping, Redis going away.

Several nodes here are `Membership`s in one test process, each with its own Redis connections,
exactly as separate processes would hold them; the end-to-end tests (`test_cluster.py`) run
them as `bridge run` subprocesses.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bridge import config
from bridge.cluster.config import ClusterConfig
from bridge.cluster.membership import Membership
from bridge.cluster.node import Node, NodeIdInUse
from bridge.cluster.store import RedisDown, Store
from bridge.cluster import dialogs
from testbed.fixtures import redis_server  # noqa: F401

LEASE, BEAT = 1.0, 0.25


def cluster_cfg(url: str, node: str, **kw) -> ClusterConfig:
    return ClusterConfig(redis_url=url, node_id=node, lease=kw.pop("lease", LEASE), heartbeat=BEAT,
                         redis_timeout=kw.pop("redis_timeout", 0.2), **kw)


@pytest.fixture
async def nodes(redis_server):  # noqa: F811
    made: list[Membership] = []

    async def make(name: str, role: str | None = None, **kw) -> Membership:
        m = Membership(cluster_cfg(redis_server.url, name, **kw))
        await m.join({"sip": name, **({"role": role} if role else {})})
        made.append(m)
        return m
    yield make
    for m in made:
        await m.leave()


async def die(m: Membership) -> None:
    """As kill -9 would: the heartbeat stops, the lease is left to expire, nothing is cleaned."""
    task = m.node._task
    assert task is not None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    m.node._task = None
    await m.store.close()


async def test_one_claim_wins_however_many_nodes_race_for_it(nodes):
    a, b, c = await nodes("a"), await nodes("b"), await nodes("c")
    results = await asyncio.gather(*(m.claims.take("push", "sid-1") for m in (a, b, c) for _ in range(10)))
    assert sorted(results) == [False] * 29 + [True]
    holder = await a.claims.holder("push", "sid-1")
    others = [m for m in (a, b, c) if m.id != holder]
    await others[0].claims.give_back("push", "sid-1")            # not its claim: stays
    assert await a.claims.holder("push", "sid-1") == holder
    winner = next(m for m in (a, b, c) if m.id == holder)
    await winner.claims.give_back("push", "sid-1")
    assert await others[1].claims.take("push", "sid-1")           # given back: a failover may take it


async def test_a_claim_expires_by_itself(nodes):
    a, b = await nodes("a", claim_ttl=0.3), await nodes("b", claim_ttl=0.3)
    assert await a.claims.take("invite", "call-1@pbx")
    assert not await b.claims.take("invite", "call-1@pbx")
    await asyncio.sleep(0.4)
    assert await b.claims.take("invite", "call-1@pbx")


async def test_a_route_limit_holds_across_nodes_and_all_or_nothing(nodes):
    a, b, c = await nodes("a"), await nodes("b"), await nodes("c")
    route = [("bridge", 5), ("route:to_app:agents", 2)]
    refused = await asyncio.gather(*(m.limits.take(route) for m in (a, b, c) for _ in range(4)))
    assert sum(r is None for r in refused) == 2
    assert {r for r in refused if r is not None} == {"route:to_app:agents"}
    assert await a.limits.total("route:to_app:agents") == 2
    assert await a.limits.total("bridge") == 2                    # the refused ones counted nowhere
    taker = next(m for m in (a, b, c) if m.limits.held["route:to_app:agents"])
    await taker.limits.give_back(["bridge", "route:to_app:agents"])
    assert await b.limits.take(route) is None
    assert await c.limits.take(route) == "route:to_app:agents"


async def test_a_dead_nodes_calls_are_released_when_its_lease_expires_and_it_is_reaped_once(nodes):
    a, b, c = await nodes("a"), await nodes("b"), await nodes("c")
    reaped: list[tuple[str, str]] = []
    for m in (b, c):
        m.node.on_dead["dialogs"] = lambda dead, me=m.id: _note(reaped, me, dead)
    scope = [("route:to_sip:desk", 2)]
    assert await a.limits.take(scope) is None and await a.limits.take(scope) is None
    assert await b.limits.take(scope) == "route:to_sip:desk"
    await die(a)
    died = time.monotonic()
    while await b.limits.take(scope) is not None:
        assert time.monotonic() - died < LEASE + 0.5, "a dead node's calls still count after its lease"
        await asyncio.sleep(0.05)
    released = time.monotonic() - died
    assert released <= LEASE + 0.3
    deadline = time.monotonic() + LEASE + 2 * BEAT + 1
    while not reaped and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(3 * BEAT)                               # a second reaper would show up by now
    assert [dead for _, dead in reaped] == ["a"], reaped
    assert sorted(b.node.alive) == ["b", "c"]


async def test_a_survivor_that_saw_the_dead_node_before_another_reaped_it_does_not_reap_it_again(nodes):
    # the race the test above can lose one run in many: c lists the members while a is still one,
    # b reaps a completely (its record and membership go), then c reaps from its stale list
    a, b, c = await nodes("a"), await nodes("b"), await nodes("c")
    reaped: list[tuple[str, str]] = []
    for m in (b, c):
        m.node.on_dead["dialogs"] = lambda dead, me=m.id: _note(reaped, me, dead)
    await die(a)
    for m in (b, c):                     # no heartbeat of their own: the test drives the reaping
        m.node._task.cancel()
        await asyncio.gather(m.node._task, return_exceptions=True)
        m.node._task = None
    await asyncio.sleep(LEASE + 0.2)
    await b.node._reap("a")
    assert reaped == [("b", "a")]
    await c.node._reap("a")              # a is gone from the cluster: nothing left to end
    assert reaped == [("b", "a")]
    assert sorted(await c.store.client.smembers(c.node.nodes_key)) == ["b", "c"]


async def _note(reaped: list, me: str, dead: str) -> None:
    reaped.append((me, dead))


async def test_a_dead_nodes_dialogs_are_handed_to_its_reaper(nodes, redis_server):  # noqa: F811
    a, b = await nodes("a"), await nodes("b")
    got: list[list[dict]] = []

    async def reap(dead: str) -> None:
        got.append(await dialogs.left_open(b.store, dead))
    b.node.on_dead["dialogs"] = reap
    a.dialogs.start()
    a.dialogs.write({"op": "invite", "call_id": "c1", "request": "INVITE ...", "dest": ["127.0.0.1", 5060]})
    a.dialogs.write({"op": "up", "call_id": "c2", "dialog": {"call_id": "c2"}})
    a.dialogs.write({"op": "up", "call_id": "c1", "dialog": {"call_id": "c1"}})
    a.dialogs.write({"op": "invite", "call_id": "c3", "request": "INVITE ...", "dest": ["127.0.0.1", 5060]})
    a.dialogs.write({"op": "down", "call_id": "c2"})
    await a.dialogs.stop()
    await die(a)
    async with asyncio.timeout(LEASE + 3 * BEAT + 1):
        while not got:
            await asyncio.sleep(0.05)
    assert sorted((e["call_id"], e["op"]) for e in got[0]) == [("c1", "up"), ("c3", "invite")]
    assert await dialogs.left_open(b.store, "a") == []            # forgotten once reaped


async def test_a_dead_nodes_parts_are_ended_by_survivors_that_can_end_them(nodes):
    # a dead bridge node's dialogs wait for a bridge node (the platform nodes cannot send BYE),
    # a dead platform node's calls for a platform node; each part is ended once
    ended: list[tuple[str, str, str]] = []

    def can_end(m: Membership, *parts: str) -> Membership:
        for part in parts:
            m.node.on_dead[part] = lambda dead, me=m.id, part=part: _note(ended, me, f"{dead} {part}")
        return m
    p1 = can_end(await nodes("p1", role="platform"), "platform")
    p2 = can_end(await nodes("p2", role="platform"), "platform")
    b1 = await nodes("b1", role="bridge")
    b2 = await nodes("b2", role="bridge+platform")
    await die(b1)
    await die(b2)
    async with asyncio.timeout(LEASE + 4 * BEAT + 1):
        while len(ended) < 1:
            await asyncio.sleep(0.05)
    await asyncio.sleep(LEASE)                                  # time enough for a wrong reaper
    assert [what for _, what in ended] == ["b2 platform"], ended
    assert sorted(p1.node.alive) == ["p1", "p2"]
    assert {"b1", "b2"} <= set(await p1.store.client.smembers("bridge:nodes")), "not yet reaped: still listed"
    b3 = can_end(await nodes("b3", role="bridge"), "dialogs")  # a bridge node joins: it ends the rest
    async with asyncio.timeout(3 * BEAT + 1):
        while len(ended) < 3:
            await asyncio.sleep(0.05)
    await asyncio.sleep(3 * BEAT)
    assert sorted(what for _, what in ended) == ["b1 dialogs", "b2 dialogs", "b2 platform"], ended
    assert {me for me, what in ended if "dialogs" in what} == {"b3"}
    assert sorted(await p1.store.client.smembers("bridge:nodes")) == ["b3", "p1", "p2"]
    assert b3.node.reaped == 2 and p1.node.reaped + p2.node.reaped == 1


async def test_a_node_id_held_by_a_live_node_is_refused(nodes, redis_server):  # noqa: F811
    await nodes("same")
    store = Store(cluster_cfg(redis_server.url, "same"))
    twin = Node(cluster_cfg(redis_server.url, "same"), store)
    started = time.monotonic()
    with pytest.raises(NodeIdInUse, match="held by another live node"):
        await twin._take_lease()
    assert time.monotonic() - started < LEASE + BEAT + 1
    await store.close()


async def test_a_restarted_node_waits_out_its_killed_predecessors_lease(nodes, redis_server):  # noqa: F811
    first = await nodes("n1")
    await die(first)
    started = time.monotonic()
    again = await nodes("n1")
    assert again.node.healthy and time.monotonic() - started <= LEASE + 0.5


async def test_redis_unreachable_fails_fast_says_so_and_recovers(nodes, redis_server):  # noqa: F811
    a = await nodes("a")
    assert a.node.healthy
    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(RedisDown, match=f"Redis at redis://127.0.0.1:{redis_server.port}"):
        await a.claims.take("push", "sid-x")
    with pytest.raises(RedisDown):
        await a.limits.take([("bridge", 10)])
    assert time.monotonic() - started < 2, "a Redis command must fail within its timeout, not hang"
    async with asyncio.timeout(3):
        while a.node.healthy:
            await asyncio.sleep(0.05)
    assert a.health()["state"] == "unreachable" and "Redis at" in a.health()["problem"]
    redis_server.start()                                          # same port, empty (no persistence)
    async with asyncio.timeout(5):
        while not a.node.healthy:
            await asyncio.sleep(0.05)
    assert await a.claims.take("push", "sid-x")


async def test_counts_come_back_when_a_node_returns_after_redis_lost_them(nodes, redis_server):  # noqa: F811
    a = await nodes("a")
    assert await a.limits.take([("bridge", 3)]) is None
    assert await a.limits.take([("bridge", 3)]) is None
    redis_server.stop()
    await a.limits.give_back(["bridge"])                          # Redis misses it: kept for later
    redis_server.start()
    async with asyncio.timeout(5):
        while await _total(a) != 1:
            await asyncio.sleep(0.05)


async def _total(m: Membership) -> int | None:
    try:
        return await m.limits.total("bridge")
    except RedisDown:
        return None


def test_cluster_config_errors_name_file_line_and_key():
    base = (Path(config.__file__).parents[2] / "config.yaml").read_text()
    with pytest.raises(config.ConfigError) as exc:
        config.loads(base + "cluster:\n  redis_url: http://127.0.0.1:6379\n  heartbeat: 4s\n  node_id: a/b\n",
                      "c.yaml", env={})
    lines = base.count("\n")
    assert f"c.yaml:{lines + 2}: cluster.redis_url: must be a redis://" in str(exc.value)
    assert f"c.yaml:{lines + 3}: cluster.heartbeat: must be at most half of cluster.lease" in str(exc.value)
    assert f"c.yaml:{lines + 4}: cluster.node_id: must be 1-64" in str(exc.value)
    cfg = config.loads(base + "cluster:\n  redis_url_env: R\n", "c.yaml", env={"R": "redis://:pw@10.0.0.5:6379/2"})
    assert cfg.cluster is not None and cfg.cluster.redis_where == "redis://10.0.0.5:6379/2"
    assert cfg.cluster.node_id.endswith("-5080")                  # host name and SIP port
    assert "pw" not in repr(cfg.cluster)
    assert [s.source for s in cfg.secrets if s.keypath == "cluster.redis_url"] == ["env"]
    assert config.loads(base, "c.yaml", env={}).cluster is None   # no section: alone, in memory


async def test_a_node_cut_off_past_its_lease_learns_it_was_reaped(nodes):
    a, b = await nodes("a"), await nodes("b")
    told: list[str] = []

    async def reaped() -> None:
        told.append("reaped")
    a.node.on_reaped.append(reaped)
    task = a.node._task                           # a's heartbeats stop (a stalled or cut-off process)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    async with asyncio.timeout(LEASE + 4 * BEAT + 1):
        while b.node.reaped == 0:
            await asyncio.sleep(0.05)
    await a.node.beat()                           # a comes back
    assert told == ["reaped"] and a.node.healthy
    assert sorted(b.node.alive) == ["a", "b"] or (await b.node.beat(), sorted(b.node.alive))[1] == ["a", "b"]


async def test_a_redis_restarted_empty_is_not_a_reaping_and_gets_the_state_back(nodes, redis_server):  # noqa: F811
    a = await nodes("a")
    told: list[str] = []

    async def reaped() -> None:
        told.append("reaped")
    a.node.on_reaped.append(reaped)
    a.dialogs.start()
    a.dialogs.write({"op": "up", "call_id": "c1", "dialog": {"call_id": "c1"}})
    assert await a.limits.take([("bridge", 5)]) is None
    async with asyncio.timeout(2):
        while not await dialogs.left_open(a.store, "a"):
            await asyncio.sleep(0.05)
    redis_server.stop()
    redis_server.start()                          # empty: no persistence
    async with asyncio.timeout(LEASE + 2):
        while await _total(a) != 1 or not await dialogs.left_open(a.store, "a"):
            await asyncio.sleep(0.05)
    assert told == [], "a Redis that lost its data must not end this node's calls"
    assert [e["call_id"] for e in await dialogs.left_open(a.store, "a")] == ["c1"]


def test_push_url_takes_a_list_of_nodes_and_names_a_bad_one():
    base = (Path(config.__file__).parents[2] / "config.yaml").read_text()
    one = "push_url: http://127.0.0.1:8081/v1/notifications"
    assert one in base
    listed = base.replace(one, "push_url: [http://10.0.0.11:8081/v1/notifications, http://10.0.0.12:8081/v1/notifications]")
    cfg = config.loads(listed, "c.yaml", env={})
    desk = cfg.platform.services["demo-desk"]
    assert desk.push_urls == ("http://10.0.0.11:8081/v1/notifications", "http://10.0.0.12:8081/v1/notifications")
    assert desk.push_url == desk.push_urls[0]
    line = base[:base.index(one)].count("\n") + 1
    for bad, message in (("push_url: []", "must be an http(s) URL or a non-empty list"),
                         ("push_url: [http://10.0.0.11:8081/x, ftp://10.0.0.12/x]", "is not an http(s) URL")):
        with pytest.raises(config.ConfigError) as exc:
            config.loads(base.replace(one, bad), "c.yaml", env={})
        assert f"c.yaml:{line}: platform.services.demo-desk.push_url: " in str(exc.value), exc.value
        assert message in str(exc.value)
