"""The short RTP path of a G.711 WebRTC leg (bridge/rtcdirect.py), between two real aiortc peer
connections on loopback: audio checked by its tone, the stream's numbering across the ways a
packet is sent, and the RTCP reports aiortc still makes from the short path's counters."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from fractions import Fraction

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RtcpPacket, RtcpSrPacket

from bridge import g711, rtcdirect, rtcprobe, rtcreports
from bridge.audio import GatedTrack, ToneTrack, frame_to_mono, tone, tone_analysis
from bridge.clock import FrameClock
from bridge.sdk import negotiated_codec

PCMU = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/PCMU"]


class PacketTone(MediaStreamTrack):
    """Encoded PCMU packets of a tone on a 20 ms clock, as the bridge's relay gives them; `push`
    is set by the gate that reads it (the relay hands packets over that way as they arrive)."""

    kind = "audio"
    rate = 8000                           # the gate's silence before it opens is at this rate

    def __init__(self, freq: float) -> None:
        super().__init__()
        self.samples = tone(freq, 1.0, rate=8000)
        self.pts = 0
        self.paused = asyncio.Event()     # set: recv() gives nothing (the pushes take over)
        self.push = None
        self._clock = FrameClock(0.02)

    def next_payload(self) -> tuple[bytes, int]:
        start = self.pts % 8000
        payload = g711.encode("PCMU", self.samples[start:start + 160])
        pts, self.pts = self.pts, self.pts + 160
        return payload, pts

    async def recv(self) -> av.Packet:
        await anext(self._clock)
        while self.paused.is_set():
            await asyncio.sleep(3600)
        payload, pts = self.next_payload()
        packet = av.Packet(payload)
        packet.pts, packet.time_base = pts, Fraction(1, 8000)
        return packet


async def connect(a: RTCPeerConnection, b: RTCPeerConnection) -> None:
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)


async def stats_of(pc: RTCPeerConnection, kind: str):
    for _ in range(60):
        found = [s for s in (await pc.getStats()).values() if s.type == kind]
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {kind} statistics within 6 s")


async def receiving_a_tone(reports_every: float | None = None):
    """a receives only (PCMU, its RTCP by `rtcreports` every `reports_every` s if given), b sends
    a 1 kHz tone the usual aiortc way; both connected. (a, b, a's transceiver)"""
    a, b = RTCPeerConnection(), RTCPeerConnection()
    transceiver = a.addTransceiver("audio", direction="recvonly")
    transceiver.setCodecPreferences(PCMU)
    if reports_every is not None:
        rtcreports.take_over(transceiver.sender, transceiver.receiver, interval=reports_every)
    b.on("track", lambda track: None)
    a.on("track", lambda track: None)
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    b.addTrack(ToneTrack(1000))
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    return a, b, transceiver


def tap_rtcp(dtls) -> list[tuple[float, list]]:
    """Each RTCP datagram `dtls` hands on from now: (when, its packets)."""
    arrived: list[tuple[float, list]] = []
    usual = dtls._handle_rtcp_data

    async def handle(data: bytes) -> None:
        arrived.append((time.monotonic(), RtcpPacket.parse(data)))
        await usual(data)
    dtls._handle_rtcp_data = handle
    return arrived


def steps(values: list[int], modulo: int) -> set[int]:
    return {(b - a) % modulo for a, b in zip(values, values[1:])}


async def test_a_direct_sender_keeps_one_stream_through_frames_packets_and_pushes() -> None:
    """Silence frames (gate shut: aiortc's encoder), then the source's packets (read by the
    sender's task), then packets pushed as they arrive (the relay's way): the far end gets one
    stream, numbered without a hole, each part's tone intact, and sender reports that count it."""
    a, b = RTCPeerConnection(), RTCPeerConnection()
    source = PacketTone(1000)
    gate = GatedTrack(source)
    assert source.push == gate.push
    transceiver = a.addTransceiver(gate, direction="sendonly")
    transceiver.setCodecPreferences(PCMU)
    gate.direct = direct = rtcdirect.DirectSender(transceiver.sender)
    got: list[tuple[int, int, bytes]] = []
    b.on("track", lambda track: None)
    await connect(a, b)
    assert rtcprobe.stamp_arrivals(b, lambda p: got.append((p.sequence_number, p.timestamp, p.payload)))
    assert not gate.push(b"\xff" * 160, 0)            # the gate is shut: the source keeps it
    await asyncio.sleep(1.0)
    assert direct.running
    silence = len(got)
    gate.open = True
    await asyncio.sleep(1.0)
    read = len(got)
    source.paused.set()
    pushed = PacketTone(700)
    pushed.pts = source.pts
    for _ in range(50):
        await asyncio.sleep(0.02)
        assert source.push(*pushed.next_payload())
    await asyncio.sleep(1.5)                           # a sender report after the pushes
    report = await stats_of(b, "remote-outbound-rtp")
    sent_stats = await stats_of(a, "transport")
    await a.close()
    await b.close()

    assert silence >= 40 and read - silence >= 40 and len(got) - read == 50, (silence, read, len(got))
    assert steps([s for s, _, _ in got], 1 << 16) == {1}           # one stream, no hole, no repeat
    assert steps([t for _, t, _ in got], 1 << 32) == {160}
    for part, freq in ((got[silence + 5:read], 1000), (got[read:], 700)):
        pcm = np.concatenate([g711.decode("PCMU", p) for _, _, p in part])
        found, snr = tone_analysis(pcm, 8000)
        assert abs(found - freq) < 10 and snr > 30, (freq, found, snr)
    assert max(abs(int(x)) for x in g711.decode("PCMU", got[silence - 1][2])) < 64    # silence
    assert direct._sent_packets == len(got) <= sent_stats.packetsSent
    assert len(got) - 75 <= report.packetsSent <= len(got), (report.packetsSent, len(got))
    assert report.bytesSent == 160 * report.packetsSent


async def test_direct_receive_hands_each_packet_over_and_keeps_receiver_reports() -> None:
    """The far end sends a 1 kHz tone the usual aiortc way; the short path takes every packet
    (decoded here: the tone), drops a forged one quietly, and aiortc's receiver reports to the
    sender as before."""
    a, b, transceiver = await receiving_a_tone()
    got: list[tuple[int, int, int, int, bytes]] = []
    rtcdirect.receive(transceiver.receiver, lambda *fields: got.append(fields))
    await asyncio.sleep(1.0)
    pair = transceiver.receiver.transport.transport._connection._nominated[1]
    forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    before = len(got)
    for _ in range(20):                               # RTP-looking, not the peer's SRTP
        forger.sendto(b"\x80\x00" + os.urandom(170), pair.protocol.transport.get_extra_info("sockname"))
    forger.close()
    await asyncio.sleep(1.5)
    report = await stats_of(b, "remote-inbound-rtp")
    transport = await stats_of(a, "transport")       # what `liveness` reads as signs of life
    decoder = transceiver.receiver._RTCRtpReceiver__decoder_thread   # started after receive()
    await a.close()
    await b.close()

    assert transport.packetsReceived >= len(got) and transport.bytesReceived >= 180 * len(got)
    assert len(got) >= 100 and len(got) - before >= 60, (before, len(got))
    assert {pt for pt, *_ in got} == {0} and len({ssrc for *_, ssrc, _ in got}) == 1
    assert steps([seq for _, seq, *_ in got], 1 << 16) == {1}
    pcm = np.concatenate([g711.decode("PCMU", payload) for *_, payload in got[10:]])
    freq, snr = tone_analysis(pcm, 8000)
    assert abs(freq - 1000) < 10 and snr > 30, (freq, snr)
    assert report.packetsLost == 0 and report.fractionLost == 0
    assert decoder is None                        # ended by the short path: nothing left to decode


async def test_an_opus_leg_is_encoded_by_aiortc_and_sent_on_the_short_path() -> None:
    """Frames of an Opus leg (the bridge's transcode path) go through aiortc's Opus encoder, on
    the event loop, and out the short way: the far end decodes the tone."""
    a, b = RTCPeerConnection(), RTCPeerConnection()
    transceiver = a.addTransceiver(ToneTrack(1000), direction="sendonly")
    direct = rtcdirect.DirectSender(transceiver.sender)
    received = asyncio.get_running_loop().create_future()
    b.on("track", lambda track: received.set_result(track))
    await connect(a, b)
    track = await asyncio.wait_for(received, 5)
    frames = [await asyncio.wait_for(track.recv(), 5) for _ in range(75)]
    codec = negotiated_codec(b.localDescription.sdp)
    await a.close()
    await b.close()

    assert codec == "opus"
    assert direct._sent_packets >= 75
    pcm = np.concatenate([frame_to_mono(f) for f in frames[25:]])
    freq, snr = tone_analysis(pcm, frames[-1].sample_rate)
    assert abs(freq - 1000) < 10 and snr > 20, (freq, snr)


async def test_one_compound_report_carries_the_sender_and_receiver_reports(monkeypatch) -> None:
    """`rtcreports.take_over`: a's transceiver sends one compound RTCP packet per interval (SR
    with a report block on what it receives, then SDES), no RR of its own, and a BYE as it stops.
    The far end (plain aiortc) reads from it what it read from aiortc's two reports: a's sent
    packets, and its own stream's loss and round-trip time."""
    a, b = RTCPeerConnection(), RTCPeerConnection()
    gate = GatedTrack(ToneTrack(1000))
    transceiver = a.addTransceiver(gate, direction="sendrecv")
    transceiver.setCodecPreferences(PCMU)
    gate.direct = rtcdirect.DirectSender(transceiver.sender)
    rtcreports.take_over(transceiver.sender, transceiver.receiver, interval=1.0)
    reads = []                   # the loss fraction counts from the last read: read once a report
    reception = rtcreports._reception
    monkeypatch.setattr(rtcreports, "_reception", lambda receiver: reads.append(1) or reception(receiver))
    gate.open = True
    a.on("track", lambda track: None)
    b.on("track", lambda track: None)
    b.addTrack(ToneTrack(700))
    await connect(a, b)
    arrived = tap_rtcp(b.getTransceivers()[0].receiver.transport)
    start = time.monotonic()
    await asyncio.sleep(5.2)
    outbound = await stats_of(b, "remote-outbound-rtp")        # from a's SR
    inbound = await stats_of(b, "remote-inbound-rtp")          # from the report block in it
    sent = transceiver.sender._RTCRtpSender__packet_count
    await a.close()
    await asyncio.sleep(0.3)
    await b.close()

    kinds = [[type(p).__name__ for p in packets] for _, packets in arrived]
    assert kinds[-1] == ["RtcpByePacket"], kinds
    reports = [(t, packets) for t, packets in arrived[:-1]]
    assert all(k == ["RtcpSrPacket", "RtcpSdesPacket"] for k in kinds[:-1]), kinds
    assert 3 <= len(reports) <= 9, kinds                      # every 0.5-1.5 s, the first sooner
    assert reports[0][0] - start < 0.8
    assert len(reads) == len(reports), (len(reads), len(reports))
    blocks = [p.reports for _, packets in reports[1:] for p in packets if isinstance(p, RtcpSrPacket)]
    assert all(len(r) == 1 and r[0].ssrc == b.getTransceivers()[0].sender._ssrc for r in blocks), blocks
    assert blocks[-1][0].packets_lost == 0 and blocks[-1][0].highest_sequence > 0
    assert sent - 100 <= outbound.packetsSent <= sent and outbound.packetsSent > 150, (outbound, sent)
    assert inbound.packetsLost == 0 and inbound.roundTripTime is not None and 0 <= inbound.roundTripTime < 0.2


async def test_a_transceiver_that_only_receives_sends_its_receiver_reports_alone() -> None:
    """With `rtcreports.take_over` and no sending (recvonly), the receiver's report blocks go out
    as an RR every interval, and the far end's sender reads its loss from them."""
    a, b, _ = await receiving_a_tone(reports_every=1.0)
    arrived = tap_rtcp(b.getTransceivers()[0].sender.transport)
    await asyncio.sleep(3.6)
    inbound = await stats_of(b, "remote-inbound-rtp")
    await a.close()
    await b.close()

    kinds = [[type(p).__name__ for p in packets] for _, packets in arrived]
    assert 2 <= len(kinds) <= 8 and all(k == ["RtcpRrPacket"] for k in kinds), kinds
    assert inbound.packetsLost == 0
