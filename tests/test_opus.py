"""Opus coded by bridge per packet (`bridge.opus`, `bridge.media` recoding): packet lengths from
the TOC byte, the encoder following the SIP leg's rate across a transfer, phones whose packets
are not 20 ms, and Opus packets longer than 20 ms, over real UDP sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import fractions

import av
import numpy as np
import pytest

from bridge import g711, g722, opus
from bridge.audio import tone
from bridge.loadtest.opusbench import measure
from bridge.media import AppToSip, SipToApp
from bridge.rtp import RtpPacket
from test_g722 import WIDE, assert_tone, frames, phone_leg
from test_rtp import recv_all


@pytest.mark.parametrize("ms", [10, 20, 40, 60])
def test_packet_units_read_the_toc_byte(ms: int) -> None:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format, codec.bit_rate = 48000, "mono", "s16", 32000
    codec.time_base = fractions.Fraction(1, 48000)
    codec.options = {"frame_duration": str(ms)}
    codec.open()
    size = 48 * ms
    packets = []
    for k, chunk in enumerate(frames(tone(440, 0.24, rate=48000), size)):
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, k * size
        packets += [bytes(p) for p in codec.encode(frame)]
    assert packets and {opus.packet_units(p) for p in packets} == {size}
    assert opus.packet_units(b"") == 0


def test_the_encoder_takes_each_rate_and_the_decoder_gives_the_rate_it_is_made_for() -> None:
    encode = opus.Encoder()
    decoders = {rate: opus.Decoder(rate) for rate in (48000, 16000, 8000)}
    heard: dict[int, list[np.ndarray]] = {rate: [] for rate in decoders}
    for rate in (8000, 16000, 8000):                  # a transfer to a G.722 phone and back
        for chunk in frames(tone(1000, 0.4, rate=rate), rate // 50):
            packet = encode(chunk, rate)
            for out, decode in decoders.items():
                heard[out].append(decode(packet))
    for out, pcm in heard.items():
        assert {len(h) for h in pcm} == {out // 50}
        assert_tone(np.concatenate(pcm[-10:]), 1000, out)
    with pytest.raises(ValueError):
        encode(np.zeros(441, np.int16), 22050)
    with pytest.raises(ValueError):
        opus.Decoder(44100)
    assert len(decoders[8000](b"\xff\xff\xff")) == 0     # libopus refuses it: nothing, no exception
    assert len(decoders[8000](b"")) == 0                  # no payload: nothing (not a concealed loss)


async def test_opus_follows_the_sip_legs_rate_across_a_transfer() -> None:
    """G.711 phone, then (a transfer) a G.722 one: each packet recoded as it arrives, the
    second phone's 5 kHz reaches the app (Opus is then encoded at 16 kHz)."""
    track = SipToApp(lambda: "opus", relay=True)
    got: dict[str, list[bytes]] = {}
    for codec, freq, encode in (("PCMU", 1000, lambda f: g711.encode("PCMU", f)), ("G722", WIDE, g722.Encoder())):
        rate = 16000 if codec == "G722" else 8000
        endpoint, phone, _ = await phone_leg(codec)
        track.connect(endpoint)
        assert track.recoding
        got[codec] = []
        for k, chunk in enumerate(frames(tone(freq, 1.0, rate=rate, dbfs=-12), rate // 50)):
            pt = 9 if codec == "G722" else 0
            phone.sendto(RtpPacket(pt, k, 160 * k, 0x10 + pt, encode(chunk)).serialize(), endpoint.local_address)
            got[codec].append(bytes(await asyncio.wait_for(track.recv(), 1)))
        endpoint.close()
        phone.close()
    decode = opus.Decoder()
    pcm = {codec: np.concatenate([decode(p) for p in packets]) for codec, packets in got.items()}
    assert_tone(pcm["PCMU"][24000:], 1000, 48000)
    assert_tone(pcm["G722"][24000:], WIDE, 48000)
    track.stop()


async def test_a_phone_sending_30_ms_packets_reaches_the_app_in_20_ms_opus_frames() -> None:
    endpoint, phone, track = await phone_leg("PCMU", "opus")
    got = []
    for k, chunk in enumerate(frames(tone(1000, 1.2, rate=8000, dbfs=-12), 240)):    # 40 x 30 ms
        phone.sendto(RtpPacket(0, k, 240 * k, 0x30, g711.encode("PCMU", chunk)).serialize(), endpoint.local_address)
        got.append(await asyncio.wait_for(track.recv(), 1))            # one at once (30 ms: 1 or 2)
        while not track._packets.empty():
            got.append(await track.recv())
    assert len(got) == 60                                  # 1.2 s in 20 ms frames, none held back
    assert {b.pts - a.pts for a, b in zip(got, got[1:])} == {160}
    decode = opus.Decoder()
    assert_tone(np.concatenate([decode(bytes(p)) for p in got])[20 * 960:], 1000, 48000)
    track.stop()
    endpoint.close()
    phone.close()


async def test_60_ms_opus_packets_reach_the_phone_as_20_ms_ones() -> None:
    endpoint, phone, _ = await phone_leg("PCMU")
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format, codec.bit_rate = 48000, "mono", "s16", 32000
    codec.options = {"frame_duration": "60"}
    codec.open()
    relay = AppToSip().relay_to(endpoint, {111: "opus"})
    for k, chunk in enumerate(frames(tone(1000, 1.2, rate=48000, dbfs=-12), 2880)):
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, k * 2880
        for packet in codec.encode(frame):
            relay(111, k, 2880 * k, 0x60, bytes(packet))
    sent = await recv_all(phone)
    assert len(sent) == 60 and {len(p.payload) for p in sent} == {160}
    assert {(q.timestamp - p.timestamp) & 0xFFFFFFFF for p, q in zip(sent, sent[1:])} == {160}
    assert_tone(np.concatenate([g711.decode("PCMU", p.payload) for p in sent[20:]]), 1000, 8000)
    endpoint.close()
    phone.close()


def test_negotiated_payload_types_skip_what_is_malformed_or_unknown() -> None:
    from bridge.sdk import negotiated_codec, negotiated_payload_types
    sdp = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 x 0 96 200\r\na=rtpmap:111 opus/48000/2\r\n"
           "a=rtpmap:abc PCMA/8000\r\na=rtpmap:96\r\nm=video 9 RTP/AVP 97\r\na=rtpmap:97 VP8/90000\r\n")
    assert negotiated_payload_types(sdp) == {111: "opus", 0: "PCMU"}      # 96: no name, 200: unknown
    assert negotiated_codec(sdp) == "opus"
    assert negotiated_payload_types("v=0\r\nm=audio 9 RTP/AVP\r\n") == {}
    assert negotiated_codec("garbage") == ""


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("voice", ["far", "app"])
def test_the_encoder_settings_keep_speech_within_0_1_pesq_of_the_sip_codec_alone(voice, rate, tmp_path):
    """The SIP -> app direction's chain (the phone's G.711 or G.722, then bridge's Opus) on the
    load test's speech: `opus.COMPLEXITY` and `opus.BITRATE` are chosen for CPU, and may not cost
    the call more than 0.1 of PESQ against the phone's codec alone (issue 14's goal)."""
    alone, coded = measure(voice, rate, [(opus.COMPLEXITY, opus.BITRATE)], tmp_path)
    assert coded.nb >= alone.nb - 0.1, (alone, coded)
    if rate == 16000:
        assert coded.wb >= alone.wb - 0.1, (alone, coded)
    assert coded.kbps <= opus.BITRATE[rate] / 1000 * 1.05          # what the app leg carries


async def test_a_ringback_of_any_length_reaches_an_opus_app_leg_in_whole_20_ms_frames() -> None:
    """A WAV ringback need not be a whole number of 20 ms frames (here 125 ms): the loop wraps
    inside a frame, never handing the encoder a short one (libopus takes whole frames only)."""
    cycle = tone(1000, 0.125, rate=8000, dbfs=-12)
    track = SipToApp(lambda: "opus", relay=True, ringback=lambda rate: cycle)
    track.play_ringback()
    decode = opus.Decoder(8000)
    got = [decode(bytes(await asyncio.wait_for(track.recv(), 1))) for _ in range(20)]
    assert {len(pcm) for pcm in got} == {160}
    assert_tone(np.concatenate(got[5:]), 1000, 8000)
    track.stop()
