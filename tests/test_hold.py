"""Hold the app can see, both ways, with real peers.

- The platform relays `hold` as `peer_hold`: the SDK's evt_peer_hold / evt_peer_unhold, and the
  holder sends silence meanwhile.
- The SIP leg's own hold: a re-INVITE offering a=sendonly (baresip answers recvonly), then
  a=sendrecv; 491 glare retried after RFC 3261 14.1's wait; refusals leave the call as it was.
- Through `bridge run`: baresip's `hold`/`resume` reach the app user's SDK; the app user's
  hold() puts the phone on hold and it hears music on hold (a 500 Hz WAV) or silence, then
  audio both ways again after unhold(). Audio is judged by FFT at both ends; what the phone is
  sent is read off the wire (`testbed.sniff`: baresip stops recording at a re-INVITE).
"""

from __future__ import annotations

import asyncio
import re
import time

import numpy as np
import pytest

from bridge.audio import RATE, tone_analysis
from bridge.reasons import DisconnectReason as R, Source
from bridge.sip import SipResult
from parties import Party
from sipagent import Agent, blocking
from sippeer import SipPeer, sdp
from stack import call_desk_phone, kamailio, start_bridge  # noqa: F401  (fixtures)
from test_reasons import both_end, ring
from test_sip_leg import assert_tone, play
from test_sip_transactions import answered_outgoing, in_dialog, invite_in, peer  # noqa: F401  (fixture)
from testbed import tone_wav
from testbed.audio import rms_dbfs
from testbed.fixtures import baresip_factory, kamailio_factory  # noqa: F401
from testbed.sniff import RtpSniffer


@pytest.fixture
async def agent(kamailio):  # noqa: F811
    a = await Agent(kamailio).start()
    yield a
    await a.ua.stop()


@pytest.fixture
async def scripted_agent(peer):
    """The bridge's user agent registered at a scripted SIP peer (which plays PBX and phone)."""
    a = await Agent(peer).start()
    yield a
    await a.ua.stop()


def level_dbfs(pcm: np.ndarray) -> float:
    return rms_dbfs(pcm.astype(np.float64) / 32768)


def rtp_ports(log: str) -> tuple[int, int]:
    """(the bridge's RTP port, the phone's) of the one bridged call in a daemon's log."""
    found = re.findall(r"RTP 127\.0\.0\.1:(\d+) <-> \('127\.0\.0\.1', (\d+)\)", log)
    assert len(found) == 1, found
    return int(found[0][0]), int(found[0][1])


# --- the platform relays hold -----------------------------------------------------------------------

async def test_hold_reaches_the_peer_and_the_holder_sends_silence(start_platform):
    p = await start_platform()
    alice, bob, _ = await ring(p, tone=1000)
    await bob.call.accept_call()
    with pytest.raises(RuntimeError):                   # hold needs a connected call
        await Party(p.url, "carol").call.hold()
    await asyncio.sleep(1.5)
    await alice.call.hold()
    assert await bob.events.held_changes(1) == [True] and bob.call.peer_held and alice.call.held
    await asyncio.sleep(1.5)
    held = bob.heard.samples[-RATE:]
    assert np.sqrt(np.mean(held.astype(float) ** 2)) < 30, "the holder's tone still reached the peer"
    await alice.call.unhold()
    assert await bob.events.held_changes(2) == [True, False] and not bob.call.peer_held
    await asyncio.sleep(1.5)
    freq, snr = tone_analysis(bob.heard.samples[-RATE:])
    assert abs(freq - 1000) < 20 and snr > 20, (freq, snr)
    assert alice.events.peer_held == [] and not alice.call.errors
    await alice.call.end_call()
    await both_end(R.NORMAL, Source.CALLER, alice, bob)


# --- the SIP leg's own hold -------------------------------------------------------------------------

async def test_our_hold_is_a_sendonly_reinvite_that_baresip_accepts(agent, baresip_factory):  # noqa: F811
    phone = baresip_factory("2001", agent.kamailio, tone_hz=700)
    call = await agent.ua.call("2001")
    await asyncio.wait_for(call.answered, 10)
    port = call.media.local_address[1]
    with RtpSniffer(range(31000, 32000), range(10000, 19999)) as wire:    # what the phone is sent
        await play(call, 1000, 3.0)
        assert await call.hold(True)
        held = time.monotonic()
        assert (call.media.direction, call._remote_sdp.direction) == ("sendonly", "recvonly")
        assert call.held_locally and not call.on_hold_now             # we hold; the phone does not
        await play(call, 500, 3.0)                                      # sendonly: we may go on sending
        assert await call.hold(False)
        resumed = time.monotonic()
        assert (call.media.direction, call._remote_sdp.direction) == ("sendrecv", "sendrecv")
        heard: list[np.ndarray] = []
        await play(call, 1000, 3.0, heard)
        ended = time.monotonic()
    assert call.media.local_address[1] == port                          # the same RTP stream throughout
    assert_tone(np.concatenate(heard[-75:]), 700)                       # the phone talks to us again
    ports = (port, call.media.remote_address[1])
    assert_tone(wire.pcm(held + 0.3, resumed, ports), 500)
    assert_tone(wire.pcm(resumed + 0.3, ended, ports), 1000)
    await call.hangup()


def from_callee(peer: SipPeer, method: str, invite, cseq: int, body: str = "") -> str:
    """A request from the called peer inside the dialog of our INVITE `invite` (its tag: a1)."""
    contact = invite.header("Contact").strip("<>")
    lines = [f"{method} {contact} SIP/2.0", f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bK{cseq}x;rport",
             "Max-Forwards: 70", f"From: {invite.header('To')};tag=a1", f"To: {invite.header('From')}",
             f"Call-ID: {invite.header('Call-ID')}", f"CSeq: {cseq} {method}",
             f"Contact: <sip:2001@127.0.0.1:{peer.port}>"]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


async def test_a_491_to_our_hold_is_retried_after_the_rfc_wait_and_crossing_reinvites_get_491(peer, scripted_agent):
    call, invite, _ = await answered_outgoing(peer, scripted_agent)
    holding = asyncio.ensure_future(call.hold(True))
    first = await peer.expect("INVITE")
    assert "a=sendonly" in first.body and first.header("Call-ID") == call.call_id
    peer.send(from_callee(peer, "INVITE", invite, 7, sdp(40010, direction="sendonly")), scripted_agent.addr)
    assert (await peer.expect(491)).cseq == 7                           # its re-INVITE crossed ours
    peer.send(peer.response(first, 491, "Request Pending"), first.source)
    refused = time.monotonic()
    again = await peer.expect("INVITE", timeout=6)
    waited = time.monotonic() - refused
    assert 2.0 <= waited <= 4.3, waited                                 # we chose the Call-ID: 2.1-4 s
    assert again.cseq > first.cseq and "a=sendonly" in again.body
    peer.send(peer.response(again, 200, "OK", headers=[("Contact", f"<sip:2001@127.0.0.1:{peer.port}>")],
                            body=sdp(40010, direction="recvonly")), again.source)
    assert (await peer.expect("ACK")).cseq == again.cseq
    assert await asyncio.wait_for(holding, 3) and call.media.direction == "sendonly"
    await call.hangup()


async def test_a_refused_hold_leaves_the_call_and_a_481_ends_it(peer, scripted_agent):
    invite, call = await invite_in(peer, scripted_agent)                # the peer calls: we answer
    answering = asyncio.ensure_future(call.answer())
    ok = await peer.expect(200)
    peer.send(in_dialog(peer, "ACK", invite, ok, 1), scripted_agent.addr)
    await asyncio.wait_for(answering, 3)
    holding = asyncio.ensure_future(call.hold(True))
    reinvite = await peer.expect("INVITE")
    peer.send(peer.response(reinvite, 488, "Not Acceptable Here"), reinvite.source)
    assert not await asyncio.wait_for(holding, 3)
    assert call.state == "answered" and not call.held_locally and call.media.direction == "sendrecv"
    holding = asyncio.ensure_future(call.hold(True))
    reinvite = await peer.expect("INVITE")
    peer.send(peer.response(reinvite, 481, "Call Does Not Exist"), reinvite.source)
    assert not await asyncio.wait_for(holding, 3)
    end = await asyncio.wait_for(call.ended, 3)                         # RFC 3261 14.1: the dialog is gone
    assert end.result is SipResult.SESSION_EXPIRED and end.by == "local"
    assert scripted_agent.ua.ports.in_use == 0


# --- music on hold at the SIP leg's rate ---------------------------------------------------------

@pytest.mark.parametrize("codec,rate", [("PCMU", 8000), ("G722", 16000)])
async def test_music_on_hold_is_sent_at_the_sip_legs_rate(tmp_path, codec, rate):
    """AppToSip.play_held sends the music, resampled for the SIP leg's codec, over a real UDP
    socket; it is decoded here with PyAV's own decoder (G.722) or mu-law by hand (G.711)."""
    import socket as sockets

    import av

    from bridge.audio import read_wav
    from bridge.media import AppToSip
    from bridge.rtp import RtpEndpoint
    from testbed.pcap import ulaw_decode
    wav = tone_wav(tmp_path / "moh.wav", 1300, 2.0, rate=44100, dbfs=-10)
    phone = sockets.socket(sockets.AF_INET, sockets.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    phone.setblocking(False)
    rtp = await RtpEndpoint.create("127.0.0.1", remote=phone.getsockname())
    rtp.set_codec(codec)
    sink = AppToSip()
    sink.relay_to(rtp)
    sink.held = True
    music = asyncio.ensure_future(sink.play_held(lambda r: read_wav(str(wav), r)))
    await asyncio.sleep(1.5)
    sink.held = False
    await asyncio.wait_for(music, 1)
    rtp.close()
    payloads = []
    while True:
        try:
            payloads.append(phone.recv(2048)[12:])
        except BlockingIOError:
            break
    phone.close()
    assert 65 <= len(payloads) <= 80 and {len(p) for p in payloads} == {160}, (len(payloads), codec)
    if codec == "G722":
        decoder = av.CodecContext.create("g722", "r")
        decoder.sample_rate, decoder.layout = 16000, "mono"
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for p in payloads for f in decoder.decode(av.Packet(p))])
    else:
        pcm = ulaw_decode(b"".join(payloads))
    assert len(pcm) == len(payloads) * rate // 50
    assert_tone(pcm[rate // 10:].astype(np.int16), 1300, rate)


# --- through the bridge ---------------------------------------------------------------------------

async def test_desk_phone_hold_and_resume_reach_the_app_user(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    alice = await call_desk_phone(bridge)
    await asyncio.sleep(3)
    assert (await blocking(phone.command, "hold")).get("ok")
    assert await alice.events.held_changes(1, 5) == [True] and alice.call.peer_held
    await asyncio.sleep(2)
    assert (await blocking(phone.command, "resume")).get("ok")
    assert await alice.events.held_changes(2, 5) == [True, False] and not alice.call.peer_held
    await asyncio.sleep(3)
    freq, snr = tone_analysis(alice.heard.samples[-int(1.5 * RATE):])
    assert abs(freq - 700) < 14 and snr > 20, (freq, snr)              # the phone is heard again
    await alice.call.end_call()
    assert "the phone holds the call" in bridge.log() and "the phone resumes the call" in bridge.log()


@pytest.mark.parametrize("codecs,music", [
    (None, True),           # G.711 relay; music on hold from a 44.1 kHz WAV, resampled to 8 kHz
    (["opus"], False),      # Opus, transcoded; silence on hold
])
async def test_app_user_hold_puts_the_phone_on_hold(start_bridge, kamailio, baresip_factory, tmp_path,  # noqa: F811
                                                    codecs, music):
    moh = tone_wav(tmp_path / "moh-500hz.wav", 500, 3.0, rate=44100, dbfs=-10)

    def edit(d: dict) -> None:
        if codecs:
            d["webrtc"]["codecs"] = codecs
        if music:
            d["bridge"]["music_on_hold"] = str(moh)
    bridge = await start_bridge(edit)
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    with RtpSniffer(range(33000, 34000), range(10000, 19999)) as wire:    # the bridge -> the phone
        alice = await call_desk_phone(bridge)                           # alice plays 1000 Hz
        await asyncio.sleep(4)                                           # baresip's audio starts late
        talking = time.monotonic()
        await alice.call.hold()
        held = time.monotonic()
        await asyncio.sleep(4)
        await alice.call.unhold()
        resumed = time.monotonic()
        await asyncio.sleep(4)
        freq, snr = tone_analysis(alice.heard.samples[-int(1.5 * RATE):])
        assert abs(freq - 700) < 14 and snr > 20, (freq, snr)          # the phone is heard after unhold
        ended = time.monotonic()
    await alice.call.end_call()
    ports = rtp_ports(bridge.log())
    assert_tone(wire.pcm(talking - 2, talking, ports), 1000)            # alice, before the hold
    during = wire.pcm(held + 0.5, resumed - 0.2, ports)
    assert wire.count(held + 0.5, resumed - 0.2, ports) >= 0.9 * 50 * (resumed - held - 0.7)   # a stream, no gap
    if music:
        assert_tone(during, 500)
    else:
        assert level_dbfs(during) < -60, level_dbfs(during)
    assert_tone(wire.pcm(resumed + 1.0, ended, ports), 1000)            # alice again after unhold
    log = bridge.log()
    assert "the app user holds the call: the phone is on hold" in log, log[-3000:]
    assert "the app user resumes the call: the phone is back" in log
