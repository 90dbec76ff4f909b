"""Liveness of a WebRTC peer (bridge/liveness.py) between two aiortc peer connections over real
UDP sockets on 127.0.0.1: media is a sign of life, so is an answered consent check; a peer that
goes deaf is reported once, within the timeout."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from bridge import config
from bridge.audio import ToneTrack
from bridge.liveness import Liveness
from conftest import platform_yaml


async def connected(direction: str) -> tuple[RTCPeerConnection, RTCPeerConnection]:
    a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if direction == "sendrecv":
        a.addTransceiver(ToneTrack(440), direction="sendrecv")
    else:
        a.addTransceiver("audio", direction=direction)
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    if direction == "sendrecv":
        b.getTransceivers()[0].sender.replaceTrack(ToneTrack(700))
        b.getTransceivers()[0].direction = "sendrecv"
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    async with asyncio.timeout(10):
        while not (a.connectionState == b.connectionState == "connected"):
            await asyncio.sleep(0.02)
    return a, b


def go_deaf(pc: RTCPeerConnection) -> None:
    """The peer's sockets stop reading: it neither hears nor answers anything from now on."""
    connection = pc.getTransceivers()[0].receiver.transport.transport._connection
    for protocol in connection._protocols:
        protocol.transport.pause_reading()


async def test_a_peer_sending_nothing_but_answering_consent_checks_stays_alive():
    a, b = await connected("inactive")               # no RTP, no RTCP: only ICE and DTLS
    lost: list[float] = []
    watch = Liveness(a, 2.0, lost.append, interval=0.2)
    watch.start()
    await asyncio.sleep(5)
    assert lost == [] and watch.lost_after is None
    assert watch.probes >= 2 and watch.answers == watch.probes   # the checks kept it alive
    await watch.stop()
    await a.close()
    await b.close()


async def test_media_is_enough_no_consent_check_is_sent():
    a, b = await connected("sendrecv")
    lost: list[float] = []
    watch = Liveness(a, 2.0, lost.append, interval=0.2)
    watch.start()
    await asyncio.sleep(3)
    assert lost == [] and watch.probes == 0
    await watch.stop()
    await a.close()
    await b.close()


async def test_a_deaf_peer_is_reported_once_within_the_timeout():
    a, b = await connected("inactive")
    loop = asyncio.get_running_loop()
    reported: asyncio.Future[float] = loop.create_future()
    calls: list[float] = []

    def on_lost(silent: float) -> None:
        calls.append(silent)
        if not reported.done():
            reported.set_result(loop.time())
    watch = Liveness(a, 2.0, on_lost, interval=0.2)
    watch.start()
    await asyncio.sleep(1)
    assert watch.answers >= 1                        # probes answered until now
    deaf_at = loop.time()
    go_deaf(b)
    at = await asyncio.wait_for(reported, 6)
    # the last answer came at most one probe round (retries 0.5 + 1 s) before the peer went deaf
    assert 2.0 - 1.5 <= at - deaf_at <= 2.0 + 0.2 + 0.3, at - deaf_at
    assert 2.0 <= watch.lost_after < 2.5
    await asyncio.sleep(1)
    assert len(calls) == 1                           # once, and the watch is over
    await watch.stop()
    await a.close()
    await b.close()


def test_liveness_timeout_is_configured_under_webrtc():
    def load(extra: str):
        return config.loads(platform_yaml(8080) + extra, "t.yaml").webrtc.liveness_timeout
    assert load("") == 8.0
    assert load("webrtc: {liveness_timeout: 3s}\n") == 3.0
    assert load("webrtc: {liveness_timeout: off}\n") is None
    with pytest.raises(config.ConfigError, match=r"t.yaml:\d+: webrtc.liveness_timeout: must be 2s to 60s"):
        load("webrtc: {liveness_timeout: 1s}\n")
