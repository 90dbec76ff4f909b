"""End to end: a SIGHUP that renames a route keeps its call limit over the calls in progress."""

from __future__ import annotations

import asyncio
import signal

import yaml

from bridge.reasons import DisconnectReason as R
from parties import Party
from stack import kamailio, start_bridge  # noqa: F401  (fixtures)
from testbed.fixtures import baresip_factory, kamailio_factory  # noqa: F401


async def blocking(fn, *args, **kw):
    return await asyncio.to_thread(fn, *args, **kw)


async def test_a_renamed_route_keeps_its_limit_over_live_calls(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge(lambda d: d["routes"]["to_sip"][0].update(max_calls=1))
    first_phone = baresip_factory("2001", kamailio)
    baresip_factory("2002", kamailio)
    bob = Party(bridge.platform_url, "bob")
    await bob.make_call(("desk-2001", "demo-desk"), bridge.token("bob"))
    await asyncio.wait_for(bob.events.connected.wait(), 15)

    data = yaml.safe_load(bridge.path.read_text())
    assert data["routes"]["to_sip"][0]["name"] == "desk-phones"
    data["routes"]["to_sip"][0]["name"] = "phones"                   # same match, new name
    bridge.path.write_text(yaml.safe_dump(data, sort_keys=False))
    bridge.signal(signal.SIGHUP)
    async with asyncio.timeout(5):
        while "reloaded routes" not in bridge.log():
            await asyncio.sleep(0.1)

    carol = Party(bridge.platform_url, "carol")
    await carol.make_call(("desk-2002", "demo-desk"), bridge.token("carol"))
    assert (await carol.ended(10)).reason is R.SERVICE_BUSY          # bob's call still counts
    assert "route phones is at its limit of 1 calls" in bridge.log()
    assert bob.call.state == "connected"

    mark = first_phone.mark()
    await bob.call.end_call()
    await blocking(first_phone.wait_closed, 5, mark)
    await asyncio.sleep(0.5)                                         # the bridged call releases its count
    dave = Party(bridge.platform_url, "dave")
    await dave.make_call(("desk-2002", "demo-desk"), bridge.token("dave"))
    await asyncio.wait_for(dave.events.connected.wait(), 15)        # released into the renamed route
    await dave.call.end_call()
