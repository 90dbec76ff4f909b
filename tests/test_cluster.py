"""More than one bridge, end to end: Redis, Kamailio with the dispatcher, one platform process,
three `bridge run` nodes, baresip desk phones and SDK users, all real, on 127.0.0.1.

What each test shows is in its name; the bounds (lease 2 s, heartbeat 0.5 s, dispatcher probes
every 1 s with a 2 s timeout) are `cluster.LEASE`/`HEARTBEAT` and `bridge/pbx/kamailio.cfg`.
"""

from __future__ import annotations

import asyncio
import time

from bridge.audio import RATE, tone_analysis
from bridge.reasons import DisconnectReason as R
from cluster import HEARTBEAT, LEASE, Cluster, start_cluster  # noqa: F401  (fixture)
from parties import Party
from testbed import wav_dominant_frequency
from testbed.fixtures import baresip_factory, kamailio_factory, redis_server  # noqa: F401


async def blocking(fn, *args, **kw):
    return await asyncio.to_thread(fn, *args, **kw)


def heard(party: Party, seconds: float = 1.5) -> tuple[float, float]:
    return tone_analysis(party.heard.samples[-int(seconds * RATE):])


def taken(cluster: Cluster) -> list[int]:
    return [n.calls_taken() for n in cluster.nodes]


async def desk_calls_app(cluster: Cluster, phone, agent: Party, pushes, number: str = "7001") -> None:
    """The desk phone dials `number`; the listening app user takes the call."""
    mark = phone.mark()
    await blocking(phone.dial, number)
    push = await pushes.next(timeout=10)
    agent.events = type(agent.events)()
    await agent.verify(push.cc_param)
    await asyncio.wait_for(agent.events.verified.wait(), 5)
    await agent.call.accept_call()
    await blocking(phone.wait_established, 5, mark)


async def test_calls_both_ways_land_on_different_nodes_with_audio(start_cluster, baresip_factory):  # noqa: F811
    cluster = await start_cluster()
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
    freq, snr = await blocking(wav_dominant_frequency, phone.recordings("dec")[0], 1.0)
    assert abs(freq - 440) < 9 and snr > 20, (freq, snr)
