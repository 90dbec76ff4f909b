"""More than one bridge, end to end: Redis, Kamailio with the dispatcher, one platform process,
three `bridge run` nodes, baresip desk phones and SDK users, all real, on 127.0.0.1.

What each test shows is in its name; the bounds (lease 2 s, heartbeat 0.5 s, dispatcher probes
every 1 s with a 2 s timeout) are `cluster.LEASE`/`HEARTBEAT` and `bridge/pbx/kamailio.cfg`.
"""

from __future__ import annotations

import asyncio
import shutil
import time

import aiohttp
import pytest
from aiohttp import web

from bridge.audio import RATE, tone_analysis
from bridge.reasons import DisconnectReason as R
from cluster import HEARTBEAT, LEASE, Cluster, PushRelay, start_cluster  # noqa: F401  (fixture)
from parties import Party
from testbed import wav_dominant_frequency
from testbed.fixtures import baresip_factory, kamailio_factory, redis_server  # noqa: F401


async def blocking(fn, *args, **kw):
    return await asyncio.to_thread(fn, *args, **kw)


def heard(party: Party, seconds: float = 1.5) -> tuple[float, float]:
    return tone_analysis(party.heard.samples[-int(seconds * RATE):])


async def cluster_status(cluster: Cluster) -> str:
    """`bridge cluster status -c FILE` of a node's config: its output."""
    proc = await asyncio.create_subprocess_exec(
        shutil.which("bridge") or pytest.fail("the `bridge` command is not installed"), "cluster", "status",
        "-c", str(cluster.nodes[0].path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out.decode()
    return out.decode()


def taken(cluster: Cluster) -> list[int]:
    return [n.calls_taken() for n in cluster.nodes]


async def desk_calls_app(cluster: Cluster, phone, agent: Party, pushes, number: str = "7001") -> None:
    """The desk phone dials `number`; the listening app user takes the call (`agent`: a new Party
    for each call, its `pushes` from a listener of the same user)."""
    mark = phone.mark()
    await blocking(phone.dial, number)
    push = await pushes.next(timeout=10)
    await agent.verify(push.cc_param)
    await asyncio.wait_for(agent.events.verified.wait(), 5)
    await agent.call.accept_call()
    await blocking(phone.wait_established, 5, mark)


async def test_calls_both_ways_land_on_different_nodes_with_audio(start_cluster, baresip_factory):  # noqa: F811
    # three bridge nodes on two platform nodes: node1 makes its calls on platform1, where the
    # app user listens only on platform0 (a push handed over, a leg relayed between them)
    cluster = await start_cluster(platforms=2)
    phone = baresip_factory("2002", cluster.kamailio, tone_hz=700)
    # desk phone -> app: the dispatcher takes turns among the nodes
    for n in range(3):
        agent = Party(cluster.url, "agent-001", tone=440)
        async with agent.listener(cluster.token("agent-001")) as pushes:
            await desk_calls_app(cluster, phone, agent, pushes)
            if n == 0:
                await asyncio.sleep(4)                       # baresip's audio starts 1-3 s late
                freq, snr = heard(agent)
                assert abs(freq - 700) < 14 and snr > 20, (freq, snr)
            mark = phone.mark()
            await agent.call.end_call()
            await blocking(phone.wait_closed, 5, mark)
    assert taken(cluster) == [1, 1, 1], (taken(cluster), cluster.logs())
    assert "relaying the leg to p1-platform" in cluster.platforms[0].log()
    freq, snr = await blocking(wav_dominant_frequency, phone.recordings("dec")[0], 1.0)
    assert abs(freq - 440) < 9 and snr > 20, (freq, snr)
    # app -> desk phone: alice on platform1 (the push hashes to a node: two nodes at least)
    desk = baresip_factory("2001", cluster.kamailio, tone_hz=700)
    await app_calls_spread(cluster, desk, cluster.platforms[1].platform_url)


async def app_calls_spread(cluster: Cluster, desk, url: str, while_first=None) -> int:
    """alice calls desk phone 2001 until the calls landed on two nodes (each call starts at the
    node its sid hashes to: 8 calls on one node would be a 1 in 3^7 chance); audio checked on
    the first, during which `while_first()` runs. Returns the number of calls."""
    before = taken(cluster)
    for n in range(8):
        alice = Party(url, "alice", tone=1000)
        await alice.make_call(("desk-2001", "demo-desk"), cluster.token("alice"))
        await asyncio.wait_for(alice.events.connected.wait(), 15)
        if n == 0:
            await asyncio.sleep(4)
            freq, snr = heard(alice)
            assert abs(freq - 700) < 14 and snr > 20, (freq, snr)
            if while_first is not None:
                await while_first()
        mark = desk.mark()
        await alice.call.end_call()
        await blocking(desk.wait_closed, 5, mark)
        if sum(1 for a, b in zip(before, taken(cluster)) if b > a) >= 2:
            break
    assert sum(1 for a, b in zip(before, taken(cluster)) if b > a) >= 2, taken(cluster)
    return n + 1


async def test_app_calls_spread_over_the_nodes_and_cluster_status_shows_them(start_cluster, baresip_factory):  # noqa: F811
    cluster = await start_cluster()
    phone = baresip_factory("2001", cluster.kamailio, tone_hz=700)

    async def status_of_one_call() -> None:
        status = await cluster_status(cluster)
        assert "3 live node(s), 0 dead" in status and "bridge: 1/200" in status, status
        assert "route:to_sip:desk-phones: 1/50" in status, status
        for node in cluster.nodes:
            assert f"{node.id}  live" in status and f"127.0.0.1:{node.sip_port}" in status, status
    calls = await app_calls_spread(cluster, phone, cluster.url, status_of_one_call)
    assert sum(taken(cluster)) == calls


async def test_a_push_retried_to_every_node_is_taken_once_and_rings_once(start_cluster, baresip_factory):  # noqa: F811
    # the platform pushes to a relay that sends the same signed push to all three nodes at once,
    # as a pusher retrying on every node (or a load balancer duplicating) would
    answers: list[tuple[int, str]] = []

    async def fan_out(request: web.Request) -> web.Response:
        body, headers = await relay.signed(request)
        async with aiohttp.ClientSession() as http:
            async def post(url: str) -> tuple[int, str]:
                async with http.post(url, data=body, headers=headers) as r:
                    return r.status, (await r.json()).get("status", "")
            answers.extend(await asyncio.gather(*(post(u) for u in relay.nodes)))
        return web.json_response({"status": "relayed"}, status=202)
    relay = PushRelay(fan_out)
    async with relay.running():
        cluster = await start_cluster(edit=relay.edit)
        phone = baresip_factory("2001", cluster.kamailio, tone_hz=700)
        alice = Party(cluster.url, "alice", tone=1000)
        await alice.make_call(("desk-2001", "demo-desk"), cluster.token("alice"))
        await asyncio.wait_for(alice.events.connected.wait(), 15)
        assert sorted(answers) == [(202, "accepted"), (202, "duplicate"), (202, "duplicate")], answers
        assert sorted(taken(cluster)) == [0, 0, 1]
        await asyncio.sleep(1)
        invites = cluster.kamailio.log_text().count("TESTBED INVITE proxy challenge")   # one per new INVITE
        assert invites == 1, f"the phone was called {invites} times"
        mark = phone.mark()
        await alice.call.end_call()
        await blocking(phone.wait_closed, 5, mark)


async def test_a_route_limit_holds_across_nodes(start_cluster, baresip_factory):  # noqa: F811
    cluster = await start_cluster(edit=lambda d: d["routes"]["to_app"][0].update(max_calls=1))
    first, second = baresip_factory("2002", cluster.kamailio), baresip_factory("2003", cluster.kamailio)
    agent = Party(cluster.url, "agent-001")
    async with agent.listener(cluster.token("agent-001")) as pushes:
        await desk_calls_app(cluster, first, agent, pushes)           # node0 takes it: the route is full
        mark = second.mark()
        await blocking(second.dial, "7002")                            # round-robin: node1
        closed = await blocking(second.wait_closed, 10, mark)
        assert "Service Unavailable" in closed["param"], closed      # the node's 503 (a proxy passes on 500)
        assert "route agents is at its limit of 1 calls" in cluster.nodes[1].log()
        assert "TESTBED a bridge node failed" not in cluster.kamailio.log_text(), "a cluster-wide limit is no failover"
        mark = first.mark()
        await agent.call.end_call()
        await blocking(first.wait_closed, 5, mark)
    await asyncio.sleep(0.3)
    agent2 = Party(cluster.url, "agent-002")
    async with agent2.listener(cluster.token("agent-002")) as pushes:
        await desk_calls_app(cluster, second, agent2, pushes, "7002")   # the count was given back
        mark = second.mark()
        await agent2.call.end_call()
        await blocking(second.wait_closed, 5, mark)
    assert taken(cluster) == [1, 0, 1]                                   # node1 refused its one


def node_of(cluster: Cluster, before: list[int]) -> int:
    """The node that took the one call placed since `before = taken(cluster)`."""
    grew = [i for i, (a, b) in enumerate(zip(before, taken(cluster))) if b > a]
    assert len(grew) == 1, (before, taken(cluster))
    return grew[0]


async def test_kill_9_of_a_node_mid_call_ends_its_calls_and_new_calls_go_to_the_survivors(  # noqa: F811
        start_cluster, baresip_factory):
    cluster = await start_cluster()
    k = cluster.kamailio
    desk = baresip_factory("2001", k, tone_hz=700)
    phones = [baresip_factory(ext, k) for ext in ("2002", "2003", "2004")]
    alice = Party(cluster.url, "alice", tone=1000)
    before = taken(cluster)
    await alice.make_call(("desk-2001", "demo-desk"), cluster.token("alice"))
    await asyncio.wait_for(alice.events.connected.wait(), 15)
    victim = node_of(cluster, before)
    # desk phone -> app: one call on each node (the dispatcher takes turns)
    agents, listeners, on_node = [], [], {}
    for n, phone in enumerate(phones):
        agent = Party(cluster.url, f"agent-00{n + 1}")
        listener = agent.listener(cluster.token(agent.user))
        pushes = await listener.__aenter__()
        listeners.append(listener)
        before = taken(cluster)
        await desk_calls_app(cluster, phone, agent, pushes, f"700{n + 1}")
        on_node[node_of(cluster, before)] = (phone, agent)
        agents.append(agent)
    try:
        assert sorted(on_node) == [0, 1, 2]
        await asyncio.sleep(3)
        freq, snr = heard(alice)
        assert abs(freq - 700) < 14 and snr > 20, (freq, snr)
        marks = {id(p): p.mark() for p in [desk, *phones]}
        cluster.nodes[victim].kill()
        killed = time.monotonic()
        # the app users of the dead node: their calls end with a reason at once (the socket drops)
        ended = await alice.ended(LEASE + HEARTBEAT + 2)
        assert ended.reason is R.NETWORK_UNSTABLE, ended
        lost_phone, lost_agent = on_node[victim]
        assert (await lost_agent.ended(LEASE + HEARTBEAT + 2)).reason is R.NETWORK_UNSTABLE
        # its desk phones: a survivor sends BYE once the lease expires
        bound = LEASE + HEARTBEAT + 1.5
        for phone in (desk, lost_phone):
            await blocking(phone.wait_closed, bound, marks[id(phone)])
        took = time.monotonic() - killed
        assert took < bound, took
        reaper_logs = "".join(n.log() for i, n in enumerate(cluster.nodes) if i != victim)
        assert f"node node{victim} is dead" in reaper_logs and "ending 2 SIP call(s) of dead node" in reaper_logs
        # the survivors' calls go on
        for i, (phone, agent) in on_node.items():
            if i != victim:
                assert agent.call.state == "connected" and not phone.wait_event(
                    "CALL_CLOSED", 0.1, marks[id(phone)]), f"node{i}'s call was hurt"
                mark = phone.mark()
                await agent.call.end_call()
                await blocking(phone.wait_closed, 5, mark)
    finally:
        for listener in listeners:
            await listener.__aexit__(None, None, None)
    # new calls: once the dispatcher noticed (its probe times out: <= 1 s interval + 2 s timeout)
    noticed = await cluster.noticed(cluster.nodes[victim], "down", 10)
    print(f"kill -9: phones hung up after {took:.2f} s; the dispatcher noticed after {noticed + took:.2f} s")
    survivors = [n for i, n in enumerate(cluster.nodes) if i != victim]
    before = taken(cluster)
    for n in range(4):
        agent = Party(cluster.url, "agent-009")
        async with agent.listener(cluster.token("agent-009")) as pushes:
            await desk_calls_app(cluster, phones[0], agent, pushes, "7009")
            mark = phones[0].mark()
            await agent.call.end_call()
            await blocking(phones[0].wait_closed, 5, mark)
    for n in range(4):
        bob = Party(cluster.url, "bob")
        await bob.make_call(("desk-2001", "demo-desk"), cluster.token("bob"))
        await asyncio.wait_for(bob.events.connected.wait(), 15)       # a push to the dead node moves on
        mark = desk.mark()
        await bob.call.end_call()
        await blocking(desk.wait_closed, 5, mark)
    after = taken(cluster)
    assert after[victim] == before[victim] and sum(after) - sum(before) == 8
    assert all(after[cluster.nodes.index(s)] > before[cluster.nodes.index(s)] for s in survivors)


async def test_redis_unreachable_is_said_and_fails_new_calls_with_a_reason_then_recovers(  # noqa: F811
        start_cluster, baresip_factory, redis_server):
    cluster = await start_cluster(nodes=2)
    desk = baresip_factory("2001", cluster.kamailio, tone_hz=700)
    phone = baresip_factory("2002", cluster.kamailio)
    alice = Party(cluster.url, "alice", tone=1000)
    await alice.make_call(("desk-2001", "demo-desk"), cluster.token("alice"))
    await asyncio.wait_for(alice.events.connected.wait(), 15)
    redis_server.stop()
    async with asyncio.timeout(5):
        while True:
            statuses = [await n.health() for n in cluster.nodes]
            if all(status == 503 for status, _ in statuses):
                break
            await asyncio.sleep(0.1)
    for _, body in statuses:
        assert body["cluster"]["state"] == "unreachable" and body["role"] == "bridge", body
        assert f"Redis at redis://127.0.0.1:{redis_server.port}" in body["cluster"]["problem"]
    # a new app call: every node refuses the push (503 cluster_unavailable), the caller is told
    bob = Party(cluster.url, "bob")
    started = time.monotonic()
    await bob.make_call(("desk-2002", "demo-desk"), cluster.token("bob"))
    assert (await bob.ended(5)).reason is R.PUSH_ERROR
    assert time.monotonic() - started < 3
    # a desk call: each node answers 503 (Retry-After), the phone hears it at once
    mark = phone.mark()
    started = time.monotonic()
    await blocking(phone.dial, "7001")
    closed = await blocking(phone.wait_closed, 10, mark)
    assert "Service Unavailable" in closed["param"] and time.monotonic() - started < 5, closed
    assert all("invite" in n.log() and "refused: Redis at" in n.log() for n in cluster.nodes)   # failed over
    # the call in progress goes on, and ends normally
    freq, snr = heard(alice)
    assert abs(freq - 700) < 14 and snr > 20, (freq, snr)
    mark = desk.mark()
    await alice.call.end_call()
    await blocking(desk.wait_closed, 5, mark)
    redis_server.start()
    for node in cluster.nodes:
        await node.ready(10)
    await asyncio.sleep(2 * HEARTBEAT)
    carol = Party(cluster.url, "carol")
    await carol.make_call(("desk-2001", "demo-desk"), cluster.token("carol"))
    await asyncio.wait_for(carol.events.connected.wait(), 15)
    async with asyncio.timeout(3 * HEARTBEAT + 1):                 # gauges of the last heartbeat
        while "bridge_cluster_calls 1.0" not in (metrics := await cluster.nodes[0].metrics()):
            await asyncio.sleep(0.1)
    assert "bridge_cluster_up 1.0" in metrics and "bridge_cluster_nodes 2.0" in metrics
    assert "survivor ended this node's calls" not in "".join(n.log() for n in cluster.nodes)
    mark = desk.mark()
    await carol.call.end_call()
    await blocking(desk.wait_closed, 5, mark)


async def test_nodes_that_register_their_own_contacts_take_a_forked_desk_call_once(  # noqa: F811
        start_cluster, baresip_factory):
    cluster = await start_cluster(register=True)
    for node in cluster.nodes:                           # three contacts for the one "bridge" account
        await blocking(cluster.kamailio.wait_log, f"contact=<sip:bridge@127.0.0.1:{node.sip_port}>", 10)
    phone = baresip_factory("2002", cluster.kamailio, tone_hz=700)
    agent = Party(cluster.url, "agent-001", tone=440)
    async with agent.listener(cluster.token("agent-001")) as pushes:
        await desk_calls_app(cluster, phone, agent, pushes)   # Kamailio forks the INVITE to all three
        with pytest.raises(TimeoutError):
            await pushes.next(timeout=1)                       # the app user was rung once
        logs = [n.log() for n in cluster.nodes]
        assert sum("refused" not in lg and ": route agents: call agent-001" in lg for lg in logs) == 1, taken(cluster)
        assert sum(lg.count("(incoming): ended rejected 482") for lg in logs) == 2   # the two losers
        await asyncio.sleep(3)
        freq, snr = heard(agent)
        assert abs(freq - 700) < 14 and snr > 20, (freq, snr)
        mark = phone.mark()
        await agent.call.end_call()
        await blocking(phone.wait_closed, 5, mark)
    assert sorted(taken(cluster)) == [0, 0, 1]


async def test_a_rolling_restart_under_load_loses_no_call(start_cluster, baresip_factory):  # noqa: F811
    cluster = await start_cluster(edit=lambda d: d["bridge"].update(drain_timeout="20s"))
    k = cluster.kamailio
    callees = [baresip_factory(ext, k, tone_hz=700) for ext in ("2001", "2002")]
    callers = [baresip_factory(ext, k, tone_hz=700) for ext in ("2003", "2004")]
    done = asyncio.Event()
    outcomes: list[tuple[str, str]] = []

    async def app_calls_desk(n: int, phone) -> None:
        while not done.is_set():
            user = Party(cluster.url, f"caller-{n}", tone=1000)
            try:
                await user.make_call((f"desk-{phone.ext}", "demo-desk"), cluster.token(user.user))
                await asyncio.wait_for(user.events.connected.wait(), 15)
                await asyncio.sleep(2)
                assert user.call.state == "connected"
                mark = phone.mark()
                await user.call.end_call()
                await blocking(phone.wait_closed, 5, mark)
                outcomes.append(("app->desk", "ok"))
            except BaseException as exc:        # noqa: BLE001 - every failure is the finding
                outcomes.append(("app->desk", f"{type(exc).__name__}: {exc} {user.events.names}"))
                if isinstance(exc, asyncio.CancelledError):
                    raise
                await asyncio.sleep(1)

    async def desk_calls_app_loop(n: int, phone) -> None:
        listening = Party(cluster.url, f"agent-10{n}")
        async with listening.listener(cluster.token(listening.user)) as pushes:
            while not done.is_set():
                agent = Party(cluster.url, listening.user)
                try:
                    await desk_calls_app(cluster, phone, agent, pushes, f"710{n}")
                    await asyncio.sleep(2)
                    assert agent.call.state == "connected"
                    mark = phone.mark()
                    await agent.call.end_call()
                    await blocking(phone.wait_closed, 5, mark)
                    outcomes.append(("desk->app", "ok"))
                except BaseException as exc:    # noqa: BLE001
                    outcomes.append(("desk->app", f"{type(exc).__name__}: {exc}"))
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    await asyncio.sleep(1)

    load = [asyncio.ensure_future(app_calls_desk(n, p)) for n, p in enumerate(callees)]
    load += [asyncio.ensure_future(desk_calls_app_loop(n, p)) for n, p in enumerate(callers)]
    try:
        await asyncio.sleep(3)
        for node in cluster.nodes:                       # one node at a time: drain, stop, start again
            mark = k.log_text()
            drained_with = node.calls_taken()
            started = time.monotonic()
            rc = await asyncio.to_thread(node.stop)
            assert rc == 0, (rc, node.log()[-1500:])
            stopped = time.monotonic() - started
            node.start()
            await node.ready()
            print(f"{node.id}: drained and stopped in {stopped:.1f} s after {drained_with} calls; back")
            await asyncio.sleep(3)
            assert len(k.log_text()) > len(mark)
        await asyncio.sleep(2)
    finally:
        done.set()
        await asyncio.wait(load, timeout=30)
    failed = [o for o in outcomes if o[1] != "ok"]
    assert not failed, failed
    assert len(outcomes) >= 20, outcomes
    assert all(n.calls_taken() > 0 for n in cluster.nodes)   # each restarted node takes calls again
    print(f"rolling restart: {len(outcomes)} calls, none lost")
