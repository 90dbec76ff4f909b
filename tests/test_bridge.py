"""End to end: SDK app users -> platform -> notification -> bridge (a `bridge run` subprocess)
-> Kamailio -> baresip desk phones, and back. Audio is checked by FFT at both ends."""

from __future__ import annotations

import asyncio
import re
import json
import signal
import time

import aiohttp
import numpy as np
import pytest
import yaml

from bridge import callbacks, ccparam
from bridge.audio import RATE, tone_analysis
from bridge.reasons import DisconnectReason as R, Source
from parties import Party
from stack import BRIDGE_USER, Daemon, kamailio, start_bridge  # noqa: F401  (fixtures)
from testbed import wav_dominant_frequency
from testbed.fixtures import baresip_factory, kamailio_factory, sipp  # noqa: F401


async def blocking(fn, *args, **kw):
    return await asyncio.to_thread(fn, *args, **kw)


def heard_tone(party: Party, seconds: float = 1.5) -> tuple[float, float]:
    return tone_analysis(party.heard.samples[-int(seconds * RATE):])


async def connected_call(bridge: Daemon, alice: Party, callee: str) -> None:
    await alice.make_call((callee, "demo-desk"), bridge.token(alice.user))
    await asyncio.wait_for(alice.events.connected.wait(), 15)


# --- app -> desk phone ---------------------------------------------------------------------

@pytest.mark.parametrize("codecs,media,expected", [
    (None, "relay", "PCMU"),          # the sample: G.711 both legs, packets relayed as they arrive
    (["PCMA"], "relay", "PCMA"),      # A-law app leg, mu-law phone: relayed through a byte table
    (None, "transcode", "PCMU"),      # decoded and re-clocked each way
    (["opus"], "relay", "opus"),      # Opus: each packet decoded and encoded again as it arrives
    (["opus"], "transcode", "opus"),  # ... or on the clocks, aiortc coding the Opus
])
async def test_app_calls_desk_phone_tone_each_way_and_phone_hangs_up(start_bridge, kamailio, baresip_factory,  # noqa: F811
                                                                   codecs, media, expected):
    def edit(d: dict) -> None:
        d["bridge"]["media"] = media
        if codecs:
            d["webrtc"]["codecs"] = codecs
    bridge = await start_bridge(edit)
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    alice = Party(bridge.platform_url, "alice", tone=1000)
    await alice.make_call(("desk-2001", "demo-desk"), bridge.token("alice"))
    await asyncio.wait_for(alice.events.connected.wait(), 15)
    assert alice.call.codec == expected
    assert alice.events.names[:2] == ["wait_connected", "connected"]
    established = await blocking(phone.wait_established, 5)
    assert established["peerdisplayname"] == "alice (app)"
    await asyncio.sleep(5)                                   # baresip's audio starts 1-3 s late
    freq, snr = heard_tone(alice)
    assert abs(freq - 700) < 14 and snr > 20, (freq, snr)   # the phone's tone reached the app
    await blocking(phone.hangup)
    started = time.monotonic()
    ended = await alice.ended(5)
    assert time.monotonic() - started < 1.0
    assert (ended.reason, ended.source) == (R.NORMAL, Source.CALLEE)
    freq, snr = await blocking(wav_dominant_frequency, phone.latest_recording("dec"), 1.0)
    assert abs(freq - 1000) < 20 and snr > 20, (freq, snr)  # the app's tone reached the phone
    async with asyncio.timeout(5):                # counted when the bridged call is over
        while 'bridge_frames_total{direction="app_to_sip"' not in (text := await bridge.metrics()):
            await asyncio.sleep(0.1)
    mode = "transcode" if media == "transcode" or expected == "opus" else "relay"
    assert f'bridge_media_total{{mode="{mode}"}} 1.0' in text
    frames = {line.split("{")[1].split("}")[0]: float(line.split()[-1])
              for line in text.splitlines() if line.startswith("bridge_frames_total")}
    for direction in ("app_to_sip", "sip_to_app"):      # > 4 s of 20 ms frames each way
        assert frames[f'direction="{direction}",outcome="frames"'] > 200, frames
    if media == "relay":                                # nothing arrived out of order on loopback
        assert frames['direction="app_to_sip",outcome="late"'] == 0, frames
        assert frames['direction="sip_to_app",outcome="late"'] == 0, frames


async def test_app_hangs_up_sends_bye(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()
    phone = baresip_factory("2001", kamailio)
    alice = Party(bridge.platform_url, "alice")
    await connected_call(bridge, alice, "desk-2001")
    mark = phone.mark()
    await alice.call.end_call()
    closed = await blocking(phone.wait_closed, 2, mark)
    assert closed["type"] == "CALL_CLOSED"
    assert "BYE" in kamailio.log_text()


async def test_ringback_while_ringing_then_answer(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()
    phone = baresip_factory("2001", kamailio, answermode="manual", tone_hz=700)
    alice = Party(bridge.platform_url, "alice")
    await alice.make_call(("desk-2001", "demo-desk"), bridge.token("alice"))
    await blocking(phone.wait_incoming, 10)
    await asyncio.sleep(2.0)                                   # ringing: the caller hears ringback
    ring = alice.heard.samples[-RATE:]
    spectrum = np.abs(np.fft.rfft(ring * np.hanning(len(ring))))
    freqs = np.fft.rfftfreq(len(ring), 1 / RATE)
    band = spectrum[(freqs > 420) & (freqs < 500)].sum() / spectrum.sum()
    assert band > 0.8, f"only {band:.0%} of the energy in the 440/480 Hz ringback band"
    assert alice.call.state == "calling"
    await blocking(phone.accept)
    await asyncio.wait_for(alice.events.connected.wait(), 5)
    await asyncio.sleep(4)
    freq, snr = heard_tone(alice)
    assert abs(freq - 700) < 14 and snr > 20, (freq, snr)       # then the phone itself
    await alice.call.end_call()


async def test_fallback_targets_are_tried_in_order(start_bridge, kamailio, baresip_factory):  # noqa: F811
    def hunt(data: dict) -> None:
        data["routes"]["to_sip"].insert(0, {
            "name": "hunt", "match": {"service": "demo-desk", "user": "sales"},
            "target": "2003", "fallback": ["2004", "2001"]})
    bridge = await start_bridge(hunt)
    busy = baresip_factory("2004", kamailio, answermode="manual")   # 2003 is absent: 404
    phone = baresip_factory("2001", kamailio)

    def reject_when_ringing() -> None:
        busy.wait_incoming(10)
        busy.hangup()                                                # 486
    rejecting = asyncio.ensure_future(blocking(reject_when_ringing))
    alice = Party(bridge.platform_url, "alice")
    await connected_call(bridge, alice, "sales")
    await rejecting
    await blocking(phone.wait_established, 5)
    log = bridge.log()
    assert "2003 gave not_found 404" in log and "2004 gave busy 486" in log, log[-2000:]
    await alice.call.end_call()


def ringback_share(samples: np.ndarray) -> float:
    """The share of the energy in the 440/480 Hz ringback band."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / RATE)
    return spectrum[(freqs > 420) & (freqs < 500)].sum() / spectrum.sum()


async def test_fallback_after_early_media_plays_ringback_again(start_bridge, kamailio, baresip_factory, sipp):  # noqa: F811
    def hunt(data: dict) -> None:
        data["routes"]["to_sip"].insert(0, {
            "name": "hunt", "match": {"service": "demo-desk", "user": "sales"},
            "target": "2003", "fallback": ["2001"]})
    bridge = await start_bridge(hunt)
    early = await blocking(sipp.uas, kamailio, "2003", 486, "Busy Here", ring_ms=1500, early_media=True)
    phone = baresip_factory("2001", kamailio, answermode="manual", tone_hz=700)
    alice = Party(bridge.platform_url, "alice")
    await alice.make_call(("sales", "demo-desk"), bridge.token("alice"))
    await blocking(phone.wait_incoming, 15)                    # 2003 gave early media, then 486
    await asyncio.sleep(2.0)
    share = ringback_share(alice.heard.samples[-RATE:])
    assert share > 0.8, f"only {share:.0%} of the energy in the ringback band while the fallback rings"
    assert (await blocking(early.wait, 5)).ok
    await blocking(phone.accept)
    await asyncio.wait_for(alice.events.connected.wait(), 5)
    await alice.call.end_call()


def sipp_desk_phone_calls(scenario: str, dialed: str, kamailio, sipp):  # noqa: F811
    """A sipp UAC as desk phone 2002 calling `dialed` through Kamailio (its 407 answered)."""
    from testbed.sipp import HERE, SippProcess
    return SippProcess(HERE / scenario, kamailio.port, service=dialed, auth=("2002", kamailio.users["2002"]),
                       keys={"from_user": "2002"}, timeout=25, workdir=sipp.base / scenario).start()


async def test_desk_call_whose_200_is_never_acked_ends_both_sides(start_bridge, kamailio, sipp):  # noqa: F811
    bridge = await start_bridge(lambda d: d["sip"].update({"timers": {"t1": "100ms"}}))   # 64*T1 = 6.4 s
    agent = Party(bridge.platform_url, "agent-001")
    async with agent.listener(bridge.token("agent-001")) as pushes:
        caller = sipp_desk_phone_calls("sipp_uac_no_ack.xml", "7001", kamailio, sipp)
        push = await pushes.next(timeout=10)
        await agent.verify(push.cc_param)
        await agent.call.accept_call()
        started = time.monotonic()
        ended = await agent.ended(12)
        assert ended.reason is R.NETWORK_UNSTABLE
        assert 5 < time.monotonic() - started < 10              # after 64*T1 without the ACK
        result = await blocking(caller.wait, 10)                 # the caller got a BYE, answered it
        assert result.ok, result.describe()
    assert "no ACK for our 200 OK" in bridge.log()


async def test_dtmf_both_ways(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()
    phone = baresip_factory("2001", kamailio)
    alice = Party(bridge.platform_url, "alice")
    await connected_call(bridge, alice, "desk-2001")
    await blocking(phone.wait_established, 5)
    await asyncio.sleep(1.5)                                  # RTP flowing both ways
    mark = phone.mark()
    await alice.call.send_dtmf("12#")                         # app signalling -> RFC 4733
    for digit in "12#":
        event = await blocking(phone.expect_event, "CALL_DTMF_START", 5, mark,
                               lambda e, d=digit: e.get("param") == d)
        mark = phone.ctrl.events.index(event) + 1
    assert (await blocking(phone.command, "sndcode", "5")).get("ok")   # RFC 4733 -> app
    async with asyncio.timeout(5):
        while "5" not in alice.events.dtmf:
            await asyncio.sleep(0.05)
    await alice.call.end_call()


async def test_busy_decline_noanswer_each_reach_the_app(start_bridge, kamailio, baresip_factory, sipp):  # noqa: F811
    def short_ring(data: dict) -> None:
        data["routes"]["to_sip"][0]["ring_timeout"] = "2s"
    bridge = await start_bridge(short_ring)
    k = kamailio
    busy_phone = baresip_factory("2001", k, answermode="manual")
    baresip_factory("2002", k, answermode="manual")             # rings, nobody answers
    await blocking(sipp.uas, k, "2003", 603, "Decline")

    async def outcome(callee: str, while_ringing=None):
        alice = Party(bridge.platform_url, f"alice{callee[-1]}")
        await alice.make_call((callee, "demo-desk"), bridge.token(alice.user))
        if while_ringing:
            await asyncio.wait_for(alice.events.wait_connected.wait(), 5)
            await blocking(while_ringing)
        return await alice.ended(15)

    async def reject_when_ringing():
        await blocking(busy_phone.wait_incoming, 10)
        busy_phone.hangup()

    busy = await outcome("desk-2001", lambda: asyncio.run(reject_when_ringing()))
    assert (busy.reason, busy.source) == (R.BUSY, Source.CALLEE)
    decline = await outcome("desk-2003")
    assert decline.reason is R.DECLINE
    noanswer = await outcome("desk-2002")
    assert noanswer.reason is R.NOANSWER


async def test_no_route_and_route_limit(start_bridge, kamailio, baresip_factory):  # noqa: F811
    def limit_one(data: dict) -> None:
        data["routes"]["to_sip"][0]["max_calls"] = 1
    bridge = await start_bridge(limit_one)
    k = kamailio
    baresip_factory("2001", k)
    invites_before = k.log_text().count("TESTBED INVITE")
    stranger = Party(bridge.platform_url, "alice")
    await stranger.make_call(("reception", "demo-desk"), bridge.token("alice"))   # no route
    ended = await stranger.ended(10)
    assert (ended.reason, ended.source) == (R.SERVICE_INVALID_ID, Source.CALLEE)
    assert k.log_text().count("TESTBED INVITE") == invites_before             # no phone rang
    first = Party(bridge.platform_url, "bob")
    await connected_call(bridge, first, "desk-2001")
    second = Party(bridge.platform_url, "carol")
    await second.make_call(("desk-2002", "demo-desk"), bridge.token("carol"))
    ended = await second.ended(10)
    assert ended.reason is R.SERVICE_BUSY
    assert first.call.state == "connected"
    await first.call.end_call()


# --- desk phone -> app -----------------------------------------------------------------------

async def test_desk_phone_calls_app_user_audio_both_ways(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()
    phone = baresip_factory("2002", kamailio, tone_hz=700)
    agent = Party(bridge.platform_url, "agent-001", tone=440)
    async with agent.listener(bridge.token("agent-001")) as pushes:
        await blocking(phone.dial, "7001")
        push = await pushes.next(timeout=10)
        assert (push.caller_id, push.caller_service_id) == ("desk-2002", "demo-desk")
        await agent.verify(push.cc_param)
        await asyncio.wait_for(agent.events.verified.wait(), 5)
        await agent.call.accept_call()
        await blocking(phone.wait_established, 5)
        await asyncio.sleep(5)
        freq, snr = heard_tone(agent)
        assert abs(freq - 700) < 14 and snr > 20, (freq, snr)
        await agent.call.end_call()
        await blocking(phone.wait_closed, 5)
    freq, snr = await blocking(wav_dominant_frequency, phone.latest_recording("dec"), 1.0)
    assert abs(freq - 440) < 9 and snr > 20, (freq, snr)


async def test_desk_phone_call_declined_or_unanswered(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge(lambda d: d["platform"].update(answer_timeout="2s"))
    phone = baresip_factory("2002", kamailio)
    agent = Party(bridge.platform_url, "agent-002")
    async with agent.listener(bridge.token("agent-002")) as pushes:
        mark = phone.mark()
        await blocking(phone.dial, "7002")
        push = await pushes.next(timeout=10)
        await agent.verify(push.cc_param)
        await asyncio.wait_for(agent.events.verified.wait(), 5)
        await agent.call.end_call()                                    # decline
        closed = await blocking(phone.wait_closed, 5, mark)
        assert "603" in closed["param"], closed
        mark = phone.mark()
        await blocking(phone.dial, "7002")
        await pushes.next(timeout=10)                                  # nobody takes it
        closed = await blocking(phone.wait_closed, 10, mark)
        assert "480" in closed["param"], closed
    mark = phone.mark()
    await blocking(phone.dial, "7999")                                 # no app user there
    closed = await blocking(phone.wait_closed, 10, mark)
    assert "480" in closed["param"], closed                           # PUSH_ERROR -> 480
    mark = phone.mark()
    await blocking(phone.dial, "8000")                                 # not a routed number
    closed = await blocking(phone.wait_closed, 10, mark)
    assert "404" in closed["param"], closed


# --- the daemon ------------------------------------------------------------------------------

async def test_sigterm_drains_an_active_call(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    alice = Party(bridge.platform_url, "alice")
    await connected_call(bridge, alice, "desk-2001")
    bridge.signal(signal.SIGTERM)
    await asyncio.sleep(1.0)
    status, body = await bridge.health()
    assert status == 503 and body["draining"] is True               # no new calls
    assert alice.call.state == "connected"                           # the call goes on...
    mark = phone.mark()
    ended = await alice.ended(10)                                    # ...until the drain deadline,
    assert (ended.reason, ended.source) == (R.SERVICE_MAINTENANCE, Source.CALLEE)   # ended by the bridge
    await blocking(phone.wait_closed, 5, mark)                       # which also sent the BYE
    assert await asyncio.to_thread(bridge.proc.wait, 10) == 0


async def test_sighup_with_a_broken_file_keeps_serving(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()
    baresip_factory("2001", kamailio)
    good = bridge.path.read_text()
    bridge.path.write_text(good + "\nroutes: [this is: broken\n")
    bridge.signal(signal.SIGHUP)
    await asyncio.sleep(1)
    assert "reload failed, keeping the running configuration" in bridge.log()
    alice = Party(bridge.platform_url, "alice")
    await connected_call(bridge, alice, "desk-2001")                 # still routes calls
    await alice.call.end_call()
    data = yaml.safe_load(good)
    data["routes"]["to_sip"][0]["match"]["user"] = "phone-(?P<ext>\\d{4})"
    bridge.path.write_text(yaml.safe_dump(data))
    bridge.signal(signal.SIGHUP)
    await asyncio.sleep(1)
    assert "reloaded routes" in bridge.log()
    bob = Party(bridge.platform_url, "bob")
    await bob.make_call(("desk-2001", "demo-desk"), bridge.token("bob"))
    assert (await bob.ended(10)).reason is R.SERVICE_INVALID_ID      # the new routes apply


async def test_kamailio_restart_while_idle_then_a_call_works(start_bridge, baresip_factory, kamailio):  # noqa: F811
    bridge = await start_bridge()
    await blocking(kamailio.restart)
    phone = baresip_factory("2001", kamailio)
    await bridge.ready()
    async with asyncio.timeout(15):
        while not await blocking(kamailio.registered, BRIDGE_USER):
            await asyncio.sleep(0.5)
    alice = Party(bridge.platform_url, "alice")
    await connected_call(bridge, alice, "desk-2001")
    await alice.call.end_call()
    await blocking(phone.wait_closed, 5)


async def test_health_and_metrics(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()
    baresip_factory("2001", kamailio)
    alice = Party(bridge.platform_url, "alice")
    await connected_call(bridge, alice, "desk-2001")
    await alice.call.end_call()
    status, body = await bridge.health()
    assert status == 200 and body["sip_registration"]["state"] == "registered"
    async with asyncio.timeout(5):                # the bridged call finishes its BYE first
        while 'bridge_calls_total{direction="app_to_sip"' not in (text := await bridge.metrics()):
            await asyncio.sleep(0.1)
    calls = [line for line in text.splitlines() if line.startswith("bridge_calls_total")]
    assert calls == ['bridge_calls_total{direction="app_to_sip",result="normal"} 1.0'], calls
    assert "bridge_setup_seconds_count{step=\"notification_to_invite\"} 1.0" in text
    assert "bridge_sip_registered 1.0" in text
    counts = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith(("bridge_loop_lag_seconds_count", "bridge_gc_pause_seconds_count"))}
    assert counts["bridge_loop_lag_seconds_count"] > 0, counts            # a 50 ms timer
    assert counts['bridge_gc_pause_seconds_count{generation="0"}'] > 0, counts  # a call collects garbage


# --- the notification endpoint ------------------------------------------------------------------

async def test_bad_notifications_never_start_a_call(start_bridge, kamailio):
    bridge = await start_bridge()
    secret = bridge.cfg.notifications.secret
    url = bridge.admin + "/v1/notifications"
    real = ccparam.mint(ccparam.CcParam("s1", "demo-desk", "desk-2001", "demo-app", "alice",
                                        bridge.cfg.platform.ws_url, time.time() + 60), b"k" * 32)
    good = {"cc_param": real, "app_callee_uid": "desk-2001", "app_callee_sid": "demo-desk", "app_call_type": "audio"}

    async with aiohttp.ClientSession() as http:
        async def post(body: bytes, headers: dict) -> tuple[int, dict]:
            async with http.post(url, data=body, headers=headers) as r:
                return r.status, await r.json()

        def signed(body: bytes, **kw) -> dict:
            return callbacks.signed_headers(kw.get("secret", secret), body, now=kw.get("now"))

        raw = json.dumps(good).encode()
        cases = [
            (raw, {}, 401, "unauthorized"),                                           # unsigned
            (raw, signed(raw, secret="x" * 40), 401, "unauthorized"),                 # wrong key
            (raw, signed(raw, now=time.time() - 3600), 401, "unauthorized"),          # stale
            (b"{not json", signed(b"{not json"), 400, "bad_json"),
            (b"[]", signed(b"[]"), 400, "bad_request"),
            (json.dumps({**good, "app_callee_uid": 7}).encode(), None, 400, "bad_request"),
            (json.dumps({**good, "app_call_type": "video"}).encode(), None, 400, "bad_request"),
            (json.dumps({**good, "cc_param": "%%%"}).encode(), None, 400, "bad_cc_param"),
            (json.dumps({**good, "app_callee_uid": "desk-2002"}).encode(), None, 400, "bad_cc_param"),
        ]
        for body, headers, status, code in cases:
            got_status, got = await post(body, headers if headers is not None else signed(body))
            assert (got_status, got["error"]) == (status, code), (body[:60], got)
            assert got["message"]
        untrusted = ccparam.mint(ccparam.CcParam("s2", "demo-desk", "desk-2001", "demo-app", "alice",
                                                 "ws://evil.example/v1/ws", time.time() + 60), b"k" * 32)
        body = json.dumps({**good, "cc_param": untrusted}).encode()
        assert (await post(body, signed(body)))[0] == 403
        headers = signed(raw)
        assert (await post(raw, headers))[0] == 202                     # accepted once...
        status, got = await post(raw, headers)
        assert (status, got["error"]) == (409, "replayed")              # ...an exact replay: refused
        status, got = await post(raw, signed(raw, now=time.time() + 1))
        assert (status, got["status"]) == (202, "duplicate")            # a retry: idempotent
    await asyncio.sleep(1)
    # the accepted one carried a cc_param the platform never minted: verify fails, nothing rings
    assert "TESTBED INVITE" not in kamailio.log_text()


async def test_a_pbx_that_requires_100rel_reaches_an_app_user_and_may_update_the_early_session(  # noqa: F811
        start_bridge, kamailio, sipp):
    bridge = await start_bridge()
    agent = Party(bridge.platform_url, "agent-001")
    async with agent.listener(bridge.token("agent-001")) as pushes:
        caller = sipp_desk_phone_calls("sipp_uac_100rel.xml", "7001", kamailio, sipp)
        push = await pushes.next(timeout=10)
        await agent.verify(push.cc_param)
        await asyncio.sleep(1)                                  # rings with a reliable 180, PRACKed
        await agent.call.accept_call()
        ended = await agent.ended(10)                          # the caller hangs up after 2 s
        assert ended.reason is R.NORMAL
        result = await blocking(caller.wait, 10)
        assert result.ok, result.describe()
    received = re.split(r"\n\s*\n", result.received_text())
    ringing = [m for m in received if "SIP/2.0 180" in m]
    assert ringing and all("Require: 100rel" in m and re.search(r"RSeq: \d+", m) for m in ringing), ringing
    assert any("SIP/2.0 200" in m and "CSeq: 3 PRACK" in m for m in received), "the PRACK was answered"
    # the UPDATEs (a message's body follows its headers after the blank line)
    replies = {cseq: next(i for i, m in enumerate(received) if f"CSeq: {cseq} UPDATE" in m) for cseq in (4, 5, 6)}
    early_refresh, early_offer, offer = (received[replies[c]] for c in (4, 5, 6))
    assert "SIP/2.0 200" in early_refresh and "Content-Length: 0" in early_refresh, early_refresh
    assert "SIP/2.0 500" in early_offer and re.search(r"Retry-After: \d+", early_offer), early_offer
    assert "SIP/2.0 200" in offer and "application/sdp" in offer, offer      # the answered call takes it
    assert "a=recvonly" in received[replies[6] + 1], received[replies[6] + 1]


async def test_dtmf_as_sip_info_to_a_desk_phone(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge(lambda d: d["sip"].update({"dtmf": "info"}))
    phone = baresip_factory("2001", kamailio)
    alice = Party(bridge.platform_url, "alice")
    await connected_call(bridge, alice, "desk-2001")
    await blocking(phone.wait_established, 5)
    mark = phone.mark()
    await alice.call.send_dtmf("4*")                          # app signalling -> SIP INFO
    for digit in "4*":
        event = await blocking(phone.expect_event, "CALL_DTMF_START", 5, mark,
                               lambda e, d=digit: e.get("param") == d)
        mark = phone.ctrl.events.index(event) + 1
    await alice.call.end_call()


async def test_a_pbx_with_session_timers_and_info_dtmf_reaches_an_app_user(start_bridge, kamailio, sipp):  # noqa: F811
    bridge = await start_bridge()
    agent = Party(bridge.platform_url, "agent-001")
    async with agent.listener(bridge.token("agent-001")) as pushes:
        caller = sipp_desk_phone_calls("sipp_uac_info_timer.xml", "7001", kamailio, sipp)
        push = await pushes.next(timeout=10)
        await agent.verify(push.cc_param)
        await agent.call.accept_call()
        ended = await agent.ended(15)                          # the PBX hangs up at the end
        assert ended.reason is R.NORMAL
        result = await blocking(caller.wait, 10)
        assert result.ok, result.describe()
    assert agent.events.dtmf == ["5", "9"]                     # INFO dtmf-relay and dtmf -> evtDtmf
    received = re.split(r"\n\s*\n", result.received_text())
    answer = next(m for m in received if "SIP/2.0 200" in m and "INVITE" in m.split("CSeq:")[1][:20])
    assert "Session-Expires: 120;refresher=uac" in answer and "Require: timer" in answer, answer
    assert any("SIP/2.0 200" in m and "UPDATE" in m and "Session-Expires: 120;refresher=uac" in m for m in received)


async def test_a_pbx_phone_blind_transfers_the_app_user_with_refer(start_bridge, kamailio, baresip_factory, sipp):  # noqa: F811
    bridge = await start_bridge()
    target = baresip_factory("2001", kamailio, tone_hz=700)
    agent = Party(bridge.platform_url, "agent-001", tone=440)
    async with agent.listener(bridge.token("agent-001")) as pushes:
        from testbed.sipp import HERE, SippProcess
        caller = SippProcess(HERE / "sipp_uac_refer.xml", kamailio.port, service="7001",
                             auth=("2002", kamailio.users["2002"]), keys={"from_user": "2002", "target": "2001"},
                             timeout=25, workdir=sipp.base / "refer").start()
        push = await pushes.next(timeout=10)
        await agent.verify(push.cc_param)
        await agent.call.accept_call()
        result = await blocking(caller.wait, 20)               # REFER 202, NOTIFYs, then it leaves
        assert result.ok, result.describe()
        await blocking(target.wait_established, 5)
        await asyncio.sleep(4)
        freq, snr = heard_tone(agent)
        assert abs(freq - 700) < 14 and snr > 20, ("the app user hears the transfer target", freq, snr)
        assert agent.call.state == "connected"
        mark = target.mark()
        await agent.call.end_call()
        await blocking(target.wait_closed, 5, mark)
    text = result.received_text()
    frags = re.findall(r"message/sipfrag;version=2\.0\s+Content-Length: \d+\s+(SIP/2\.0 \d{3})", text)
    assert frags == ["SIP/2.0 100", "SIP/2.0 200"] and text.count("Event: refer") == 2, (frags, text[-2000:])
    freq, snr = await blocking(wav_dominant_frequency, target.latest_recording("dec"), 1.0)
    assert abs(freq - 440) < 9 and snr > 20, ("the target heard the app user", freq, snr)
