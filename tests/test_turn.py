"""App users who can reach the bridge only through TURN: coturn (Debian `coturn`) with the TURN
REST scheme (`use-auth-secret`), credentials minted by the platform for each call.

An app client restricted to relay candidates (the Python SDK's `ice_transport_policy="relay"`,
Chromium's `iceTransportPolicy: 'relay'`) calls a baresip desk phone through `bridge run` and
Kamailio; tones are checked by FFT both ways, the selected candidate pair is a relay one (the
client's own view, and coturn's log of the user's allocation relaying to the bridge), and the
minted credentials stop working when they expire.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import aioice.turn
import pytest
from aioice.stun import TransactionFailed

from bridge import iceservers
from bridge.audio import RATE, tone_analysis
from bridge.reasons import DisconnectReason as R
from bridge.sdk import Call
from parties import Party
from stack import Daemon, kamailio, start_bridge  # noqa: F401  (fixtures)
from test_browser import MIC_HZ, PHONE_HZ, CHROME_AGC_SETTLES, Dialer, browser, mic_wav, steady_tone  # noqa: F401
from testbed import wav_dominant_frequency
from testbed.coturn import Coturn, coturn  # noqa: F401  (fixture)
from testbed.fixtures import baresip_factory, kamailio_factory  # noqa: F401


async def blocking(fn, *args, **kw):
    return await asyncio.to_thread(fn, *args, **kw)


def with_turn(server: Coturn, ttl: str = "10m"):
    def edit(d: dict) -> None:
        d["webrtc"]["ice_servers"] = [{"urls": [server.url], "auth_secret": server.secret, "ttl": ttl}]
    return edit


async def selected_pair(call: Call, timeout: float = 5.0):
    """The nominated ICE pair of an SDK call, once there is one (aiortc 1.16 / aioice 0.13
    internals; a controlled side learns it from the peer's nomination)."""
    assert call._pc is not None
    transport = call._pc.getTransceivers()[0].sender.transport.transport
    async with asyncio.timeout(timeout):
        while (pair := transport._connection._nominated.get(1)) is None:
            await asyncio.sleep(0.05)
    return pair


async def allocate(server: Coturn, username: str, credential: str) -> tuple[str, int]:
    """A TURN allocation with these credentials: the relayed address, or TransactionFailed."""
    transport, _ = await asyncio.wait_for(aioice.turn.create_turn_endpoint(
        asyncio.DatagramProtocol, ("127.0.0.1", server.port), username, credential), 5)
    try:
        return transport.get_extra_info("sockname")
    finally:
        transport.close()


def relayed_for(server: Coturn, username: str) -> list[str]:
    """coturn's log lines of the session of `username` (or of a username ending so, e.g.
    ":alice@demo-app") that show media relayed to a peer."""
    return [line for line in server.log_text().splitlines()
            if f"{username}>" in line and ("peer usage" in line or "CHANNEL_BIND processed, success" in line
                                             or "SEND processed, success" in line)]


async def test_python_sdk_relay_only_calls_desk_phone_through_turn(start_bridge, kamailio, baresip_factory,  # noqa: F811
                                                                   coturn):  # noqa: F811
    bridge = await start_bridge(with_turn(coturn))
    phone = baresip_factory("2001", kamailio, tone_hz=PHONE_HZ)
    alice = Party(bridge.platform_url, "alice", tone=MIC_HZ)
    alice.call = Call(bridge.platform_url, ice_transport_policy="relay")
    await alice.make_call(("desk-2001", "demo-desk"), bridge.token("alice"))
    await asyncio.wait_for(alice.events.connected.wait(), 15)

    [server] = alice.call.ice_servers                      # handed by the platform, minted for alice
    expiry, user = server["username"].split(":", 1)
    assert server["urls"] == [coturn.url] and user == "alice@demo-app"
    assert 590 < int(expiry) - time.time() <= 600
    offered = [line for line in alice.call._pc.localDescription.sdp.splitlines() if line.startswith("a=candidate")]
    assert offered and all(" typ relay " in line for line in offered), offered
    pair = await selected_pair(alice.call)
    assert pair is not None and pair.local_candidate.type == "relay", pair

    await blocking(phone.wait_established, 5)
    await asyncio.sleep(5)                                 # baresip's audio starts 1-3 s late
    freq, snr = tone_analysis(alice.heard.samples[-int(1.5 * RATE):])
    assert abs(freq - PHONE_HZ) < 14 and snr > 20, (freq, snr)
    await blocking(phone.hangup)
    ended = await alice.ended(5)
    assert ended.reason is R.NORMAL
    freq, snr = await blocking(wav_dominant_frequency, phone.latest_recording("dec"), 1.0)
    assert abs(freq - MIC_HZ) < 20 and snr > 20, (freq, snr)
    assert relayed_for(coturn, server["username"]), coturn.log_tail(40)


async def test_desk_phone_calls_relay_only_python_sdk_user_through_turn(start_bridge, kamailio,  # noqa: F811
                                                                        baresip_factory, coturn):  # noqa: F811
    """The callee's servers come with `verified`; the bridge's own leg (the caller here) asked
    for its own before its offer."""
    bridge = await start_bridge(with_turn(coturn))
    phone = baresip_factory("2002", kamailio, tone_hz=PHONE_HZ)
    agent = Party(bridge.platform_url, "agent-001", tone=440)
    agent.call = Call(bridge.platform_url, ice_transport_policy="relay")
    async with agent.listener(bridge.token("agent-001")) as pushes:
        await blocking(phone.dial, "7001")
        push = await pushes.next(timeout=10)
        await agent.verify(push.cc_param)
        await asyncio.wait_for(agent.events.verified.wait(), 5)
        await agent.call.accept_call()
        [server] = agent.call.ice_servers
        assert server["username"].endswith(":agent-001@demo-app"), server
        pair = await selected_pair(agent.call)
        assert pair is not None and pair.local_candidate.type == "relay", pair
        await blocking(phone.wait_established, 5)
        await asyncio.sleep(5)
        freq, snr = tone_analysis(agent.heard.samples[-int(1.5 * RATE):])
        assert abs(freq - PHONE_HZ) < 14 and snr > 20, (freq, snr)
        await agent.call.end_call()
        await blocking(phone.wait_closed, 5)
    freq, snr = await blocking(wav_dominant_frequency, phone.latest_recording("dec"), 1.0)
    assert abs(freq - 440) < 9 and snr > 20, (freq, snr)
    assert relayed_for(coturn, server["username"]), coturn.log_tail(40)


async def test_chromium_relay_only_calls_desk_phone_through_turn(start_bridge, kamailio, baresip_factory,  # noqa: F811
                                                                 coturn, browser):  # noqa: F811
    bridge = await start_bridge(with_turn(coturn))
    phone = baresip_factory("2001", kamailio, tone_hz=PHONE_HZ)
    dialer = await Dialer.open(browser, bridge)
    page = dialer.page
    await page.evaluate("""([token]) => {
        window.turnCall = new PlanetKit.Call({iceTransportPolicy: 'relay'});
        window.turnEvents = [];
        const events = {};
        ['evtWaitConnected', 'evtConnected', 'evtDisconnected'].forEach((name) => {
            events[name] = (param) => window.turnEvents.push(param ? name + ' ' + JSON.stringify(param) : name);
        });
        window.dialer.call = window.turnCall;          // Dialer.ice() reads the call's peer connection
        return window.turnCall.makeCall({myId: 'alice', myServiceId: 'demo-app', peerId: 'desk-2001',
            peerServiceId: 'demo-desk', accessToken: token, mediaType: 'audio', delegate: events,
            mediaHtmlElement: {peer: {audio: document.getElementById('peer-audio')}}});
    }""", [bridge.token("alice")])
    await dialer.until("window.turnEvents.includes('evtConnected')", 20)
    servers = await page.evaluate("window.turnCall.iceServers")
    assert servers[0]["urls"] == [coturn.url] and servers[0]["username"].endswith(":alice@demo-app"), servers
    async with asyncio.timeout(5):                        # the pair is chosen by ICE, not the platform
        while not ((ice := await dialer.ice())["selected"] or {}).get("state") == "succeeded":
            await asyncio.sleep(0.1)
    assert ice["local"] and all(" typ relay " in line for line in ice["local"]), ice
    assert ice["selected"] and ice["selected"]["state"] == "succeeded", ice
    assert ice["selected"]["local"].startswith("relay "), ice

    await blocking(phone.wait_established, 5)
    await asyncio.sleep(4)
    freq, snr, _ = await dialer.heard_tone(2.0)
    assert abs(freq - PHONE_HZ) < 10 and snr > 20, (freq, snr, dialer.dump())
    await asyncio.sleep(CHROME_AGC_SETTLES)
    mark = phone.mark()
    await page.evaluate("window.turnCall.endCall()")
    await blocking(phone.wait_closed, 5, mark)
    freq, snr, _ = await blocking(steady_tone, phone.latest_recording("dec"), CHROME_AGC_SETTLES)
    assert abs(freq - MIC_HZ) < 10 and snr > 20, (freq, snr)
    assert relayed_for(coturn, servers[0]["username"]), coturn.log_tail(40)


async def test_bridge_dial_relay_checks_turn_from_a_terminal(start_bridge, kamailio, baresip_factory,  # noqa: F811
                                                            coturn):  # noqa: F811
    bridge = await start_bridge(with_turn(coturn))
    phone = baresip_factory("2001", kamailio, tone_hz=PHONE_HZ)
    dial = await asyncio.create_subprocess_exec(
        "bridge", "dial", "-c", str(bridge.path), "--from", "alice@demo-app", "--to", "desk-2001@demo-desk",
        "--relay", "--tone", "1000", "--seconds", "4", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(dial.communicate(), 30))[0].decode()
    assert dial.returncode == 0 and "connected" in out, out
    await blocking(phone.wait_closed, 5)
    freq, snr = await blocking(wav_dominant_frequency, phone.latest_recording("dec"), 1.0)
    assert abs(freq - 1000) < 20 and snr > 20, (freq, snr)
    assert relayed_for(coturn, ":alice@demo-app"), coturn.log_tail(40)


async def _ask_ice_servers(url: str, token: str, user: str = "alice") -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url.replace("http", "ws", 1) + "/v1/ws") as ws:
            await ws.send_str(json.dumps({"type": "ice_servers", "token": token, "my_id": user,
                                          "my_service_id": "demo-app"}))
            return await ws.receive_json(timeout=5)


async def test_minted_credentials_expire_and_need_a_token(start_bridge, coturn):  # noqa: F811
    bridge = await start_bridge(with_turn(coturn, ttl="2s"))
    answer = await _ask_ice_servers(bridge.platform_url, bridge.token("alice"))
    assert answer["type"] == "ice_servers", answer
    [server] = answer["ice_servers"]
    relayed = await allocate(coturn, server["username"], server["credential"])
    assert relayed[0] == "127.0.0.1"
    await asyncio.sleep(3)                                 # past the expiry in the username
    with pytest.raises(TransactionFailed, match="401"):
        await allocate(coturn, server["username"], server["credential"])
    # a forged expiry (the same user, later) does not match the credential
    later = f"{int(time.time()) + 600}:alice@demo-app"
    with pytest.raises(TransactionFailed, match="401"):
        await allocate(coturn, later, server["credential"])
    fresh = (await _ask_ice_servers(bridge.platform_url, bridge.token("alice")))["ice_servers"][0]
    assert fresh["username"] != server["username"]
    assert (await allocate(coturn, fresh["username"], fresh["credential"]))[0] == "127.0.0.1"

    # no valid token, no TURN credentials (make_call then refuses the call as always)
    for wrong in (bridge.token("mallory"), "not-a-token"):
        refused = await _ask_ice_servers(bridge.platform_url, wrong, user="alice")
        assert refused == {"type": "ice_servers", "ice_servers": []}, refused


def test_turn_rest_credential_is_coturns():
    """The credential of the TURN REST draft: base64(HMAC-SHA1(secret, "<expiry>:<user>"))."""
    assert iceservers.rest_credential("north", "alice@demo-app", 1700000000) == (
        "1700000000:alice@demo-app", "y+Dz8hVLv3K37iy2d+pBLkbxdPU=")   # openssl dgst -sha1 -hmac north


async def test_ice_servers_must_be_followed_by_the_same_users_make_call(start_platform):
    p = await start_platform()
    async with aiohttp.ClientSession() as http:
        for follow in ({"type": "listen", "token": p.token("alice"), "my_id": "alice", "my_service_id": "demo-app"},
                       {"type": "make_call", "token": p.token("bob"), "my_id": "bob", "my_service_id": "demo-app",
                        "peer_id": "carol", "peer_service_id": "demo-app", "media_type": "audio", "sdp": "v=0"}):
            async with http.ws_connect(p.url.replace("http", "ws", 1) + "/v1/ws") as ws:
                await ws.send_str(json.dumps({"type": "ice_servers", "token": p.token("alice"), "my_id": "alice",
                                              "my_service_id": "demo-app"}))
                assert await ws.receive_json(timeout=5) == {"type": "ice_servers", "ice_servers": []}
                await ws.send_str(json.dumps(follow))
                error = await ws.receive_json(timeout=5)
                assert (error["type"], error["code"]) == ("error", "unexpected"), error
                assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
