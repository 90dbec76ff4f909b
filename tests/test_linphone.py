"""liblinphone's linphonec as the desk phone: a second SIP stack besides baresip (belle-sip and
mediastreamer2 share nothing with baresip's re/rem or with bridge), through the running daemon
(`bridge run`) and Kamailio. Calls both ways with PCMU (relayed to a G.711 app user) and G.722
(transcoded to an Opus app user, tones above G.711's 4 kHz band edge), DTMF both ways, hold and
resume from the phone; every tone checked by FFT at the far end.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bridge.audio import tone_analysis
from parties import Party, assert_heard, min_snr
from sipagent import blocking
from stack import kamailio, start_bridge  # noqa: F401  (fixtures)
from testbed.audio import read_wav
from testbed.fixtures import kamailio_factory, linphone_factory  # noqa: F401

# codec on the SIP leg, the app user's codecs (None: the SDK's own), the app's tone, the phone's
CODECS = [
    pytest.param("PCMU", None, 1000, 700, "relay", id="PCMU-relay"),
    pytest.param("G722", ("opus",), 5000, 6000, "transcode", id="G722-opus"),
]


def wideband(data: dict) -> None:
    data["sip"]["codecs"] = ["G722", "PCMU", "PCMA"]


def assert_recorded(path, freq: float, seconds: float = 1.5) -> None:
    """The end of the phone's recording (before the hang-up) holds `freq`. (linphonec records
    nothing while it holds a call, and it hears its own DTMF tones.)"""
    data, rate = read_wav(path)
    found, snr = tone_analysis(np.round(data * 32768)[-int((seconds + 0.5) * rate):-int(0.5 * rate)], rate)
    assert abs(found - freq) < freq * 0.01 and snr > min_snr(freq), \
        f"the phone heard {found:.0f} Hz at {snr:.1f} dB, not {freq}"


@pytest.mark.parametrize("codec,app_codecs,app_tone,phone_tone,mode", CODECS)
async def test_app_calls_linphone_dtmf_hold_and_resume(start_bridge, kamailio, linphone_factory,  # noqa: F811
                                                       codec, app_codecs, app_tone, phone_tone, mode):
    bridge = await start_bridge(wideband)
    phone = linphone_factory("2001", kamailio, codecs=(codec,), tone_hz=phone_tone)
    alice = Party(bridge.platform_url, "alice", tone=app_tone)
    await alice.make_call(("desk-2001", "demo-desk"), bridge.token("alice"), codecs=app_codecs)
    await asyncio.wait_for(alice.events.connected.wait(), 15)
    await blocking(phone.wait_connected, 5)
    await bridge.wait_log(f"media {mode}, app leg {alice.call.codec}, SIP leg {codec}")
    await asyncio.sleep(3)
    assert_heard(alice, phone_tone)

    await alice.call.send_dtmf("1#")                          # app signalling -> RFC 4733 -> linphone
    await blocking(phone.wait_dtmf, "1", 5)
    await blocking(phone.wait_dtmf, "#", 5)
    await blocking(phone.send_dtmf, "5")                      # linphone's RFC 4733 -> the app
    async with asyncio.timeout(5):
        while "5" not in alice.events.dtmf:
            await asyncio.sleep(0.05)

    phone.hold()                                              # re-INVITE a=sendonly: we answer recvonly
    await bridge.wait_log("held by the remote party")
    await asyncio.sleep(2)
    assert_heard(alice, phone_tone, 1.0)                      # its music on hold (its tone) still comes in
    phone.resume()
    await bridge.wait_log("resumed by the remote party")
    await asyncio.sleep(4)
    assert_heard(alice, phone_tone)

    mark = phone.mark()
    await alice.call.end_call()
    await blocking(phone.wait_ended, 5, mark)
    assert_recorded(phone.recorded, app_tone)                 # the app's tone reaches the phone again


@pytest.mark.parametrize("codec,app_codecs,app_tone,phone_tone,mode", CODECS)
async def test_linphone_calls_app_user(start_bridge, kamailio, linphone_factory,  # noqa: F811
                                       codec, app_codecs, app_tone, phone_tone, mode):
    bridge = await start_bridge(wideband)
    phone = linphone_factory("2002", kamailio, codecs=(codec,), tone_hz=phone_tone)
    agent = Party(bridge.platform_url, "agent-001", tone=app_tone)
    async with agent.listener(bridge.token("agent-001")) as pushes:
        mark = await blocking(phone.dial, "7001")
        push = await pushes.next(timeout=10)
        assert (push.caller_id, push.caller_service_id) == ("desk-2002", "demo-desk")
        await agent.verify(push.cc_param)
        await asyncio.wait_for(agent.events.verified.wait(), 5)
        await agent.call.accept_call()
        await blocking(phone.wait_connected, 5, mark)
        assert agent.call.codec == ("opus" if codec == "G722" else "PCMU")   # the app leg follows the SIP leg
        await bridge.wait_log(f"media {mode}, app leg {agent.call.codec}, SIP leg {codec}")
        await asyncio.sleep(4)
        assert_heard(agent, phone_tone)
        await blocking(phone.send_dtmf, "9")
        async with asyncio.timeout(5):
            while "9" not in agent.events.dtmf:
                await asyncio.sleep(0.05)
        await asyncio.sleep(3)                                # linphone played the DTMF tone to itself
        mark = phone.mark()
        await blocking(phone.hangup)
        await blocking(phone.wait_ended, 5, mark)
        await agent.ended(5)
    assert_recorded(phone.recorded, app_tone)
