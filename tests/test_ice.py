"""ICE addresses of the bridge's app legs: a 1:1 NAT's public address beside the host candidates.

What is checked: each IPv4 host candidate gets a server-reflexive twin at `webrtc.public_address`
with the same port (what a client beyond the NAT reaches, forwarded to that port), related to the
host candidate; a client on the LAN still pairs with the host candidate and the call connects.
Not checked here: a real NAT (the test bed has none).
"""

from __future__ import annotations

import asyncio

from aiortc import RTCConfiguration, RTCPeerConnection

from bridge import ice


def candidates(sdp: str) -> list[list[str]]:
    return [line.split()[4:] for line in sdp.splitlines() if line.startswith("a=candidate:")]


async def test_public_address_is_a_srflx_twin_of_each_host_candidate():
    ice.use_public_address("203.0.113.7")
    try:
        bridge, client = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
        client.addTransceiver("audio")
        await client.setLocalDescription(await client.createOffer())
        await bridge.setRemoteDescription(client.localDescription)
        await bridge.setLocalDescription(await bridge.createAnswer())
    finally:
        ice.use_public_address(None)
    offered = candidates(bridge.localDescription.sdp)
    hosts = [c for c in offered if c[3] == "host"]
    public = [c for c in offered if c[3] == "srflx"]
    assert hosts and [c[0] for c in hosts] == ["127.0.0.1"], offered
    assert [(c[0], c[1], c[5], c[7]) for c in public] == [("203.0.113.7", h[1], "127.0.0.1", h[1]) for h in hosts]
    await client.setRemoteDescription(bridge.localDescription)
    async with asyncio.timeout(5):                      # the LAN client pairs with the host candidate
        while client.connectionState != "connected":
            await asyncio.sleep(0.05)
    await client.close()
    await bridge.close()
    # and without a public address, no srflx candidate appears
    plain = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    plain.addTransceiver("audio")
    await plain.setLocalDescription(await plain.createOffer())
    assert not [c for c in candidates(plain.localDescription.sdp) if c[3] == "srflx"]
    await plain.close()
