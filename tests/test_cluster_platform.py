"""Several platform nodes serve one service (`bridge platform` processes on one Redis): a caller
on one node and a callee on another talk as if on one node; busy is known across nodes; a home
node that dies ends the legs other nodes relay to it. SDK users with audio checked by FFT."""

from __future__ import annotations

import asyncio
import time

from bridge.audio import RATE, tone_analysis
from bridge.reasons import DisconnectReason as R, Source
from cluster import HEARTBEAT, LEASE, start_platforms  # noqa: F401  (fixture)
from parties import Party
from testbed.fixtures import kamailio_factory, redis_server  # noqa: F401


def heard(party: Party, seconds: float = 1.5) -> tuple[float, float]:
    return tone_analysis(party.heard.samples[-int(seconds * RATE):])


async def call_across(a, b) -> tuple[Party, Party]:
    """alice on node a calls bob, who listens and verifies on node b; both connected."""
    alice, bob = Party(a.platform_url, "alice", tone=1000), Party(b.platform_url, "bob", tone=440)
    async with bob.listener(b.token("bob")) as pushes:
        await alice.make_call(bob, a.token("alice"))
        push = await pushes.next(timeout=10)                   # handed from node a to node b
    await bob.verify(push.cc_param)
    await asyncio.wait_for(bob.events.verified.wait(), 5)
    await bob.call.accept_call()
    await asyncio.wait_for(alice.events.connected.wait(), 10)
    await asyncio.wait_for(bob.events.connected.wait(), 10)
    return alice, bob


async def test_a_caller_and_a_callee_on_different_platform_nodes_talk(start_platforms):  # noqa: F811
    a, b = await start_platforms(2)
    alice, bob = await call_across(a, b)
    assert "relaying the leg to p0-platform" in b.log()
    await asyncio.sleep(3)
    for party, tone in ((alice, 440), (bob, 1000)):
        freq, snr = heard(party)
        assert abs(freq - tone) < 10 and snr > 20, (party.user, freq, snr)
    # busy is known across nodes: bob is in a call homed on node a; carol calls him on node b
    carol = Party(b.platform_url, "carol")
    await carol.make_call(bob, b.token("carol"))
    assert (await carol.ended(5)).reason is R.BUSY
    await bob.call.end_call()
    ended = await alice.ended(5)
    assert (ended.reason, ended.source) == (R.NORMAL, Source.CALLEE)
    await asyncio.sleep(0.3)
    dave = Party(b.platform_url, "dave")                     # bob is free again, on either node
    async with bob.listener(b.token("bob")):
        await dave.make_call(bob, b.token("dave"))
        await asyncio.wait_for(dave.events.wait_connected.wait(), 5)
    await dave.call.end_call()


async def test_the_legs_relayed_to_a_dead_platform_node_end_with_a_reason(start_platforms):  # noqa: F811
    a, b = await start_platforms(2)
    alice, bob = await call_across(a, b)
    a.proc.kill()                                              # kill -9 of the call's home node
    a.proc.wait(5)
    started = time.monotonic()
    ended = await bob.ended(LEASE + 2 * HEARTBEAT + 2)
    assert ended.reason is R.SERVICE_MAINTENANCE and time.monotonic() - started < LEASE + 2 * HEARTBEAT + 1.5
    assert "platform node p0-platform died" in b.log()
