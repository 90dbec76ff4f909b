"""RTP for the SIP leg: packets (RFC 3550), telephone-events (RFC 4733) and a per-call endpoint.

:class:`RtpEndpoint` owns one asyncio datagram socket per call.  Sending is driven by the
caller's 20 ms clock (:meth:`RtpEndpoint.write_frame`), receiving fills a
:class:`~bridge.jitter.JitterBuffer` that the caller drains with
:meth:`RtpEndpoint.read_frame` on the same clock.  No threads, nothing grows without bound.
Codecs (`bridge.codecs`): PCMU and PCMA (8 kHz audio), G.722 (16 kHz audio); all three, and
telephone-events, on an 8000 Hz RTP clock (RFC 3551), so a 20 ms frame is 160 timestamp units.
With SRTP (`set_srtp`, keys from SDES) every packet sent is protected and every packet received
must authenticate before anything else looks at it: one that does not is dropped and counted
(`stats.srtp_failed`), and can neither latch the stream nor reach the jitter buffer or the relay.
IPv4 and IPv6 (`bridge.inet`): an endpoint on `::` takes both, addresses written one way.
"""

from .endpoint import DIRECTIONS, RtpEndpoint
from .events import DEFAULT_DTMF_PT, EVENT_CHARS, TelephoneEvent, event_code
from .packet import (PT_CN, RTP_FIELDS, RTP_HEADER, RTP_VERSION, PacketSink, RtpPacket, RtpParseError,
                     is_rtcp, payload_span)
from .stats import ReceiveCounter, RtpStats

__all__ = ["DEFAULT_DTMF_PT", "DIRECTIONS", "EVENT_CHARS", "PT_CN", "RTP_FIELDS", "RTP_HEADER", "RTP_VERSION",
           "PacketSink", "ReceiveCounter", "RtpEndpoint", "RtpPacket", "RtpParseError", "RtpStats",
           "TelephoneEvent", "event_code", "is_rtcp", "payload_span"]
