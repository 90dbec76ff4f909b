"""The SIP leg against real peers: Kamailio (registrar/proxy, 407 on INVITE), baresip, sipp."""

from __future__ import annotations

import asyncio
import os
import socket
import threading

import numpy as np
import pytest

from bridge.audio import tone, tone_analysis
from bridge.clock import FrameClock
from bridge.sip import SipResult
from sipagent import Agent, blocking, sip_config
from stack import BRIDGE_USER, kamailio  # noqa: F401  (fixture)
from testbed import wav_dominant_frequency
from testbed.fixtures import baresip_factory, kamailio_factory, sipp  # noqa: F401

RATE = 8000


@pytest.fixture
async def agent(kamailio):
    a = await Agent(kamailio).start()
    yield a
    await a.ua.stop()


async def play(call, freq: float, seconds: float, heard: list[np.ndarray] | None = None) -> None:
    """Send a tone on the 20 ms clock for `seconds`, collecting what comes back."""
    samples = tone(freq, seconds + 0.1, rate=RATE, dbfs=-13)
    async for tick in FrameClock(0.020):
        if tick.index >= seconds * 50 or call.ended.done():
            return
        call.media.write_frame(samples[tick.index * 160:(tick.index + 1) * 160])
        frame = call.media.read_frame()
        if heard is not None:
            heard.append(frame)


def assert_tone(samples: np.ndarray, freq: float, rate: int = RATE, min_snr: float = 20) -> None:
    found, snr = tone_analysis(samples, rate)
    assert abs(found - freq) < freq * 0.02 and snr > min_snr, f"wanted {freq} Hz, got {found:.1f} Hz, SNR {snr:.1f} dB"


# --- registration --------------------------------------------------------------------------

async def test_registers_with_digest_auth(agent, kamailio):
    assert agent.ua.registration.state == "registered"
    assert await blocking(kamailio.registered, BRIDGE_USER)
    assert "REGISTER challenge" in kamailio.log_text()       # it was challenged with 401 first


async def test_wrong_password_is_a_visible_failure_not_a_freeze(kamailio):
    a = await Agent(kamailio, password="wrong").start(registered=False)
    try:
        async with asyncio.timeout(5):
            while a.ua.registration.state != "failed":
                await asyncio.sleep(0.05)
        assert "401" in a.ua.registration.detail
        assert not await blocking(kamailio.registered, BRIDGE_USER)
    finally:
        await a.ua.stop()


async def test_registration_comes_back_after_kamailio_restart(kamailio):
    # A restart the keep-alives notice (registrar down for > 1 s) brings a new REGISTER at
    # once; a quick one they miss is repaired by the next refresh (at 80 % of expiry).
    agent = await Agent(kamailio, register_expires=6).start()
    try:
        await blocking(kamailio.stop)
        async with asyncio.timeout(5):
            while agent.ua.registration.state != "failed":
                await asyncio.sleep(0.05)
        await blocking(kamailio.start)
        await agent.wait_registered(count=2, timeout=10)
        assert await blocking(kamailio.registered, BRIDGE_USER)
        await blocking(kamailio.restart)                              # quick restart
        assert not await blocking(kamailio.registered, BRIDGE_USER)  # the registrar forgot us
        await agent.wait_registered(count=3, timeout=10)
        assert await blocking(kamailio.registered, BRIDGE_USER)
    finally:
        await agent.ua.stop()


# --- outgoing calls -------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
async def test_call_baresip_tone_each_way(agent, baresip_factory, codec):  # noqa: F811
    phone = baresip_factory("2001", agent.kamailio, tone_hz=700, codecs=codec)
    call = await agent.ua.call("2001", caller="4242", display_name="App Alice")
    await asyncio.wait_for(call.answered, 10)
    assert call.codec == codec
    heard: list[np.ndarray] = []
    await play(call, 1000, 5.0, heard)
    await call.hangup()
    assert (await call.ended).result is SipResult.NORMAL
    await blocking(phone.wait_closed, 5)
    assert_tone(np.concatenate(heard[-100:]), 700)               # what baresip sent us
    freq, snr = await blocking(wav_dominant_frequency, phone.latest_recording("dec"), 1.0)
    assert abs(freq - 1000) < 20 and snr > 20, (freq, snr)        # what baresip heard
    established = [e for e in phone.ctrl.events if e.get("type") == "CALL_ESTABLISHED"]
    assert established[0]["peerdisplayname"] == "App Alice"       # the caller id the phone shows


async def test_remote_hangup_ends_the_call(agent, baresip_factory):  # noqa: F811
    phone = baresip_factory("2001", agent.kamailio)
    call = await agent.ua.call("2001")
    await asyncio.wait_for(call.answered, 10)
    await asyncio.sleep(0.5)
    await blocking(phone.hangup)
    end = await asyncio.wait_for(call.ended, 5)
    assert (end.result, end.by) == (SipResult.NORMAL, "remote")


async def test_busy(agent, baresip_factory):  # noqa: F811
    phone = baresip_factory("2001", agent.kamailio, answermode="manual")
    call = await agent.ua.call("2001")
    rang = asyncio.Event()
    call.on_ringing = lambda early: rang.set()
    await asyncio.wait_for(rang.wait(), 10)
    await blocking(phone.hangup)                                   # baresip rejects: 486
    end = await asyncio.wait_for(call.ended, 10)
    assert (end.result, end.code) == (SipResult.BUSY, 486)


@pytest.mark.parametrize("code,result", [(603, SipResult.DECLINED), (480, SipResult.UNAVAILABLE),
                                         (500, SipResult.SERVER_ERROR)])
async def test_desk_phone_refusals(agent, sipp, code, result):  # noqa: F811
    uas = await blocking(sipp.uas, agent.kamailio, "2003", code, "Nope")
    call = await agent.ua.call("2003")
    end = await asyncio.wait_for(call.ended, 15)
    assert (end.result, end.code) == (result, code)
    assert (await blocking(uas.wait, 10)).ok


async def test_not_found(agent):
    call = await agent.ua.call("2999")
    end = await asyncio.wait_for(call.ended, 10)
    assert (end.result, end.code) == (SipResult.NOT_FOUND, 404)


async def test_no_answer_cancels_after_ring_timeout(agent, baresip_factory):  # noqa: F811
    phone = baresip_factory("2001", agent.kamailio, answermode="manual")
    call = await agent.ua.call("2001", ring_timeout=2.0)
    end = await asyncio.wait_for(call.ended, 10)
    assert (end.result, end.code) == (SipResult.NO_ANSWER, 487)
    closed = await blocking(phone.wait_closed, 5)
    assert closed                                                  # the phone stopped ringing


async def test_cancel_before_answer(agent, baresip_factory):  # noqa: F811
    phone = baresip_factory("2001", agent.kamailio, answermode="manual")
    call = await agent.ua.call("2001")
    rang = asyncio.Event()
    call.on_ringing = lambda early: rang.set()
    await asyncio.wait_for(rang.wait(), 10)
    await call.hangup()
    end = await asyncio.wait_for(call.ended, 10)
    assert end.result is SipResult.CANCELLED
    await blocking(phone.wait_closed, 5)


async def test_wrong_credentials_for_invite_407(kamailio, baresip_factory):  # noqa: F811
    baresip_factory("2001", kamailio)
    a = await Agent(kamailio, username="2002", auth_username="2002", password="pw2002").start()
    try:
        # correct credentials: the 407 is answered and the call goes through
        ok = await a.ua.call("2001")
        await asyncio.wait_for(ok.answered, 10)
        await ok.hangup()
        # the password changes under us: a second 407 ends the call with a result, no freeze
        a.ua.cfg = sip_config(kamailio.port, username="2002", auth_username="2002", password="bad")
        bad = await a.ua.call("2001")
        end = await asyncio.wait_for(bad.ended, 10)
        assert (end.result, end.code) == (SipResult.AUTH_FAILED, 407)
        assert a.ua.registration.state == "registered"             # the phone is still alive
    finally:
        await a.ua.stop()


# --- incoming calls ---------------------------------------------------------------------------

async def test_incoming_call_from_baresip_with_audio_both_ways(agent, baresip_factory):  # noqa: F811
    phone = baresip_factory("2002", agent.kamailio, tone_hz=700)
    await blocking(phone.dial, BRIDGE_USER)
    call = await asyncio.wait_for(agent.incoming.get(), 10)
    assert call.dialed == BRIDGE_USER and call.caller.number == "2002"
    await call.ringing()
    await call.answer()
    await blocking(phone.wait_established, 5)
    heard: list[np.ndarray] = []
    await play(call, 1000, 5.0, heard)
    await blocking(phone.hangup)
    end = await asyncio.wait_for(call.ended, 5)
    assert (end.result, end.by) == (SipResult.NORMAL, "remote")
    assert_tone(np.concatenate(heard[-100:]), 700)
    freq, snr = await blocking(wav_dominant_frequency, phone.latest_recording("dec"), 1.0)
    assert abs(freq - 1000) < 20 and snr > 20, (freq, snr)


async def test_incoming_call_rejected_with_a_chosen_status(agent, baresip_factory):  # noqa: F811
    phone = baresip_factory("2002", agent.kamailio)
    await blocking(phone.dial, BRIDGE_USER)
    call = await asyncio.wait_for(agent.incoming.get(), 10)
    await call.reject(603)
    closed = await blocking(phone.wait_closed, 5)
    assert "603" in closed.get("param", "")


async def test_hold_and_resume_keep_one_media_stream(agent, baresip_factory):  # noqa: F811
    phone = baresip_factory("2001", agent.kamailio, tone_hz=700)
    call = await agent.ua.call("2001")
    await asyncio.wait_for(call.answered, 10)
    media, port = call.media, call.media.local_address[1]
    holds: list[bool] = []
    call.on_hold = holds.append
    await play(call, 1000, 2.0)
    assert (await blocking(phone.command, "hold")).get("ok")
    await play(call, 1000, 1.5)
    assert (await blocking(phone.command, "resume")).get("ok")
    heard: list[np.ndarray] = []
    await play(call, 1000, 3.0, heard)
    assert holds == [True, False]
    assert call.media is media and media.local_address[1] == port and not media.closed
    assert_tone(np.concatenate(heard[-75:]), 700)                 # audio flows again after resume
    await call.hangup()


# --- robustness ---------------------------------------------------------------------------------

async def test_options_unknown_methods_and_garbage(agent):
    from testbed import sip_request
    port = agent.ua.local[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:    # garbage first: ignored
        for junk in (b"\x00\xff" * 50, b"INVITE nothing\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n", b"\r\n\r\n"):
            s.sendto(junk, ("127.0.0.1", port))
    for method, expected in (("OPTIONS", 200), ("MESSAGE", 405), ("FROBNICATE", 501), ("BYE", 481)):
        reply = await blocking(sip_request, port, method, "probe", to_user="bridge")
        assert reply is not None and reply.status == expected, (method, reply)
    assert agent.ua.registration.state == "registered"


async def test_two_hundred_calls_leave_no_threads_or_fds(agent, baresip_factory):  # noqa: F811
    baresip_factory("2001", agent.kamailio, max_calls=8)

    async def one_call() -> None:
        call = await agent.ua.call("2001")
        await asyncio.wait_for(call.answered, 10)
        call.media.write_frame(np.zeros(160, np.int16))
        await call.hangup()
        assert (await call.ended).result is SipResult.NORMAL

    await one_call()                                                # warm up
    fds, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
    for _ in range(200):
        await one_call()
    await asyncio.sleep(0.5)
    assert len(os.listdir("/proc/self/fd")) <= fds
    assert threading.active_count() <= threads
    assert not agent.ua.calls and agent.ua.ports.in_use == 0
