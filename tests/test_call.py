"""Two app users call each other through the platform; tones are checked by FFT."""

from __future__ import annotations

import asyncio
import gc
import weakref

import numpy as np
import pytest
from aiohttp import web

from bridge import config, httpguard
from bridge.audio import RATE, tone_analysis
from bridge.platform import Platform

from bridge.reasons import DisconnectReason as R, Source
from conftest import RunningPlatform, free_port, platform_yaml
from parties import Party


def assert_tone(samples: np.ndarray, freq: float) -> None:
    # skip the first 0.5 s of the connected call (jitter buffer fill), analyse 1.5 s
    assert len(samples) >= 2 * RATE, f"only {len(samples) / RATE:.2f} s of audio received"
    found, snr = tone_analysis(samples[-int(1.5 * RATE):])
    assert abs(found - freq) < freq * 0.02, f"expected {freq} Hz, found {found:.1f} Hz (SNR {snr:.1f} dB)"
    assert snr > 20, f"{freq} Hz found but SNR only {snr:.1f} dB"


async def talk(alice: Party, bob: Party, seconds: float = 2.5) -> None:
    await asyncio.wait_for(alice.events.connected.wait(), 10)
    await asyncio.wait_for(bob.events.connected.wait(), 10)
    # what each heard before this point was pre-answer silence; keep only the connected part
    alice.heard._chunks.clear()
    bob.heard._chunks.clear()
    await asyncio.sleep(seconds)


async def test_tones_both_ways_with_embedded_push(start_platform, app_server):
    p = await start_platform(event_url=app_server.url + "/event")
    alice = Party(p.url, "alice", tone=1000)
    bob = Party(p.url, "bob", tone=440)
    async with bob.listener(p.token("bob")) as pushes:
        await alice.make_call(bob, p.token("alice"), app_server_data="order-42")
        push = await pushes.next(timeout=10)
        assert (push.app_callee_uid, push.app_callee_sid, push.app_call_type) == ("bob", "demo-app", "audio")
        await bob.verify(push.cc_param)
        await asyncio.wait_for(bob.events.verified.wait(), 5)
        assert bob.call.peer.peer_id == "alice" and bob.call.peer.app_server_data == "order-42"
        await bob.call.accept_call()
        await talk(alice, bob)
        assert_tone(bob.heard.samples, 1000)
        assert_tone(alice.heard.samples, 440)
        await alice.call.end_call()
    for party in (alice, bob):
        ended = await party.ended()
        assert (ended.reason, ended.source) == (R.NORMAL, Source.CALLER)
    assert alice.events.names == ["wait_connected", "connected", "disconnected"]
    assert bob.events.names == ["verified", "connected", "disconnected"]
    event = await app_server.event_for(alice.call.sid)
    assert event["disconnect_reason"] == "1001" and event["terminate"] == "16"
    assert event["releaser_type"] == "2" and event["app_svr_data"] == "order-42"
    assert float(event["duration"]) >= 2.5
    assert int(event["start_time"]) >= int(event["setup_time"]) and int(event["end_time"]) >= int(event["start_time"])
    assert app_server.bad_signatures == 0


async def test_tones_both_ways_with_notify_callback(start_platform, app_server):
    p = await start_platform(notify_url=app_server.url + "/notify", event_url=app_server.url + "/event")
    alice = Party(p.url, "alice", tone=1000)
    bob = Party(p.url, "bob", tone=440)
    await alice.make_call(bob, p.token("alice"))
    push = await app_server.next_push()
    assert push["sid"] == alice.call.sid and push["from_user_id"] == "alice"
    await bob.verify(push["cc_param"])
    await asyncio.wait_for(alice.events.wait_connected.wait(), 5)
    await bob.call.accept_call()
    await talk(alice, bob)
    assert_tone(bob.heard.samples, 1000)
    assert_tone(alice.heard.samples, 440)
    await bob.call.end_call()
    for party in (alice, bob):
        ended = await party.ended()
        assert (ended.reason, ended.source) == (R.NORMAL, Source.CALLEE)
    event = await app_server.event_for(alice.call.sid)
    assert event["disconnect_reason"] == "1001" and event["releaser_type"] == "1"


async def test_an_ended_call_is_freed_as_it_ends_not_by_the_collector():
    """Every full collection of Python's collector stalls every call that is up, and it runs
    more often the more garbage is left in reference cycles (docs/performance.md, "Churn"): an
    ended call, both its peer connections (one on the bridge's short path both ways), the
    signalling WebSockets at both ends and the platform's HTTP connections must be freed by
    reference counting as the call ends, with the collector off."""
    port = free_port()
    cfg = config.loads(platform_yaml(port), "test.yaml")
    platform = Platform(cfg.platform)
    app = web.Application()
    platform.add_routes(app)
    listener = httpguard.Listener(app, "platform", cfg.platform.http)
    await listener.start("127.0.0.1", port)
    running = RunningPlatform(platform, f"http://127.0.0.1:{port}", cfg)
    url = running.url
    gc.collect()
    gc.disable()
    try:
        alice = Party(url, "alice", tone=1000)
        bob = Party(url, "bob", tone=440)
        async with bob.listener(running.token("bob")) as pushes:
            await alice.make_call(bob, running.token("alice"))
            await bob.verify((await pushes.next(timeout=10)).cc_param)
            await asyncio.wait_for(bob.events.verified.wait(), 5)
            await bob.call.accept_call()
        relayed: list[int] = []
        await asyncio.wait_for(bob.events.connected.wait(), 10)
        bob.call.relay_peer_packets(lambda pt, seq, ts, ssrc, payload: relayed.append(seq))
        await talk(alice, bob)
        assert len(relayed) > 20                                 # bob's leg took the short path
        assert_tone(alice.heard.samples, 440)
        watched = {"alice's peer connection": alice.call._pc, "bob's peer connection": bob.call._pc,
                   "alice's WebSocket": alice.call._ws, "bob's WebSocket": bob.call._ws}
        watched.update((f"the platform's {type(o).__name__} {i}", o) for i, o in enumerate(
            o for o in gc.get_objects() if isinstance(o, (web.WebSocketResponse, web.Request))))
        assert sum(isinstance(o, web.WebSocketResponse) for o in watched.values()) >= 2   # the calls'
        await alice.call.end_call()
        for party in (alice, bob):
            await party.call.wait_disconnected(5)
        refs = {name: weakref.ref(o) for name, o in watched.items()}
        del alice, bob, party, watched
        for _ in range(50):
            if not (alive := [name for name, ref in refs.items() if ref() is not None]):
                break
            await asyncio.sleep(0.1)
        assert not alive, f"still alive 5 s after the call ended: {alive}"
    finally:
        gc.enable()
        await listener.stop()
