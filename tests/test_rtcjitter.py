"""The app leg's receive jitter buffer: 20 ms instead of aiortc's 80 ms, and no stall on loss; and
audio senders that keep no retransmission history."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from bridge.audio import ToneTrack
from bridge.rtcjitter import AudioJitterBuffer, no_send_history


def packet(seq: int) -> RtpPacket:
    p = RtpPacket(payload_type=0, sequence_number=seq % 65536, timestamp=(seq * 160) % 2**32)
    p._data = bytes([seq % 256]) * 4        # what aiortc's receiver sets (the depayloaded frame)
    return p


def feed(buffer, seqs) -> list[tuple[int, int | None]]:
    """(arriving seq, seq of the frame released by that arrival or None)."""
    out = []
    for s in seqs:
        _, frame = buffer.add(packet(s))
        out.append((s, None if frame is None else frame.timestamp // 160))
    return out


def test_in_order_audio_is_released_one_packet_later():
    released = feed(AudioJitterBuffer(), range(10))
    assert released[0] == (0, None)
    assert all(frame == s - 1 for s, frame in released[1:])          # 20 ms, not 80 ms
    aiortc = feed(JitterBuffer(capacity=16, prefetch=4), range(10))
    assert all(frame in (None, s - 4) for s, frame in aiortc) and aiortc[4] == (4, 0)


def test_a_lost_packet_costs_one_frame_not_the_rest_of_the_call():
    seqs = [s for s in range(60) if s != 20]
    ours = feed(AudioJitterBuffer(), seqs)
    late = [s - frame for s, frame in ours[25:] if frame is not None]
    assert late and max(late) == 1                                    # back to 20 ms at once
    assert sum(frame is None for _, frame in ours[19:23]) <= 1
    theirs = feed(JitterBuffer(capacity=16, prefetch=4), seqs)
    their_late = [s - frame for s, frame in theirs[40:] if frame is not None]
    assert min(their_late) >= 14                                      # aiortc: 280 ms from then on


def test_sequence_wrap_and_reordering():
    seqs = list(range(65530, 65536)) + [65537, 65536] + list(range(65538, 65545))
    released = [frame for _, frame in feed(AudioJitterBuffer(), seqs) if frame is not None]
    assert released == sorted(released) and len(released) == len(set(released))
    assert 65536 in released and 65537 in released                    # the swapped pair kept


async def test_an_audio_sender_without_retransmission_history_still_sends():
    a, b = RTCPeerConnection(), RTCPeerConnection()
    sender = a.addTrack(ToneTrack(1000))
    no_send_history(sender)
    received = asyncio.get_running_loop().create_future()
    b.on("track", lambda track: received.set_result(track))
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    track = await asyncio.wait_for(received, 5)
    frames = [await asyncio.wait_for(track.recv(), 5) for _ in range(10)]
    assert len(frames) == 10
    assert len(sender._RTCRtpSender__rtp_history) == 0                # nothing kept per packet
    await sender._retransmit(1234)                                    # a NACK finds nothing, quietly
    await a.close()
    await b.close()
