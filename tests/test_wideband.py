"""Wideband end to end through the running daemon: baresip as the G.722 desk phone (its g722
module), SDK app users with Opus (transcoded at 16 kHz) or G.722 (relayed packet by packet).
Tones above 4 kHz prove the call is wideband: G.711 (the control case) cannot carry them.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bridge.audio import RATE, SamplesTrack, tone, tone_analysis
from parties import Party, assert_heard
from sipagent import blocking
from stack import Daemon, kamailio, start_bridge  # noqa: F401  (fixtures)
from testbed import read_wav
from testbed.audio import write_wav
from testbed.fixtures import baresip_factory, kamailio_factory, sipp  # noqa: F401

APP_TONE, PHONE_TONE = 5000, 6000


def band_level(samples: np.ndarray, rate: int, freq: float) -> float:
    """dB of `freq` (+-50 Hz) against the whole spectrum: how much of the signal that tone is."""
    x = samples.astype(np.float64) - np.mean(samples)
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / rate)
    return float(10 * np.log10(power[np.abs(f - freq) < 50].sum() / (power.sum() + 1e-9) + 1e-12))


def phone_heard(phone) -> tuple[np.ndarray, int]:
    data, rate = read_wav(phone.latest_recording("dec"))
    return np.round(data * 32768)[int(1.0 * rate):], rate


@pytest.mark.parametrize("app_codecs,mode", [
    (("opus",), "transcode"),   # G.722 <-> Opus: decoded, 16 kHz each way
    (("G722",), "relay"),       # G.722 on both legs: packets pass as they are
])
async def test_a_5khz_tone_crosses_a_wideband_call_both_ways(start_bridge, kamailio, baresip_factory,  # noqa: F811
                                                            app_codecs, mode):
    def wide(d: dict) -> None:
        d["sip"]["codecs"] = ["G722", "PCMU", "PCMA"]
        d["webrtc"]["codecs"] = ["PCMU", "PCMA", "G722", "opus"]
    bridge = await start_bridge(wide)
    phone = baresip_factory("2001", kamailio, tone_hz=PHONE_TONE, codecs="G722/16000/1,PCMU")
    alice = Party(bridge.platform_url, "alice", tone=APP_TONE)
    await alice.make_call(("desk-2001", "demo-desk"), bridge.token("alice"), codecs=app_codecs)
    await asyncio.wait_for(alice.events.connected.wait(), 15)
    assert alice.call.codec == app_codecs[0]
    await bridge.wait_log(f"media {mode}, app leg {app_codecs[0]}, SIP leg G722")
    await blocking(phone.wait_established, 5)
    await asyncio.sleep(5)                                     # baresip's audio starts 1-3 s late
    assert_heard(alice, PHONE_TONE)                            # 6 kHz from the phone reached the app
    await alice.call.end_call()
    await blocking(phone.wait_closed, 5)
    await asyncio.sleep(0.5)
    heard, rate = phone_heard(phone)
    assert rate == 16000 and band_level(heard, rate, APP_TONE) > -1.0, band_level(heard, rate, APP_TONE)
    async with asyncio.timeout(5):
        while f'bridge_media_total{{mode="{mode}"}} 1.0' not in await bridge.metrics():
            await asyncio.sleep(0.1)


async def test_narrowband_stops_at_4khz(start_bridge, kamailio, baresip_factory, tmp_path):  # noqa: F811
    """The control: with G.711 on the SIP leg, 1 kHz crosses each way and 6 kHz does not reach the
    app (nor could 5 kHz reach the phone: 8000 samples a second hold nothing above 4 kHz)."""
    bridge = await start_bridge()                               # sip.codecs: [PCMU, PCMA]
    mix16 = (tone(1000, 60, rate=16000, dbfs=-16) + tone(PHONE_TONE, 60, rate=16000, dbfs=-16)).astype(np.int16)
    phone = baresip_factory("2001", kamailio, source_wav=write_wav(tmp_path / "mix.wav", mix16, 16000),
                            codecs="G722/16000/1,PCMU")
    alice = Party(bridge.platform_url, "alice")
    mix48 = (tone(1000, 1, dbfs=-16) + tone(APP_TONE, 1, dbfs=-16)).astype(np.int16)
    alice._audio = lambda: SamplesTrack(mix48, loop=True)
    await alice.make_call(("desk-2001", "demo-desk"), bridge.token("alice"), codecs=("opus",))
    await asyncio.wait_for(alice.events.connected.wait(), 15)
    await bridge.wait_log("media transcode, app leg opus, SIP leg PCMU")
    await blocking(phone.wait_established, 5)
    await asyncio.sleep(5)
    heard = alice.heard.samples[-int(1.5 * RATE):]
    assert tone_analysis(heard)[0] == 1000 and band_level(heard, RATE, PHONE_TONE) < -30
    await alice.call.end_call()
    await blocking(phone.wait_closed, 5)
    await asyncio.sleep(0.5)
    data, rate = read_wav(phone.latest_recording("dec"))       # PCMU: recorded at 8 kHz, no room for 5 kHz
    assert rate == 8000 and tone_analysis(np.round(data[rate:] * 32768), rate)[0] == 1000


async def test_a_g722_phone_calls_a_g722_app_user_relayed(start_bridge, kamailio, baresip_factory):  # noqa: F811
    """Desk -> app: the app leg follows the SIP leg's G.722 (webrtc.codecs lists it), so packets relay."""
    def wide(d: dict) -> None:
        d["sip"]["codecs"] = ["PCMU", "G722"]
        d["webrtc"]["codecs"] = ["PCMU", "PCMA", "opus", "G722"]
    bridge: Daemon = await start_bridge(wide)
    phone = baresip_factory("2002", kamailio, tone_hz=PHONE_TONE, codecs="G722/16000/1")
    agent = Party(bridge.platform_url, "agent-001", tone=APP_TONE)
    async with agent.listener(bridge.token("agent-001")) as pushes:
        await blocking(phone.dial, "7001")
        push = await pushes.next(timeout=10)
        await agent.verify(push.cc_param)
        await asyncio.wait_for(agent.events.verified.wait(), 5)
        await agent.call.accept_call()
        await blocking(phone.wait_established, 5)
        assert agent.call.codec == "G722"
        await bridge.wait_log("media relay, app leg G722, SIP leg G722")
        await asyncio.sleep(5)
        assert_heard(agent, PHONE_TONE)
        await agent.call.end_call()
        await blocking(phone.wait_closed, 5)
    await asyncio.sleep(0.5)
    heard, rate = phone_heard(phone)
    assert band_level(heard, rate, APP_TONE) > -1.0


def g722_tone_pcap(path, freq: float, seconds: float):
    """A pcap of G.722 RTP (PT 9, 8000 Hz clock, 160 bytes per 20 ms) of a tone, encoded by FFmpeg
    directly (not through bridge's code), for sipp's play_pcap_audio."""
    import av
    from testbed.pcap import PcapRecord, Rtp, write_pcap
    encoder = av.CodecContext.create("g722", "w")
    encoder.format, encoder.layout, encoder.sample_rate = "s16", "mono", 16000
    signal = tone(freq, seconds, rate=16000, dbfs=-12)
    records = []
    for k in range(len(signal) // 320):
        frame = av.AudioFrame.from_ndarray(signal[k * 320:(k + 1) * 320].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 16000, k * 320
        payload = b"".join(bytes(p) for p in encoder.encode(frame))
        records.append(PcapRecord(1_700_000_000 + k * 0.02, Rtp(pt=9, seq=100 + k, ts=8000 + 160 * k, ssrc=0x722,
                                                                  payload=payload, marker=k == 0).pack()))
    return write_pcap(path, records)


async def test_a_delayed_offer_is_bridged_with_the_codec_of_the_acks_answer(start_bridge, kamailio, sipp,  # noqa: F811
                                                                            tmp_path):
    """Desk -> app with an INVITE without SDP: the bridge offers in its 200 (G.722 first), the ACK
    answers G.722 while the app leg is PCMU: the media path is chosen once the ACK told the codec
    (transcode, 16 kHz <-> 8 kHz), and the phone's tone reaches the app."""
    from testbed.sipp import HERE, SippProcess
    bridge = await start_bridge(lambda d: d["sip"].update(codecs=["G722", "PCMU", "PCMA"]))
    workdir = tmp_path / "delayed"
    workdir.mkdir()
    scenario = workdir / "uac.xml"
    scenario.write_text((HERE / "sipp_uac_delayed_offer.xml").read_text()
                        .replace("@@PCAP@@", str(g722_tone_pcap(workdir / "tone.pcap", 1000, 6)))
                        .replace("@@HOLD_MS@@", "6000"))
    agent = Party(bridge.platform_url, "agent-001", tone=440)
    async with agent.listener(bridge.token("agent-001")) as pushes:
        caller = SippProcess(scenario, kamailio.port, service="7001", auth=("2002", kamailio.users["2002"]),
                             keys={"from_user": "2002"}, timeout=25, workdir=workdir).start()
        push = await pushes.next(timeout=10)
        await agent.verify(push.cc_param)
        await agent.call.accept_call()
        assert agent.call.codec == "PCMU"
        await bridge.wait_log("media transcode, app leg PCMU, SIP leg G722")
        await asyncio.sleep(3)
        assert_heard(agent, 1000)
        result = await blocking(caller.wait, 15)
        assert result.ok, result.describe()
        offered = result.received_text().split("SIP/2.0 200", 1)[1]
        assert "m=audio" in offered and " RTP/AVP 9 0 8 101" in offered, offered
