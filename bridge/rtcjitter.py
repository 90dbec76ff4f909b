"""A lower-latency, loss-tolerant audio jitter buffer for aiortc's RTP receiver.

aiortc 1.16 holds every audio frame until 4 later packets have arrived (80 ms), and a lost packet
stalls its buffer until 16 newer ones are queued; since each arriving packet releases at most one
frame, the stream then stays 280 ms late for the rest of the call (tests/test_rtcjitter.py). This buffer releases a frame
as soon as `prefetch` later packets exist (1 by default: 20 ms) and skips a hole once
`prefetch + 1` newer packets have arrived (a packet that late is lost to real-time audio anyway).
Concealment of the hole is left to the decoder (Opus PLC) or, on the SIP side, to bridge's own
jitter buffer further on.

`use()` installs it for the audio receivers of this process (video keeps aiortc's). `tap()` takes
one receiver's packets as they arrive, before any buffer or decoder: the bridge relays G.711 that way.
`no_send_history()` stops an audio sender from keeping its last 128 packets for retransmission
(nobody NACKs audio: aiortc's own receivers only do for video, and the SDP offers no nack for audio);
those 256 objects per call were live for the garbage collector to walk in every full collection.
"""

from __future__ import annotations

from typing import Callable, Optional

import aiortc.rtcrtpreceiver
from aiortc.rtp import RtpPacket
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

_original = aiortc.rtcrtpreceiver.JitterBuffer


class AudioJitterBuffer(JitterBuffer):
    """One packet per frame (audio): release early, never stall on a hole."""

    def __init__(self, capacity: int = 16, prefetch: int = 1) -> None:
        super().__init__(capacity=capacity, prefetch=prefetch)
        self.skipped = 0      # holes given up on (packets lost or too late)

    def _remove_frame(self, sequence_number: int) -> Optional[JitterFrame]:
        if self._origin is None:
            return None
        if self._packets[self._origin % self._capacity] is None:
            newer = sum(p is not None for p in self._packets)
            if newer <= self._prefetch:
                return None
            while self._packets[self._origin % self._capacity] is None:   # skip the hole
                self.remove(1)
                self.skipped += 1
        packet = self._packets[self._origin % self._capacity]
        assert packet is not None
        later = sum(p is not None for p in self._packets) - 1
        if later < self._prefetch:
            return None
        self.remove(1)
        return JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]


def _factory(capacity: int, prefetch: int = 0, is_video: bool = False) -> JitterBuffer:
    if is_video:
        return _original(capacity=capacity, prefetch=prefetch, is_video=True)
    return AudioJitterBuffer(capacity=capacity, prefetch=_prefetch)


_prefetch = 1


def use(prefetch: int | None = 1) -> None:
    """Audio receivers created from now on use AudioJitterBuffer (None: aiortc's own again)."""
    global _prefetch
    if prefetch is None:
        aiortc.rtcrtpreceiver.JitterBuffer = _original
        return
    if not 0 <= prefetch < 8:
        raise ValueError("prefetch must be 0..7 packets")
    _prefetch = prefetch
    aiortc.rtcrtpreceiver.JitterBuffer = _factory


class _Tap:
    """Stands in for a receiver's jitter buffer: every packet goes to `sink`, nothing is decoded."""

    def __init__(self, sink: Callable[[RtpPacket], None]) -> None:
        self.sink = sink

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        self.sink(packet)
        return False, None


def tap(receiver: aiortc.RTCRtpReceiver, sink: Callable[[RtpPacket], None]) -> None:
    """From now on hand `receiver`'s RTP packets (payload type, sequence, timestamp, payload) to
    `sink` as they arrive, after SRTP and RTCP statistics; its track gets no more frames.

    aiortc has no public hook between its receiver and its jitter buffer; this replaces the
    receiver's (private) buffer, and fails loudly if a new aiortc renames it.
    """
    name = "_RTCRtpReceiver__jitter_buffer"
    if not hasattr(receiver, name):
        raise RuntimeError("this aiortc has no RTCRtpReceiver jitter buffer to tap")
    setattr(receiver, name, _Tap(sink))


class _NoHistory(dict):
    """A retransmission history that keeps nothing."""

    def __setitem__(self, key, value) -> None:
        pass


def no_send_history(sender: aiortc.RTCRtpSender) -> None:
    """Keep no retransmission history in this (audio) sender."""
    name = "_RTCRtpSender__rtp_history"
    if not hasattr(sender, name):
        raise RuntimeError("this aiortc has no RTCRtpSender history to turn off")
    setattr(sender, name, _NoHistory())
