"""Wideband G.722 on the SIP leg: the codec (spandsp's encoder, FFmpeg's where there is no spandsp,
FFmpeg's decoder), the 8000 Hz RTP clock with 16 kHz audio in the RTP endpoint and the jitter
buffer, the 48 <-> 16 kHz resampler, and the media paths between the legs (relay G.722 <-> G.722,
transcode Opus or G.711 <-> G.722), over real UDP sockets on 127.0.0.1. End to end with real
phones: tests/test_wideband.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.rtp import RtpPacket as AiortcPacket

from bridge import codecs, config, g711, g722, opus
from bridge.audio import tone, tone_analysis
from bridge.clock import FrameClock
from bridge.jitter import JitterBuffer
from bridge.media import AppToSip, SipToApp, cancel_quietly
from bridge.resample import resampler
from bridge.rtp import RtpEndpoint, RtpPacket, TelephoneEvent
from bridge.sip import sdp
from test_rtp import HOST, raw_socket, recv_all

WIDE = 5000        # Hz: above G.711's 4 kHz band edge, inside G.722's 7 kHz


def frames(signal: np.ndarray, size: int) -> list[np.ndarray]:
    return [signal[i:i + size] for i in range(0, len(signal) - size + 1, size)]


def encoded_tone(freq: float, count: int) -> list[bytes]:
    encode = g722.Encoder()
    return [encode(f) for f in frames(tone(freq, count * 0.02, rate=16000, dbfs=-12), 320)]


async def phone_leg(codec: str, app_codec: str | None = None, relay: bool = True):
    """A bridge-side RTP endpoint of `codec`, the phone's raw socket it sends to, and (given the
    app leg's codec) the app leg's track connected to it."""
    endpoint = await RtpEndpoint.create(HOST, codec=codec)
    phone = raw_socket()
    endpoint.set_remote(phone.getsockname())
    track = None
    if app_codec is not None:
        track = SipToApp(lambda: app_codec, relay=relay)
        track.connect(endpoint)
    return endpoint, phone, track


def assert_tone(pcm: np.ndarray, freq: float, rate: int, min_snr: float = 20.0) -> None:
    found, snr = tone_analysis(pcm, rate)
    assert abs(found - freq) < 0.01 * freq and snr > min_snr, f"wanted {freq} Hz, got {found:.0f} Hz at {snr:.1f} dB"


# --- the codec and the resampler ---------------------------------------------------------------

def test_g722_carries_5khz_where_g711_cannot() -> None:
    signal = tone(WIDE, 1.0, rate=16000, dbfs=-12)
    encode, decode = g722.Encoder(), g722.Decoder()
    payloads = [encode(f) for f in frames(signal, 320)]
    assert {len(p) for p in payloads} == {160}                 # 64 kbit/s: 160 bytes per 20 ms
    out = np.concatenate([decode(p) for p in payloads])
    assert len(out) == len(signal) and out.dtype == np.int16
    assert_tone(out[1600:], WIDE, 16000)     # G.722 codes 4-8 kHz with 2 bits a sample: ~22 dB
    # narrowband: down to 8 kHz and back, 5 kHz is gone
    down, up = resampler(48000, 8000), resampler(8000, 48000)
    wide48 = tone(WIDE, 1.0, rate=48000, dbfs=-12)
    narrow = np.concatenate([up(down(f)) for f in frames(wide48, 960)])
    assert np.std(narrow[4800:]) < np.std(wide48) * 10 ** (-30 / 20)


def speech_like(seconds: float) -> np.ndarray:
    """Two tones inside and above G.711's band with noise: both of G.722's sub-bands busy."""
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * 16000)) / 16000
    mix = 8000 * np.sin(2 * np.pi * 440 * t) + 3000 * np.sin(2 * np.pi * 5100 * t) + rng.normal(0, 600, len(t))
    return mix.astype(np.int16)


def test_spandsp_encodes_as_ffmpeg_does() -> None:
    # spandsp's encoder is the one used (tests/run installs libspandsp2); FFmpeg's is what a system
    # without spandsp gets: both ITU's algorithm, the same bytes, on speech-like and full-scale input
    assert g722.Encoder is g722.SpandspEncoder
    square = np.where(np.sin(np.arange(16000) * 2 * np.pi * 300 / 16000) >= 0, 32767, -32768).astype(np.int16)
    for signal in (speech_like(2.0), square):
        ours, ffmpeg = g722.SpandspEncoder(), g722.FFmpegEncoder()
        assert [ours(f) for f in frames(signal, 320)] == [ffmpeg(f) for f in frames(signal, 320)]


def test_spandsp_encoder_holds_an_odd_sample_for_the_next_frame() -> None:
    # G.722 codes samples in pairs: 321 samples make 160 bytes now, the odd one leads the next frame
    signal = speech_like(0.5)
    encode, whole = g722.SpandspEncoder(), g722.SpandspEncoder()
    parts = [encode(signal[i:i + 321]) for i in range(0, 321 * 20, 321)]
    assert [len(p) for p in parts[:3]] == [160, 161, 160]
    assert b"".join(parts) == whole(signal[:321 * 20])


@pytest.mark.parametrize("freq,flat_db", [(300, 0.5), (1000, 0.5), (5000, 0.5), (6000, 2.0)])
def test_48k_16k_resampler_keeps_the_wideband_band(freq, flat_db) -> None:
    down, up = resampler(48000, 16000), resampler(16000, 48000)
    signal = tone(freq, 1.0, rate=48000, dbfs=-12)
    mid = np.concatenate([down(f) for f in frames(signal, 960)])
    back = np.concatenate([up(f) for f in frames(mid, 320)])
    assert len(mid) == 16000 and len(back) == 48000
    assert_tone(mid[1600:], freq, 16000, min_snr=40)
    assert_tone(back[4800:], freq, 48000, min_snr=25)
    assert abs(20 * np.log10(np.std(back[4800:]) / np.std(signal))) < flat_db   # down and up again


def test_resampler_refuses_rates_without_an_integer_factor() -> None:
    with pytest.raises(ValueError):
        resampler(48000, 44100)


# --- the jitter buffer with two samples per timestamp unit -------------------------------------

LEVELS = [int(v) for v in g711.decode("PCMU", bytes(range(0x90, 0x90 + 100)))]


def wide_packet(k: int, units: int = 160, seq0: int = 65530, ts0: int = 2**32 - 500) -> RtpPacket:
    """Packet k of a G.722-shaped stream: `units` timestamp units, each decoding to 2 samples."""
    return RtpPacket(9, (seq0 + k) & 0xFFFF, (ts0 + k * units) & 0xFFFFFFFF, 0x22, bytes([k % 100]) * units)


def two_per_unit(payload: bytes) -> np.ndarray:
    return np.repeat(np.array([LEVELS[b] for b in payload], np.int16), 2)


def test_jitter_buffer_plays_16khz_frames_on_the_8khz_clock() -> None:
    jb = JitterBuffer(target_ms=40, decode=two_per_unit, sample_rate=16000)
    order = [0, 1, 3, 2, 4, 6, 7, 8, 9, 10, 11, 12]          # 2 and 3 swapped, 5 lost; over both wraps
    out = []
    for t, k in enumerate(order):
        jb.put(wide_packet(k))
        out.append(jb.get())
    assert all(f.shape == (320,) and f.dtype == np.int16 for f in out)
    ids = [LEVELS.index(int(f[0])) if np.all(f == f[0]) and int(f[0]) in LEVELS else None for f in out]
    assert ids[:2] == [None, None]                           # 40 ms target: two frames
    assert ids[2:7] == [0, 1, 2, 3, 4]
    assert ids[7] is None and jb.stats.concealed == 1        # 5 concealed, 20 ms of 16 kHz
    assert ids[8:] == [6, 7, 8, 9]
    assert jb.depth_samples == 3 * 320                       # 10..12 ahead, in samples


def test_jitter_buffer_reassembles_30ms_g722_packets() -> None:
    jb = JitterBuffer(target_ms=40, decode=two_per_unit, sample_rate=16000)
    got = []
    for k in range(20):
        jb.put(wide_packet(k, units=240))
        got.append(jb.get())
        if k % 2:
            got.append(jb.get())                             # 3 frames per 2 packets
    pcm = np.concatenate(got)
    values = [v for v in dict.fromkeys(int(x) for x in pcm[2 * 320:]) if v]
    assert values == LEVELS[:len(values)] and len(values) >= 15
    assert jb.stats.concealed == 0


def test_a_new_sample_rate_starts_afresh() -> None:
    jb = JitterBuffer(target_ms=0)
    jb.put(RtpPacket(0, 1, 160, 7, b"\xff" * 160))
    assert jb.primed and jb.get().shape == (160,)
    jb.set_format(two_per_unit, 16000)
    assert not jb.primed and jb.get().shape == (320,)
    with pytest.raises(ValueError):
        jb.set_format(two_per_unit, 12000)


# --- the RTP endpoint ----------------------------------------------------------------------------

async def test_rtp_endpoint_sends_and_reads_g722_on_an_8khz_clock() -> None:
    a = await RtpEndpoint.create(HOST, codec="G722")
    b = await RtpEndpoint.create(HOST, codec="G722")
    watch = raw_socket()
    a.set_remote(watch.getsockname())
    assert (a.payload_type, a.sample_rate) == (9, 16000)
    signal = tone(WIDE, 0.4, rate=16000, dbfs=-12)
    for f in frames(signal, 320)[:5]:
        a.write_frame(f)
    a.send_dtmf("7", duration_ms=100)
    for f in frames(signal, 320)[5:12]:
        a.write_frame(f)
    sent = await recv_all(watch)
    audio = [p for p in sent if p.payload_type == 9]
    events = [(p, TelephoneEvent.parse(p.payload)) for p in sent if p.payload_type == 101]
    assert {len(p.payload) for p in audio} == {160}
    steps = {(q.timestamp - p.timestamp) & 0xFFFFFFFF for p, q in zip(audio, audio[1:])}
    assert steps <= {160, 160 * 6}, steps                    # 20 ms = 160 units; the event took 5 frames
    assert events[-1][1].end and events[-1][1].duration == 800   # 100 ms on the 8000 Hz clock

    a.set_remote(b.local_address)
    b.set_remote(a.local_address)
    heard = []
    for f in frames(tone(WIDE, 1.2, rate=16000, dbfs=-12), 320):
        a.write_frame(f)
        await asyncio.sleep(0.002)
        heard.append(b.read_frame())
    assert all(f.shape == (320,) for f in heard)
    assert_tone(np.concatenate(heard[-40:]), WIDE, 16000)
    for e in (a, b):
        e.close()
    watch.close()


# --- between the legs ------------------------------------------------------------------------------

async def test_g722_relays_both_ways_without_decoding() -> None:
    bridge_side = await RtpEndpoint.create(HOST, codec="G722")
    phone = raw_socket()
    bridge_side.set_remote(phone.getsockname())
    track = SipToApp(lambda: "G722", relay=True)
    track.play_ringback()
    ring = [await track.recv() for _ in range(50)]            # ringback, encoded here as G.722
    assert all(isinstance(p, av.Packet) and len(bytes(p)) == 160 for p in ring)
    assert [p.pts for p in ring[:3]] == [0, 160, 320]
    decode = g722.Decoder()
    rung = np.concatenate([decode(bytes(p)) for p in ring])
    spectrum = np.abs(np.fft.rfft(rung * np.hanning(len(rung))))
    band = np.fft.rfftfreq(len(rung), 1 / 16000)
    assert spectrum[(band > 420) & (band < 500)].sum() > 0.8 * spectrum.sum()

    track.connect(bridge_side)
    assert track.relaying
    payloads = encoded_tone(WIDE, 10)
    got = []
    for k, payload in enumerate(payloads):
        phone.sendto(RtpPacket(9, 500 + k, 7000 + 160 * k, 0x9, payload).serialize(), bridge_side.local_address)
        got.append(await asyncio.wait_for(track.recv(), 1))
    assert [bytes(p) for p in got] == payloads                  # the very bytes the phone sent
    assert {b.pts - a.pts for a, b in zip(got, got[1:])} == {160}

    relay = AppToSip().relay_to(bridge_side)
    for k, payload in enumerate(payloads):
        packet = AiortcPacket(payload_type=9, sequence_number=k, timestamp=320 + 160 * k, ssrc=0x5)
        packet.payload = payload
        relay(packet.payload_type, packet.sequence_number, packet.timestamp, packet.ssrc, packet.payload)
    sent = await recv_all(phone)
    assert [p.payload for p in sent] == payloads and {p.payload_type for p in sent} == {9}
    assert {(q.timestamp - p.timestamp) & 0xFFFFFFFF for p, q in zip(sent, sent[1:])} == {160}
    track.stop()
    bridge_side.close()
    phone.close()


@pytest.mark.parametrize("app_codec,app_rate", [("opus", 48000), ("PCMU", 8000)])
async def test_g722_phone_transcoded_on_the_clock_for_another_app_codec(app_codec, app_rate) -> None:
    """`bridge.media: transcode`. An Opus app leg stays wideband (5 kHz passes both ways); a
    G.711 one cannot carry 5 kHz, so 1 kHz is checked there. G.711 app packets are re-encoded
    here, Opus frames by aiortc."""
    freq = WIDE if app_codec == "opus" else 1000
    bridge_side, phone, track = await phone_leg("G722", app_codec, relay=False)
    assert not track.relaying and track.rate == app_rate
    got = []
    for k, payload in enumerate(encoded_tone(freq, 50)):       # one packet per 20 ms tick
        phone.sendto(RtpPacket(9, k, 160 * k, 0x9, payload).serialize(), bridge_side.local_address)
        got.append(await track.recv())
    assert all(isinstance(f, av.AudioFrame) and f.sample_rate == app_rate and f.samples == app_rate // 50
               for f in got)
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in got])
    assert_tone(pcm[len(pcm) // 2:], freq, app_rate)

    sink = AppToSip()
    pump = asyncio.ensure_future(sink.run(bridge_side))
    chunks = frames(tone(freq, 1.0, rate=app_rate, dbfs=-12), app_rate // 50)
    async for tick in FrameClock(0.020):                     # the app leg's frames, on time
        if tick.index == len(chunks):
            break
        sink(chunks[tick.index], app_rate)
    await cancel_quietly(pump)
    assert sink.stats.underruns <= 2, sink.stats
    await assert_phone_hears(phone, freq, at_least=40)
    track.stop()
    bridge_side.close()


@pytest.mark.parametrize("app_codec", ["opus", "PCMU"])
async def test_g722_phone_recoded_packet_by_packet_for_another_app_codec(app_codec) -> None:
    """`bridge.media: relay` with codecs that do not relay: each packet is decoded and encoded
    again as it arrives (no clock), its timing kept; Opus is encoded at the phone's 16 kHz and
    stays wideband (5 kHz passes both ways), G.711 carries 1 kHz."""
    freq = WIDE if app_codec == "opus" else 1000
    bridge_side, phone, track = await phone_leg("G722", app_codec)
    assert track.relaying and track.recoding
    got = []
    for k, payload in enumerate(encoded_tone(freq, 50)):
        phone.sendto(RtpPacket(9, 100 + k, 7000 + 160 * k, 0x9, payload).serialize(), bridge_side.local_address)
        got.append(await asyncio.wait_for(track.recv(), 1))    # each as the phone's arrives
    assert all(isinstance(p, av.Packet) for p in got)
    assert {b.pts - a.pts for a, b in zip(got, got[1:])} == {160}   # 20 ms apart on the 8 kHz timeline
    if app_codec == "opus":
        decode = opus.Decoder()
        pcm, rate = np.concatenate([decode(bytes(p)) for p in got]), 48000
        assert len(pcm) == 50 * 960
    else:
        pcm, rate = np.concatenate([g711.decode("PCMU", bytes(p)) for p in got]), 8000
    assert_tone(pcm[len(pcm) // 2:], freq, rate)

    sink = AppToSip()
    relay = sink.relay_to(bridge_side, {111: "opus"})
    signal = tone(freq, 1.0, rate=48000 if app_codec == "opus" else 8000, dbfs=-12)
    if app_codec == "opus":
        encode = opus.Encoder()
        payloads, pt, units = [encode(f, 48000) for f in frames(signal, 960)], 111, 960
    else:
        payloads, pt, units = [g711.encode("PCMU", f) for f in frames(signal, 160)], 0, 160
    for k, payload in enumerate(payloads):
        if k == 20:
            continue                                           # one lost: a gap, not a shift
        relay(pt, k, 5000 + units * k, 0x77, payload)
    sent = await assert_phone_hears(phone, freq, at_least=45)
    steps = [(q.timestamp - p.timestamp) & 0xFFFFFFFF for p, q in zip(sent, sent[1:])]
    assert sorted(set(steps)) == [160, 320] and steps.count(320) == 1, steps
    track.stop()
    bridge_side.close()


async def assert_phone_hears(phone, freq: float, at_least: int) -> list[RtpPacket]:
    sent = [p for p in await recv_all(phone) if p.payload_type == 9]
    phone.close()
    assert len(sent) >= at_least and {len(p.payload) for p in sent} == {160}
    decode = g722.Decoder()
    assert_tone(np.concatenate([decode(p.payload) for p in sent[-30:]]), freq, 16000)
    return sent


# --- choosing codecs -------------------------------------------------------------------------------

def test_offers_put_g722_first_unless_the_app_leg_relays_g711() -> None:
    assert sdp.offer_codecs(("PCMU", "PCMA")) == [("PCMU", 0), ("PCMA", 8)]
    assert sdp.offer_codecs(("PCMU", "PCMA", "G722")) == [("G722", 9), ("PCMU", 0), ("PCMA", 8)]
    assert sdp.offer_codecs(("PCMU", "PCMA", "G722"), "opus") == [("G722", 9), ("PCMU", 0), ("PCMA", 8)]
    assert sdp.offer_codecs(("G722", "PCMU", "PCMA"), "PCMA") == [("PCMA", 8), ("PCMU", 0), ("G722", 9)]
    assert sdp.offer_codecs(("PCMU", "G722"), "G722") == [("G722", 9), ("PCMU", 0)]


def test_answers_prefer_g722_when_both_sides_have_it() -> None:
    offer = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0 9 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    assert sdp.choose(sdp.parse(offer), ("PCMU", "G722"))[1] == ("G722", 9)
    assert sdp.choose(sdp.parse(offer), ("PCMU", "PCMA"))[1] == ("PCMU", 0)
    only = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 9\r\n"
    with pytest.raises(sdp.SdpError):
        sdp.choose(sdp.parse(only), ("PCMU", "PCMA"))
    assert sdp.choose(sdp.parse(only), ("PCMU", "PCMA", "G722"))[1] == ("G722", 9)


def test_the_app_leg_follows_the_sip_leg_where_that_relays_or_keeps_wideband() -> None:
    order = codecs.app_leg_order
    assert order(("PCMU", "PCMA", "opus"), "PCMA") == ("PCMU", "PCMA", "opus")      # relays already
    assert order(("PCMU", "PCMA", "opus", "G722"), "G722") == ("G722", "PCMU", "PCMA", "opus")
    assert order(("PCMU", "PCMA", "opus"), "G722") == ("opus", "PCMU", "PCMA")      # wideband kept
    assert order(("G722", "opus"), "PCMU") == ("G722", "opus")                      # nothing relays
    assert order(("opus", "PCMU"), None) == ("opus", "PCMU")                        # delayed offer


def test_config_accepts_g722_on_both_legs() -> None:
    sample = (Path(__file__).resolve().parent.parent / "config.yaml").read_text()
    assert "  codecs: [PCMU, PCMA]\n" in sample and "\nwebrtc:\n" in sample
    wide = sample.replace("  codecs: [PCMU, PCMA]\n", "  codecs: [G722, pcmu, PCMA]\n", 1) \
        .replace("\nwebrtc:\n", "\nwebrtc:\n  codecs: [g722, opus]\n", 1)
    cfg = config.loads(wide, "wide.yaml", env={})
    assert cfg.sip.codecs == ("G722", "PCMU", "PCMA") and cfg.webrtc.codecs == ("G722", "opus")
    with pytest.raises(config.ConfigError, match="sip.codecs"):
        config.loads(sample.replace("  codecs: [PCMU, PCMA]\n", "  codecs: [G729]\n", 1), "bad.yaml", env={})
