"""What may be used once is used once across the cluster, whichever node a copy reaches:
a cc_param across platform nodes (the call's home node holds its callee slot), a signed push
across bridge nodes (its call's claim outlives the signature's replay window). Real Redis,
`bridge platform` and `bridge run` processes, Kamailio, baresip and SDK users on 127.0.0.1."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from bridge.audio import RATE, tone_analysis
from bridge.reasons import DisconnectReason as R, Source
from cluster import PushRelay, start_cluster, start_platforms  # noqa: F401  (fixtures)
from parties import Party
from testbed.fixtures import baresip_factory, kamailio_factory, redis_server  # noqa: F401


async def replayed(node, user: str, cc_param: str) -> R:
    """Someone verifies `cc_param` again on platform node `node`: how the platform ends it."""
    thief = Party(node.platform_url, user)
    await thief.verify(cc_param)
    ended = await thief.ended(5)
    assert ended.source is Source.CLOUD_SERVER and not thief.events.verified.is_set(), ended
    return ended.reason


async def test_a_cc_param_verified_on_one_platform_node_is_refused_on_every_node(start_platforms):  # noqa: F811
    a, b = await start_platforms(2)
    # bob verifies on node b a call homed on node a (his leg relayed there)
    alice = Party(a.platform_url, "alice", tone=1000)
    bob = Party(b.platform_url, "bob", tone=440)
    async with bob.listener(b.token("bob")) as pushes:
        await alice.make_call(bob, a.token("alice"))
        push = await pushes.next(timeout=10)
    await bob.verify(push.cc_param)
    await asyncio.wait_for(bob.events.verified.wait(), 5)
    for node in (a, b, b):                                   # the home node, the relay node, twice
        assert await replayed(node, "bob", push.cc_param) is R.RELEASED_CALL
    await bob.call.accept_call()
    await asyncio.wait_for(alice.events.connected.wait(), 10)
    assert await replayed(a, "bob", push.cc_param) is R.RELEASED_CALL     # connected: still refused
    await asyncio.sleep(2)
    freq, snr = tone_analysis(alice.heard.samples[-int(1.5 * RATE):])     # the call went on untouched
    assert abs(freq - 440) < 10 and snr > 20, (freq, snr)
    # carol verifies on her call's home node a; her cc_param replayed on node b is refused too
    carol, dave = Party(a.platform_url, "carol"), Party(a.platform_url, "dave")
    async with carol.listener(a.token("carol")) as pushes:
        await dave.make_call(carol, a.token("dave"))
        push2 = await pushes.next(timeout=10)
    await carol.verify(push2.cc_param)
    await asyncio.wait_for(carol.events.verified.wait(), 5)
    assert await replayed(b, "carol", push2.cc_param) is R.RELEASED_CALL
    assert "relaying the leg to p0-platform" in b.log()
    # ended calls: their cc_params stay refused on both nodes
    await bob.call.end_call()
    await carol.call.end_call()
    await alice.ended(5)
    await dave.ended(5)
    await asyncio.sleep(0.3)
    for node in (a, b):
        assert await replayed(node, "bob", push.cc_param) is R.RELEASED_CALL
        assert await replayed(node, "carol", push2.cc_param) is R.RELEASED_CALL


async def test_a_signed_push_replayed_to_another_node_after_claim_ttl_is_a_duplicate(  # noqa: F811
        start_cluster, baresip_factory):
    # the platform pushes to a recorder that passes the push to node0 only; later the same
    # signed request goes to node1 and node2, after cluster.claim_ttl (1 s) but well within
    # notifications.replay_window: neither may take the call again
    first: list[tuple[bytes, dict]] = []

    async def record(request: web.Request) -> web.Response:
        body, headers = await relay.signed(request)
        first.append((body, headers))
        async with aiohttp.ClientSession() as http:
            async with http.post(relay.nodes[0], data=body, headers=headers) as r:
                return web.Response(status=r.status, body=await r.read(), content_type="application/json")
    relay = PushRelay(record)

    def edit(d: dict) -> None:
        relay.edit(d)
        d["cluster"] = {"claim_ttl": "1s"}
    async with relay.running():
        cluster = await start_cluster(edit=edit)
        phone = baresip_factory("2001", cluster.kamailio, tone_hz=700)
        alice = Party(cluster.url, "alice", tone=1000)
        await alice.make_call(("desk-2001", "demo-desk"), cluster.token("alice"))
        await asyncio.wait_for(alice.events.connected.wait(), 15)
        await asyncio.sleep(1.5)                              # the plain claim_ttl is over
        body, headers = first[0]
        answers = []
        async with aiohttp.ClientSession() as http:
            for url in relay.nodes[1:]:
                async with http.post(url, data=body, headers=headers) as r:
                    answers.append((r.status, (await r.json()).get("status")))
        assert answers == [(202, "duplicate"), (202, "duplicate")], answers
        assert [n.calls_taken() for n in cluster.nodes] == [1, 0, 0]
        await asyncio.sleep(1)
        invites = cluster.kamailio.log_text().count("TESTBED INVITE proxy challenge")
        assert invites == 1, f"the phone was called {invites} times"
        mark = phone.mark()
        await alice.call.end_call()
        await asyncio.to_thread(phone.wait_closed, 5, mark)
