"""What the load test reads off an aiortc peer connection: each RTP packet's arrival, and the
inbound statistics. Used alike for the SDK's callers and for Janus's (`bridge/janusgw.py`), so
that both gateways are measured at the same point.
"""

from __future__ import annotations

import contextlib
from typing import Callable

from aiortc import RTCPeerConnection


def stamp_arrivals(pc: RTCPeerConnection, on_packet: Callable) -> bool:
    """Hand each RTP packet to `on_packet` where aiortc's receiver gets it (after SRTP, before
    its jitter buffer). aiortc 1.16 internals: `RTCRtpReceiver._handle_rtp_packet`."""
    receivers = pc.getReceivers()
    for receiver in receivers:
        original = receiver._handle_rtp_packet

        async def handle(packet, arrival_time_ms: int, original=original) -> None:
            on_packet(packet)
            await original(packet, arrival_time_ms)
        receiver._handle_rtp_packet = handle
    return bool(receivers)


async def inbound_stats(pc: RTCPeerConnection, clock_khz: int) -> dict:
    """Packets received and lost, and jitter in ms (aiortc reports it in RTP clock units)."""
    with contextlib.suppress(Exception):
        for s in (await pc.getStats()).values():
            if getattr(s, "type", "") == "inbound-rtp":
                return {"packets_received": s.packetsReceived, "packets_lost": s.packetsLost,
                        "jitter_ms": round(float(s.jitter) / clock_khz, 3) if s.jitter is not None else None}
    return {}
