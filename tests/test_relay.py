"""The G.711 relay between the legs (bridge/media.py), over real UDP sockets on 127.0.0.1.

Packets pass as they arrive: payloads unchanged (or converted between the laws), the source's
timing and gaps kept in the RTP timestamps, late ones dropped, DTMF and hold still working.
End to end through Kamailio and baresip it is covered by test_bridge.py's tone tests.
"""

from __future__ import annotations

import asyncio

import av
import numpy as np
from aiortc.rtp import RtpPacket as AiortcPacket

from bridge import g711
from bridge.audio import GatedTrack, tone_analysis
from bridge.media import AppToSip, SipToApp
from bridge.rtp import RtpEndpoint, RtpPacket, TelephoneEvent
from test_rtp import HOST, raw_socket, recv_all, wait_until

TONE = (np.sin(2 * np.pi * 700 * np.arange(8000) / 8000) * 6000).astype(np.int16)


def fields(packet: AiortcPacket) -> tuple[int, int, int, int, bytes]:
    """What the relay's sink gets of a packet: payload type, sequence, timestamp, SSRC, payload."""
    return packet.payload_type, packet.sequence_number, packet.timestamp, packet.ssrc, packet.payload


def frame(k: int) -> np.ndarray:
    return TONE[(k * 160) % 8000:(k * 160) % 8000 + 160]


async def test_phone_to_app_keeps_timing_converts_law_and_drops_late_packets() -> None:
    bridge_side = await RtpEndpoint.create(HOST, codec="PCMU")
    phone = raw_socket()
    track = SipToApp(lambda: "PCMA", relay=True)
    track.connect(bridge_side)
    assert track.relaying
    order = [0, 1, 2, 3, 7, 8, 5, 9]        # 4..6 lost, 5 arrives late (after 8)
    for k in order:
        packet = RtpPacket(0, 1000 + k, 50_000 + 160 * k, 0xAB, g711.encode("PCMU", frame(k)))
        phone.sendto(packet.serialize(), bridge_side.local_address)
    await wait_until(lambda: track._packets.qsize() == 7)
    got = [await track.recv() for _ in range(7)]
    assert all(isinstance(p, av.Packet) for p in got)
    steps = [b.pts - a.pts for a, b in zip(got, got[1:])]
    assert steps == [160, 160, 160, 640, 160, 160], steps     # the hole stays where it was
    assert track.stats.late == 1 and track.stats.frames == 7
    pcm = np.concatenate([g711.decode("PCMA", bytes(p)) for p in got])
    freq, snr = tone_analysis(pcm, 8000)
    assert abs(freq - 700) < 10 and snr > 30, (freq, snr)      # A-law now, the same tone
    track.stop()
    bridge_side.close()
    phone.close()


async def test_phone_to_app_new_source_continues_on_the_wall_clock() -> None:
    bridge_side = await RtpEndpoint.create(HOST, codec="PCMU")
    phone = raw_socket()
    track = SipToApp(lambda: "PCMU", relay=True)
    track.play_ringback()
    ring = [await track.recv() for _ in range(3)]            # ringback, clocked, in PCMU already
    assert [p.pts for p in ring] == [0, 160, 320]
    track.connect(bridge_side)
    await asyncio.sleep(0.2)
    for ssrc, ts in ((1, 7_000_000), (1, 7_000_160), (2, 123)):   # a new SSRC starts anew
        phone.sendto(RtpPacket(0, ts & 0xFFFF, ts, ssrc, b"\xff" * 160).serialize(),
                     bridge_side.local_address)
    await wait_until(lambda: track._packets.qsize() == 3)
    first, second, third = [await track.recv() for _ in range(3)]
    # 0.2 s (1600 samples) after the ringback: the phone's stream is placed at the wall clock
    assert 1400 <= first.pts - ring[-1].pts <= 2400, first.pts
    assert second.pts - first.pts == 160
    assert 160 <= third.pts - second.pts < 400
    track.stop()
    bridge_side.close()
    phone.close()


async def test_phone_to_app_follows_a_source_that_switches_back_and_restarts() -> None:
    """Music on hold: the PBX switches SSRC and back, then restarts its numbering; a straggler of
    the previous source is dropped; everything else is relayed at once."""
    bridge_side = await RtpEndpoint.create(HOST, codec="PCMU")
    phone = raw_socket()
    track = SipToApp(lambda: "PCMU", relay=True)
    track.connect(bridge_side)
    sent = [(0xA, 100 + k, 8000 + 160 * k) for k in range(3)]              # the phone
    sent += [(0xB, 9000 + k, 7_000_000 + 160 * k) for k in range(3)]        # music on hold
    sent += [(0xA, 101, 8160)]                                              # a straggler of A: dropped
    sent += [(0xB, 9003, 7_000_480)]                                        # B goes on in line
    sent += [(0xA, 103 + k, 8480 + 160 * k) for k in range(3)]              # A is back
    sent += [(0xA, 1 + k, 8000 + 160 * k) for k in range(3)]                # A restarts: seq and ts behind
    got: list[av.Packet] = []

    async def app_leg_sender() -> None:
        while True:
            got.append(await track.recv())
    reading = asyncio.ensure_future(app_leg_sender())
    for ssrc, seq, ts in sent:
        phone.sendto(RtpPacket(0, seq, ts, ssrc, b"\xff" * 160).serialize(), bridge_side.local_address)
        await asyncio.sleep(0.005)
    await wait_until(lambda: len(got) + track.stats.late == len(sent))
    reading.cancel()
    assert track.stats.late == 1 and len(got) == len(sent) - 1 and track.stats.overruns == 0
    steps = [b.pts - a.pts for a, b in zip(got, got[1:])]
    assert all(160 <= step < 160 + 400 for step in steps), steps       # each in line or at the wall clock
    track.stop()
    bridge_side.close()
    phone.close()


async def test_app_to_phone_keeps_gaps_and_carries_dtmf_and_hold() -> None:
    bridge_side = await RtpEndpoint.create(HOST, codec="PCMA")
    phone = raw_socket()
    bridge_side.set_remote(phone.getsockname())
    relay = AppToSip().relay_to(bridge_side)

    def app_packet(k: int, ts0: int = 4_294_967_000) -> AiortcPacket:     # wraps past 2**32
        packet = AiortcPacket(payload_type=0, sequence_number=k, timestamp=(ts0 + 160 * k) & 0xFFFFFFFF,
                              ssrc=0x77)
        packet.payload = g711.encode("PCMU", frame(k))
        return packet

    for k in (0, 1, 2, 5, 4, 6):          # 3 and 4 lost on the way; 4 then arrives late
        relay(*fields(app_packet(k)))
    sent = await recv_all(phone)
    assert [p.payload_type for p in sent] == [8] * 5
    steps = [(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(sent, sent[1:])]
    assert steps == [160, 160, 480, 160], steps
    assert [p.marker for p in sent] == [True, False, False, True, False]   # a talkspurt after the gap
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in zip(sent, sent[1:]))
    pcm = np.concatenate([g711.decode("PCMA", p.payload) for p in sent])
    freq, snr = tone_analysis(pcm, 8000)
    assert abs(freq - 700) < 10 and snr > 30, (freq, snr)

    bridge_side.send_dtmf("5", duration_ms=40)   # two packets' worth: the event replaces audio
    for k in range(7, 11):
        relay(*fields(app_packet(k)))
    sent = await recv_all(phone)
    events = [TelephoneEvent.parse(p.payload) for p in sent if p.payload_type == 101]
    assert [e.event for e in events] == [5] * 4 and events[-1].end       # update, end x3
    assert [p.payload_type for p in sent][-2:] == [8, 8]

    bridge_side.set_direction("recvonly")     # the phone put us on hold: nothing is sent
    relay(*fields(app_packet(11)))
    assert await recv_all(phone) == []
    bridge_side.set_direction("sendrecv")
    relay(*fields(app_packet(12)))
    (resumed,) = await recv_all(phone)
    assert resumed.marker
    bridge_side.close()
    phone.close()


async def test_gate_moves_relayed_packets_onto_its_own_timeline() -> None:
    track = SipToApp(lambda: "PCMU", relay=True)
    gate = GatedTrack(track)
    silence = [await gate.recv() for _ in range(5)]          # closed: the gate's own frames
    assert all(isinstance(f, av.AudioFrame) for f in silence)
    last = silence[-1].pts * 8000 // silence[-1].sample_rate
    gate.open = True
    track.play_ringback()
    packets = [await gate.recv() for _ in range(3)]
    assert [p.pts - last for p in packets] == [160, 320, 480]
    gate.stop()


async def test_a_gate_whose_source_fails_keeps_sending_silence_at_the_sources_rate() -> None:
    # the sender's encoder is set up for the first frame's rate: a 48 kHz frame after 8 kHz ones
    # would stop the sender with "Frame does not match AudioResampler setup"
    class Failing(SipToApp):
        async def recv(self):
            raise RuntimeError("gone")
    gate = GatedTrack(Failing(lambda: "PCMU", relay=True))
    before = await gate.recv()
    gate.open = True
    after = [await gate.recv() for _ in range(3)]
    assert gate.source is None
    assert {f.sample_rate for f in [before, *after]} == {8000}
    assert {f.samples for f in after} == {160}
    gate.stop()
