"""Garbage on every entry point gets a clear error and leaves other calls alone."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from bridge import callbacks
from bridge.audio import RATE, tone_analysis
from bridge.reasons import DisconnectReason as R, Source
from bridge.sdk import MakeCallParams, StartFailError, StartFailReason, Call
from conftest import APP_SECRET
from parties import Party
from test_reasons import both_end, ring


async def raw_socket(p, session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
    return await session.ws_connect(p.url.replace("http", "ws") + "/v1/ws")


async def reply(ws) -> dict:
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def test_garbage_frames_get_errors_and_other_calls_go_on(start_platform):
    p = await start_platform()
    alice, bob, _ = await ring(p, tone=1000)
    await bob.call.accept_call()
    await asyncio.sleep(0.5)
    async with aiohttp.ClientSession() as session:
        ws = await raw_socket(p, session)
        cases = [
            ("not json {", "bad_json"),
            ("[1, 2, 3]", "bad_message"),
            ('{"no": "type"}', "bad_message"),
            ('{"type": "launch_missiles"}', "unknown_type"),
            ('{"type": "make_call", "token": "t"}', "missing_field"),
            (json.dumps({"type": "make_call", "token": "t", "my_id": 5, "my_service_id": "demo-app",
                         "peer_id": "bob", "peer_service_id": "demo-app", "media_type": "audio",
                         "sdp": "x"}), "wrong_type"),
            (json.dumps({"type": "mute", "muted": 1}), "wrong_type"),
            (json.dumps({"type": "verify_call", "cc_param": "x", "my_id": "b b",
                         "my_service_id": "demo-app", "media_type": "audio"}), "invalid_id"),
            (json.dumps({"type": "verify_call", "cc_param": "x", "my_id": "bob",
                         "my_service_id": "demo-app", "media_type": "video"}), "invalid_media_type"),
            (json.dumps({"type": "dtmf", "digits": "12;rm"}), "invalid_digits"),
            (json.dumps({"type": "hold"}), "missing_field"),
            (json.dumps({"type": "hold", "held": "yes"}), "wrong_type"),
            (json.dumps({"type": "hold", "held": 1}), "wrong_type"),
            (json.dumps({"type": "hold", "held": None}), "wrong_type"),
        ]
        for text, code in cases:
            await ws.send_str(text)
            answer = await reply(ws)
            assert answer["type"] == "error" and answer["code"] == code, (text, answer)
            assert answer["message"]
        await ws.send_bytes(b"\x00\x01binary")
        assert (await reply(ws))["code"] == "binary"
        # a valid message that may not open a socket: refused, socket closed
        await ws.send_str('{"type": "accept_call"}')
        assert (await reply(ws))["code"] == "unexpected"
        assert (await ws.receive(timeout=5)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

        ws = await raw_socket(p, session)
        await ws.send_str("x" * (p.cfg.platform.max_message_bytes + 1))
        closed = await ws.receive(timeout=5)
        assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG

    # the call that was up all along still carries audio and ends normally
    bob.heard._chunks.clear()
    await asyncio.sleep(1.2)
    freq, snr = tone_analysis(bob.heard.samples[-RATE:])
    assert abs(freq - 1000) < 20 and snr > 20
    assert alice.call.state == bob.call.state == "connected"
    await alice.call.end_call()
    await both_end(R.NORMAL, Source.CALLER, alice, bob)


async def test_out_of_turn_messages_are_refused_without_harm(start_platform):
    p = await start_platform()
    alice, bob, _ = await ring(p)
    await alice.call._send({"type": "accept_call"})      # only the callee may accept
    await alice.call._send({"type": "answer", "sdp": "v=0"})
    await bob.call._send({"type": "dtmf", "digits": "1"})  # not connected yet
    await bob.call._send({"type": "hold", "held": True})   # nor may a ringing call be held
    await asyncio.sleep(0.3)
    assert [e["code"] for e in alice.call.errors] == ["unexpected", "unexpected"]
    assert [e["code"] for e in bob.call.errors] == ["unexpected", "unexpected"]
    assert alice.events.peer_held == []
    assert alice.call.state == "calling" and bob.call.state == "verified"
    await bob.call.accept_call()
    await alice.call.end_call()
    await both_end(R.NORMAL, Source.CALLER, alice, bob)


async def test_rest_api_for_app_servers(start_platform, app_server):
    p = await start_platform(event_url=app_server.url + "/event")
    alice, bob, _ = await ring(p)
    await bob.call.accept_call()
    sid = alice.call.sid

    def signed(method: str, path: str, secret: str = APP_SECRET, key: str = "demo-app-key") -> dict:
        return {callbacks.API_KEY: key, **callbacks.signed_headers(secret, f"{method} {path}")}

    async with aiohttp.ClientSession() as http:
        async def call(method: str, sid: str, headers: dict) -> tuple[int, dict]:
            async with http.request(method, f"{p.url}/v1/calls/{sid}", headers=headers) as r:
                return r.status, await r.json()

        status, body = await call("GET", sid, signed("GET", f"/v1/calls/{sid}"))
        assert status == 200 and body["state"] == "connected" and body["from"] == "alice@demo-app"
        for headers in ({}, signed("GET", f"/v1/calls/{sid}", secret="y" * 40),
                        signed("GET", f"/v1/calls/{sid}", key="nope"),
                        signed("GET", "/v1/calls/another")):
            status, body = await call("GET", sid, headers)
            assert status == 401 and body["error"] == "unauthorized" and body["message"]
        status, body = await call("GET", "no-such-call", signed("GET", "/v1/calls/no-such-call"))
        assert status == 404 and body["error"] == "unknown_call"
        other = signed("GET", f"/v1/calls/{sid}", secret="other-app-test-secret-0123456789abcdef",
                       key="other-app-key")
        status, body = await call("GET", sid, other)      # another service's call: not yours
        assert status == 404
        status, body = await call("DELETE", sid, signed("DELETE", f"/v1/calls/{sid}"))
        assert status == 200
    await both_end(R.NORMAL, Source.APP_SERVER, alice, bob)
    event = await app_server.event_for(sid)
    assert event["releaser_type"] == "5"


@pytest.mark.parametrize("field,value,reason", [
    ("my_id", "alice smith", StartFailReason.INVALID_USER_ID),
    ("my_id", "a" * 65, StartFailReason.INVALID_USER_ID),
    ("peer_id", "", StartFailReason.INVALID_USER_ID),
    ("my_service_id", "demo_app", StartFailReason.INVALID_SERVICE_ID),
    ("peer_service_id", "demo app", StartFailReason.INVALID_SERVICE_ID),
    ("media_type", "video", StartFailReason.INVALID_MEDIA_TYPE),
    ("app_server_data", "x" * 4097, StartFailReason.TOO_LONG_APP_SERVER_DATA),
    ("peer_id", "alice", StartFailReason.ID_CONFLICT),
    ("access_token", "", StartFailReason.INVALID_PARAM),
    ("audio", "/no/such.wav", StartFailReason.INVALID_PARAM),
])
async def test_make_call_validates_locally(field, value, reason):
    params = dict(my_id="alice", my_service_id="demo-app", peer_id="bob", peer_service_id="demo-app",
                  access_token="t")
    params[field] = value
    call = Call("http://127.0.0.1:9")          # nothing listens there: validation comes first
    with pytest.raises(StartFailError) as exc:
        await call.make_call(MakeCallParams(**params))
    assert exc.value.reason is reason and exc.value.message
    assert call.state == "idle"


async def test_unreachable_platform_is_a_disconnect_not_a_traceback():
    alice = Party("http://127.0.0.1:9", "alice")
    await alice.make_call(("bob", "demo-app"), "token")
    ended = await alice.ended()
    assert ended.reason is R.UNAVAILABLE_NETWORK
