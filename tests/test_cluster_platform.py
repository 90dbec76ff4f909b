"""Several platform nodes serve one service (`bridge platform` processes on one Redis): a caller
on one node and a callee on another talk as if on one node; busy is known across nodes; an app
server's REST requests reach a call from any node; a home node that dies ends the legs other
nodes relay to it. SDK users with audio checked by FFT."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from bridge import callbacks
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
    status, body = await rest(b, "GET", alice.call.sid)        # its record is there, its node is not
    assert status == 503 and body["error"] == "home_unreachable", body
    ended = await bob.ended(LEASE + 2 * HEARTBEAT + 2)
    assert ended.reason is R.SERVICE_MAINTENANCE and time.monotonic() - started < LEASE + 2 * HEARTBEAT + 1.5
    assert "platform node p0-platform died" in b.log()
    await asyncio.sleep(2 * HEARTBEAT)
    assert (await rest(b, "GET", alice.call.sid))[0] == 404   # reaped: the call is gone


async def rest(node, method: str, sid: str, service: str = "demo-app") -> tuple[int, dict]:
    """An app server's signed request to /v1/calls/{sid} on platform node `node`."""
    s = node.cfg.platform.services[service]
    path = f"/v1/calls/{sid}"
    headers = {callbacks.API_KEY: s.api_key, **callbacks.signed_headers(s.api_secret, f"{method} {path}")}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, node.platform_url + path, headers=headers) as r:
            return r.status, await r.json()


async def test_an_app_servers_rest_requests_reach_a_call_from_any_platform_node(start_platforms):  # noqa: F811
    a, b = await start_platforms(2)
    alice, bob = await call_across(a, b)                     # homed on node a
    sid = alice.call.sid
    for node in (a, b):
        status, body = await rest(node, "GET", sid)
        assert status == 200 and (body["sid"], body["state"]) == (sid, "connected"), body
        assert (body["from"], body["to"]) == ("alice@demo-app", "bob@demo-app") and body["start_time"], body
    assert await rest(b, "GET", "no-such-call") == (404, {"error": "unknown_call", "message": "no active call with "
                                                           "this sid"})
    assert (await rest(b, "GET", sid, service="demo-desk"))[0] == 404     # another service's call
    status, body = await rest(b, "DELETE", sid)              # ended by its home node, asked on node b
    assert (status, body) == (200, {"sid": sid, "state": "ended"}), body
    for party in (alice, bob):
        ended = await party.ended(5)
        assert (ended.reason, ended.source) == (R.NORMAL, Source.APP_SERVER), (party.user, ended)
    for node in (a, b):
        assert (await rest(node, "GET", sid))[0] == 404

