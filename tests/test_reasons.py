"""Every way a call ends, done the way a user would, with the Call Event callback checked."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from bridge import token
from bridge.reasons import DisconnectReason as R, Source
from bridge.sdk import StartFailError, StartFailReason
from conftest import APP_SECRET, free_port
from parties import Party


async def ring(p, app_server=None, *, verify: bool = True, **party_kw):
    """alice calls bob; bob gets the push (embedded, or from the app server) and verifies."""
    alice, bob = Party(p.url, "alice", **party_kw), Party(p.url, "bob", **party_kw)
    if app_server is not None and p.cfg.platform.services["demo-app"].notify_cb_url:
        await alice.make_call(bob, p.token("alice"))
        push = (await app_server.next_push())["cc_param"]
    else:
        async with bob.listener(p.token("bob")) as pushes:
            await alice.make_call(bob, p.token("alice"))
            push = (await pushes.next(timeout=5)).cc_param
    if verify:
        await bob.verify(push)
        await asyncio.wait_for(bob.events.verified.wait(), 5)
    return alice, bob, push


async def both_end(reason: R, source: Source, *parties: Party) -> None:
    for party in parties:
        ended = await party.ended()
        assert (ended.reason, ended.source) == (reason, source), f"{party.user}: {ended}"


async def check_event(app_server, sid: str, reason: R, releaser: int, terminate: int) -> dict:
    event = await app_server.event_for(sid)
    assert event["disconnect_reason"] == str(int(reason))
    assert event["rel_code_str"] == reason.str_code
    assert event["releaser_type"] == str(releaser)
    assert event["terminate"] == str(terminate)
    return event


async def test_decline(start_platform, app_server):
    p = await start_platform(event_url=app_server.url + "/event")
    alice, bob, _ = await ring(p)
    await bob.call.end_call()
    await both_end(R.DECLINE, Source.CALLEE, alice, bob)
    event = await check_event(app_server, alice.call.sid, R.DECLINE, 1, 21)
    assert event["duration"] == "0.000" and event["start_time"] == "0"
    assert "connected" not in alice.events.names


async def test_cancel_while_ringing(start_platform, app_server):
    p = await start_platform(event_url=app_server.url + "/event")
    alice, bob, _ = await ring(p)
    await alice.call.end_call()
    await both_end(R.CANCEL, Source.CALLER, alice, bob)
    await check_event(app_server, alice.call.sid, R.CANCEL, 2, 77)


async def test_busy(start_platform, app_server):
    p = await start_platform(event_url=app_server.url + "/event")
    alice, bob, _ = await ring(p)
    await bob.call.accept_call()
    carol = Party(p.url, "carol")
    await carol.make_call(bob, p.token("carol"))
    await both_end(R.BUSY, Source.CLOUD_SERVER, carol)
    await check_event(app_server, carol.call.sid, R.BUSY, 4, 17)
    assert alice.call.state == bob.call.state == "connected"   # the busy user's call goes on
    await alice.call.end_call()
    await both_end(R.NORMAL, Source.CALLER, alice, bob)


async def test_a_service_may_let_users_take_several_calls(start_platform):
    p = await start_platform(one_call_per_user=False)          # e.g. desk phones: the PBX decides
    alice, bob, _ = await ring(p)
    await bob.call.accept_call()
    carol = Party(p.url, "carol")
    async with Party(p.url, "bob").listener(p.token("bob")) as pushes:
        await carol.make_call(bob, p.token("carol"))
        push = await pushes.next(timeout=5)                     # pushed, not BUSY
        assert push.caller_id == "carol"
    await carol.call.end_call()
    await alice.call.end_call()
    await both_end(R.NORMAL, Source.CALLER, alice, bob)


async def test_no_answer(start_platform, app_server):
    p = await start_platform(event_url=app_server.url + "/event", answer_timeout="1s")
    alice, bob, _ = await ring(p)          # bob's phone rings; nobody accepts
    started = time.monotonic()
    await both_end(R.NOANSWER, Source.CLOUD_SERVER, alice, bob)
    assert time.monotonic() - started < 3
    await check_event(app_server, alice.call.sid, R.NOANSWER, 4, 18)


async def test_max_call_time(start_platform, app_server):
    p = await start_platform(event_url=app_server.url + "/event", max_call_time="1500ms")
    alice, bob, _ = await ring(p)
    await bob.call.accept_call()
    await both_end(R.MAX_CALL_TIME_EXCEEDED, Source.CLOUD_SERVER, alice, bob)
    event = await check_event(app_server, alice.call.sid, R.MAX_CALL_TIME_EXCEEDED, 4, 127)
    assert 1.4 <= float(event["duration"]) < 3


@pytest.mark.parametrize("failure", ["unreachable", "http-500", "no-listener"])
async def test_push_error(start_platform, app_server, failure):
    notify = {"unreachable": f"http://127.0.0.1:{free_port()}/notify",
              "http-500": app_server.url + "/notify", "no-listener": None}[failure]
    app_server.notify_status = 500
    p = await start_platform(notify_url=notify, event_url=app_server.url + "/event")
    alice = Party(p.url, "alice")
    await alice.make_call(("bob", "demo-app"), p.token("alice"))
    await both_end(R.PUSH_ERROR, Source.CLOUD_SERVER, alice)
    assert "wait_connected" not in alice.events.names
    await check_event(app_server, alice.call.sid, R.PUSH_ERROR, 4, 127)


@pytest.mark.parametrize("bad", ["signature", "api-key", "stale-iat", "future-iat", "not-a-jwt"])
async def test_service_access_token_error(start_platform, app_server, bad):
    p = await start_platform(event_url=app_server.url + "/event")
    key = token.ServiceKey("demo-app", "demo-app-key", APP_SECRET)
    tok = {
        "signature": token.issue(token.ServiceKey("demo-app", "demo-app-key", "x" * 40), "alice"),
        "api-key": token.issue(token.ServiceKey("demo-app", "no-such-key", APP_SECRET), "alice"),
        "stale-iat": token.issue(key, "alice", now=time.time() - 3600),
        "future-iat": token.issue(key, "alice", now=time.time() + 3600),
        "not-a-jwt": "hello",
    }[bad]
    alice = Party(p.url, "alice")
    async with Party(p.url, "bob").listener(p.token("bob")) as pushes:
        await alice.make_call(("bob", "demo-app"), tok)
        await both_end(R.SERVICE_ACCESS_TOKEN_ERROR, Source.CLOUD_SERVER, alice)
        with pytest.raises(TimeoutError):
            await pushes.next(timeout=0.5)     # the callee never hears of it
    await check_event(app_server, alice.call.sid, R.SERVICE_ACCESS_TOKEN_ERROR, 4, 127)


async def test_token_for_another_user_is_auth_error(start_platform, app_server):
    p = await start_platform(event_url=app_server.url + "/event")
    alice = Party(p.url, "alice")
    await alice.make_call(("bob", "demo-app"), p.token("mallory"))
    await both_end(R.AUTH_ERROR, Source.CLOUD_SERVER, alice)
    await check_event(app_server, alice.call.sid, R.AUTH_ERROR, 4, 127)


async def test_replayed_cc_param_never_makes_a_second_leg(start_platform, app_server):
    p = await start_platform(event_url=app_server.url + "/event")
    alice, bob, cc_param = await ring(p, tone=1000)
    await bob.call.accept_call()
    replay = Party(p.url, "bob")
    await replay.verify(cc_param)
    await both_end(R.RELEASED_CALL, Source.CLOUD_SERVER, replay)
    assert "verified" not in replay.events.names
    assert alice.call.state == bob.call.state == "connected"
    await alice.call.end_call()
    await both_end(R.NORMAL, Source.CALLER, alice, bob)
    after = Party(p.url, "bob")
    await after.verify(cc_param)                 # and after the call ended
    await both_end(R.RELEASED_CALL, Source.CLOUD_SERVER, after)
    await check_event(app_server, alice.call.sid, R.NORMAL, 2, 16)
    assert [e["sid"] for e in app_server.events].count(alice.call.sid) == 1


async def test_altered_or_misdirected_cc_param(start_platform):
    p = await start_platform()
    alice, bob, cc_param = await ring(p, verify=False)
    raw = bytearray(base64.urlsafe_b64decode(cc_param + "=" * (-len(cc_param) % 4)))
    raw[-34] ^= 1                                # last digit of exp: a different expiry, same MAC
    forged = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    mallory = Party(p.url, "bob")
    await mallory.verify(forged)
    await both_end(R.AUTH_ERROR, Source.CLOUD_SERVER, mallory)
    carol = Party(p.url, "carol")                # a cc_param pushed to bob, used by carol
    await carol.verify(cc_param)
    await both_end(R.AUTH_ERROR, Source.CLOUD_SERVER, carol)
    with pytest.raises(StartFailError) as exc:
        await Party(p.url, "bob").verify("not base64 at all!")
    assert exc.value.reason is StartFailReason.DECODE_CALL_PARAM
    await bob.verify(cc_param)                   # the real callee still can take the call
    await asyncio.wait_for(bob.events.verified.wait(), 5)
    await bob.call.accept_call()
    await alice.call.end_call()
    await both_end(R.NORMAL, Source.CALLER, alice, bob)


async def test_signalling_lost_ends_the_call_for_the_peer(start_platform):
    p = await start_platform()
    alice, bob, _ = await ring(p)
    await bob.call.accept_call()
    await bob.call._ws.close()                   # bob's app dies without endCall
    ended = await alice.ended()
    assert (ended.reason, ended.source) == (R.NETWORK_UNSTABLE, Source.CALLEE)


async def test_mute_and_dtmf_reach_the_peer(start_platform):
    p = await start_platform()
    alice, bob, _ = await ring(p)
    await bob.call.accept_call()
    await asyncio.wait_for(alice.events.connected.wait(), 5)
    alice.call.mute_my_audio(True)
    alice.call.mute_my_audio(False)
    await alice.call.send_dtmf("12#")
    await bob.call.send_dtmf("*9")
    await asyncio.sleep(0.3)
    assert bob.events.peer_muted == [True, False]
    assert bob.events.dtmf == ["12#"] and alice.events.dtmf == ["*9"]
    await alice.call.end_call()
    await both_end(R.NORMAL, Source.CALLER, alice, bob)
