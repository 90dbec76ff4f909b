"""RTCP for a WebRTC audio leg: one compound report every ~5 s, in place of aiortc's two tasks.

aiortc (1.16) runs two RTCP tasks for each audio transceiver: the sender's (an SR and the CNAME)
and the receiver's (an RR), each every 0.5-1.5 s. RFC 3550 (6.2) sets 5 s as the least interval
for a session this small, randomised over [0.5, 1.5] of it, the first one at half of it, and
libwebrtc reports audio every 5 s. With many calls those tasks and their packets were ~3 % of the
bridge's CPU (docs/performance.md). `take_over` makes one transceiver's RTCP one report: it is
one compound packet, the SR with the receiver's reception report blocks in it (RFC 3550 6.4.1:
a sender reports what it receives in its SR), then SDES with the CNAME; a BYE when the sender
stops. A transceiver whose sender does not send (it only receives) sends its RR alone, as often.
It reads and writes the fields aiortc's own tasks do (the sender's last packet's NTP and RTP
timestamps and counts, the receiver's per-source statistics and last SR times, the sender's
last SR for round-trip times), so aiortc's statistics and getStats stay as they were.

These are aiortc's private attributes (as `rtcdirect`'s): `take_over` fails loudly when they are
missing, so a new aiortc that moves them breaks tests, not calls.
"""

from __future__ import annotations

import asyncio
import random
import time

from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtp import (
    AnyRtcpPacket,
    RtcpByePacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
)

INTERVAL = 5.0            # seconds between reports, on average (RFC 3550 6.2's least)
SDES_CNAME = 1

_SENDER = ("rtcp_started", "rtcp_exited", "ntp_timestamp", "rtp_timestamp", "packet_count", "octet_count",
           "cname", "lsr", "lsr_time")
_RECEIVER = ("rtcp_started", "rtcp_exited", "remote_streams", "lsr", "lsr_time", "rtcp_ssrc")


def take_over(sender: RTCRtpSender, receiver: RTCRtpReceiver, interval: float = INTERVAL) -> None:
    """Replace the RTCP tasks of `sender` and `receiver` (one transceiver's) with one that
    reports both every `interval` s on average. Install before the call connects."""
    for obj, prefix, names in ((sender, "_RTCRtpSender__", _SENDER), (receiver, "_RTCRtpReceiver__", _RECEIVER)):
        for name in names:
            if not hasattr(obj, prefix + name):
                raise RuntimeError(f"this aiortc has no {type(obj).__name__}.{prefix}{name}")
    sender._run_rtcp = lambda: _report(sender, receiver, interval)   # type: ignore[method-assign]
    receiver._run_rtcp = lambda: _receiver_reports(sender, receiver, interval)   # type: ignore[method-assign]


def release(sender: RTCRtpSender, receiver: RTCRtpReceiver) -> None:
    """Undo `take_over` (the closures refer to both: a reference cycle once the call is over)."""
    vars(sender).pop("_run_rtcp", None)
    vars(receiver).pop("_run_rtcp", None)


async def _receiver_reports(sender: RTCRtpSender, receiver: RTCRtpReceiver, interval: float) -> None:
    """The receiver's RTCP task: its report blocks go in the sender's SRs; only while the sender
    sends none (a transceiver that only receives) does it send them itself, as an RR."""
    receiver._RTCRtpReceiver__rtcp_started.set()                      # type: ignore[attr-defined]
    try:
        while True:
            await asyncio.sleep(interval * (0.5 + random.random()))
            ssrc = receiver._RTCRtpReceiver__rtcp_ssrc                # type: ignore[attr-defined]
            if sender._RTCRtpSender__rtcp_started.is_set() or ssrc is None:   # type: ignore[attr-defined]
                continue               # (the loss fraction is since the last report: not read here)
            reports = _reception(receiver)
            if reports:
                await receiver._send_rtcp(RtcpRrPacket(ssrc=ssrc, reports=reports))
    except asyncio.CancelledError:
        pass
    finally:
        receiver._RTCRtpReceiver__rtcp_exited.set()                   # type: ignore[attr-defined]


async def _report(sender: RTCRtpSender, receiver: RTCRtpReceiver, interval: float) -> None:
    sender._RTCRtpSender__rtcp_started.set()                          # type: ignore[attr-defined]
    wait = interval / 2                               # the first report comes sooner (RFC 3550 6.2)
    try:
        try:
            while True:
                await asyncio.sleep(wait * (0.5 + random.random()))
                wait = interval
                await _send(sender, _compound(sender, receiver))
        except asyncio.CancelledError:
            pass
        await _send(sender, [RtcpByePacket(sources=[sender._ssrc])])
    finally:
        sender._RTCRtpSender__rtcp_exited.set()                       # type: ignore[attr-defined]


async def _send(sender: RTCRtpSender, packets: list[AnyRtcpPacket]) -> None:
    """As aiortc's sender sends its RTCP; the DTLS transport may be gone (the call is over)."""
    try:
        await sender._send_rtcp(packets)
    except (ConnectionError, AttributeError):
        pass


def _compound(sender: RTCRtpSender, receiver: RTCRtpReceiver) -> list[AnyRtcpPacket]:
    """SR (the sender's last packet's timestamps and its counts, and the receiver's report
    blocks), then SDES CNAME."""
    ntp = sender._RTCRtpSender__ntp_timestamp                         # type: ignore[attr-defined]
    packets: list[AnyRtcpPacket] = [RtcpSrPacket(
        ssrc=sender._ssrc,
        sender_info=RtcpSenderInfo(
            ntp_timestamp=ntp,
            rtp_timestamp=sender._RTCRtpSender__rtp_timestamp,       # type: ignore[attr-defined]
            packet_count=sender._RTCRtpSender__packet_count & 0xFFFFFFFF,   # type: ignore[attr-defined]
            octet_count=sender._RTCRtpSender__octet_count & 0xFFFFFFFF),    # type: ignore[attr-defined]
        reports=_reception(receiver))]
    sender._RTCRtpSender__lsr = (ntp >> 16) & 0xFFFFFFFF             # type: ignore[attr-defined]
    sender._RTCRtpSender__lsr_time = time.time()                      # type: ignore[attr-defined]
    cname = sender._RTCRtpSender__cname                               # type: ignore[attr-defined]
    if cname is not None:
        packets.append(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=sender._ssrc, items=[(SDES_CNAME, cname.encode())])]))
    return packets


def _reception(receiver: RTCRtpReceiver) -> list[RtcpReceiverInfo]:
    """A report block for each source the receiver heard (RFC 3550 6.4.1), as aiortc's RR has."""
    last_sr = receiver._RTCRtpReceiver__lsr                           # type: ignore[attr-defined]
    last_sr_time = receiver._RTCRtpReceiver__lsr_time                 # type: ignore[attr-defined]
    reports = []
    for ssrc, stream in receiver._RTCRtpReceiver__remote_streams.items():   # type: ignore[attr-defined]
        if stream.max_seq is None:
            continue
        delay = time.time() - last_sr_time[ssrc] if ssrc in last_sr else 0
        reports.append(RtcpReceiverInfo(
            ssrc=ssrc, fraction_lost=stream.fraction_lost, packets_lost=stream.packets_lost,
            highest_sequence=(stream.cycles + stream.max_seq) & 0xFFFFFFFF, jitter=stream.jitter,
            lsr=last_sr.get(ssrc, 0), dlsr=int(delay * 65536) if 0 < delay < 65536 else 0))
    return reports
