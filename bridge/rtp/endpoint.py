"""One call's RTP endpoint on the SIP leg (see the package's docstring)."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Callable

import numpy as np

from .. import codecs, g711, inet
from ..jitter import JitterBuffer
from ..ports import PortPool
from ..srtp import Srtp, SrtpKey

from .dtmf import Dtmf
from .events import DEFAULT_DTMF_PT
from .packet import PT_CN, RTP_FIELDS, RTP_HEADER, RTP_VERSION, PacketSink, RtpPacket, is_rtcp, payload_span
from .stats import ReceiveCounter, RtpStats

logger = logging.getLogger(__name__)
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: RtpEndpoint) -> None:
        self.endpoint = endpoint
        self.datagram_received = endpoint._datagram_received   # type: ignore[method-assign]  # one call less a packet

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable etc.
        logger.debug("RTP socket error: %s", exc)


class RtpEndpoint(Dtmf):
    """One call's RTP media: G.711 or G.722 audio + RFC 4733 events over one UDP socket.

    Create with ``await RtpEndpoint.create(...)``.  ``remote`` is the address from the
    remote SDP. With ``symmetric`` (default) the endpoint latches once, to the source of the
    first valid packet that ``source_allowed`` accepts (or that comes from the SDP address),
    and then sends there (NAT). Packets from any other source are dropped and counted in
    ``stats.foreign``: a third party cannot take the stream over mid-call. Only signalling
    moves it: :meth:`set_remote` with a new address (a re-INVITE) latches anew, and packets
    from the SDP address itself are always taken. Telephone-events (DTMF) are in `Dtmf`.
    """

    def __init__(
        self,
        *,
        codec: str = g711.PCMU,
        payload_type: int | None = None,
        dtmf_payload_type: int | None = DEFAULT_DTMF_PT,
        remote: tuple[str, int] | None = None,
        symmetric: bool = True,
        source_allowed: Callable[[str], bool] | None = None,
        jitter: JitterBuffer | None = None,
        on_dtmf: Callable[[str], None] | None = None,
        dtmf_gap_frames: int = 2,
    ) -> None:
        self.symmetric = symmetric
        self.source_allowed = source_allowed
        self.jitter = jitter or JitterBuffer()
        super().__init__(on_dtmf, dtmf_gap_frames)
        # Relay: audio packets go here as they arrive instead of into the jitter buffer.
        self.on_audio: PacketSink | None = None
        self.stats = RtpStats()
        self.direction = "sendrecv"
        self.codec = ""
        self.set_codec(codec, payload_type, dtmf_payload_type)
        self._sdp_remote = remote
        self._latched: tuple[str, int] | None = None
        self._source: tuple | None = None       # the latched source as the socket gives it
        self._destination: tuple = (None, None)  # (address, as the socket takes it)
        self._extra_dtmf_pt: int | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._family = 0
        self.srtp: Srtp | None = None
        self._pool: PortPool | None = None
        self._port = 0
        self._local: tuple[str, int] | None = None
        self._recv = ReceiveCounter(8000, self.stats)
        self._loop: asyncio.AbstractEventLoop | None = None
        # sender state (RFC 3550: random initial values)
        self.ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._marker = True

    @classmethod
    async def create(
        cls,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        port_pool: PortPool | None = None,
        **kwargs,
    ) -> RtpEndpoint:
        """Bind the socket (from ``port_pool`` if given, else ``host:port``) and start."""
        self = cls(**kwargs)
        loop = asyncio.get_running_loop()
        self._loop = loop
        if port_pool is not None:
            port, sock = port_pool.bind(host)
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Protocol(self), sock=sock
                )
            except BaseException:
                sock.close()
                port_pool.release(port)
                raise
            self._pool, self._port = port_pool, port
        else:
            sock = inet.udp_socket(host, port)
            try:
                transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
            except BaseException:
                sock.close()
                raise
        self._transport = transport
        self._family = transport.get_extra_info("socket").family
        self._local = inet.peer(transport.get_extra_info("sockname"))
        return self

    # -- configuration (SDP offer/answer, re-INVITE) --------------------------------------------

    @property
    def local_address(self) -> tuple[str, int]:
        assert self._local is not None, "endpoint not started"
        return self._local

    @property
    def remote_address(self) -> tuple[str, int] | None:
        """Where audio is sent: the latched source, else the SDP address."""
        return self._latched or self._sdp_remote

    def set_remote(self, remote: tuple[str, int] | None) -> None:
        """Remote address from (re-)negotiated SDP; a changed address is learnt anew."""
        if remote != self._sdp_remote:
            self._sdp_remote = remote
            self._latched = self._source = None

    def set_codec(
        self,
        codec: str,
        payload_type: int | None = None,
        dtmf_payload_type: int | None = DEFAULT_DTMF_PT,
    ) -> None:
        """Negotiated audio codec (PCMU, PCMA, G722), its payload type and the telephone-event PT.
        The same codec again (a 200 after early media) keeps the coding state of the stream."""
        spec = codecs.get(codec)
        self.payload_type = spec.payload_type if payload_type is None else payload_type
        self.dtmf_payload_type = dtmf_payload_type
        if codec == self.codec:
            return
        self.codec = codec
        self.sample_rate = spec.sample_rate
        self._encode = spec.encoder()
        self.jitter.set_format(spec.decoder(), spec.sample_rate)

    def set_srtp(self, local: SrtpKey | None, remote: SrtpKey | None) -> None:
        """SRTP with these keys (ours protects what we send, the peer's checks what it sends), or
        plain RTP when either is None. Keys that did not change keep their stream's state."""
        if local is None or remote is None:
            self.srtp = None
        elif self.srtp is None:
            self.srtp = Srtp(local, remote)
        else:
            self.srtp.update(local, remote)

    def accept_dtmf_payload_type(self, pt: int) -> None:
        """Also take telephone-events on `pt` (the one we offered, when the answer named another)."""
        self._extra_dtmf_pt = pt if pt != self.dtmf_payload_type else None

    def set_direction(self, direction: str) -> None:
        """SDP direction (hold/resume) on the same socket and the same RTP stream."""
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}")
        self.direction = direction  # write_frame marks the first packet after a pause

    @property
    def sending(self) -> bool:
        return self.direction in ("sendrecv", "sendonly")

    @property
    def receiving(self) -> bool:
        return self.direction in ("sendrecv", "recvonly")

    # -- sending --------------------------------------------------------------------------------

    def write_frame(self, pcm: np.ndarray, skipped: int = 0) -> None:
        """Send one 20 ms frame at `sample_rate` (or a pending telephone-event packet in its place);
        `skipped` as for `write_payload`."""
        self._skip(skipped)
        ts = self._next_ts(len(pcm) * codecs.CLOCK_RATE // self.sample_rate)
        if ts is None:
            return
        self._send(self.payload_type, ts, self._encode(pcm), self._marker)
        self._marker = False

    def write_payload(self, payload: bytes, skipped: int = 0) -> None:
        """Relay one frame already in the negotiated codec (one byte per timestamp unit).

        `skipped`: timestamp units the source did not send before this frame (its loss or a
        pause); the RTP clock jumps over them, so the receiver sees the gap where it was.
        """
        if skipped:
            self._skip(skipped)
        ts = self._next_ts(len(payload))
        if ts is None:
            return
        self._send(self.payload_type, ts, payload, self._marker)
        self._marker = False

    def _skip(self, units: int) -> None:
        """The RTP clock jumps over `units` the source did not send: a new talkspurt."""
        if units:
            self._ts = (self._ts + units) & 0xFFFFFFFF
            self._marker = True

    def _next_ts(self, units: int) -> int | None:
        """Advance the RTP clock by one frame; its timestamp, or None if this frame is not sent
        (sending is paused, or a pending telephone-event packet goes in its place)."""
        ts = self._ts
        self._ts = (ts + units) & 0xFFFFFFFF
        if not self.sending or self._transport is None:
            self._marker = True  # new talkspurt when sending resumes
            return None
        if self._event is not None or (self._dtmf_out and self._gap == 0):
            self._send_event_tick(ts, units)
            return None
        if self._gap:
            self._gap -= 1
        return ts

    def _send(self, pt: int, ts: int, payload: bytes, marker: bool) -> None:
        addr = self._latched or self._sdp_remote
        if addr is None or self._transport is None:
            return
        known, destination = self._destination
        if addr is not known:
            destination = inet.sockaddr(addr, self._family)
            self._destination = (addr, destination)
        header = RTP_HEADER.pack(0x80, (0x80 if marker else 0) | pt, self._seq, ts, self.ssrc)
        self._seq = (self._seq + 1) & 0xFFFF
        packet = header + payload
        if self.srtp is not None:
            packet = self.srtp.protect(packet)
            if packet is None:
                return
        self._transport.sendto(packet, destination)
        self.stats.packets_sent += 1
        self.stats.bytes_sent += len(payload)

    # -- receiving ------------------------------------------------------------------------------

    def read_frame(self) -> np.ndarray:
        """One 20 ms frame of int16 samples at `sample_rate` from the jitter buffer (160 for
        G.711, 320 for G.722; concealment when missing)."""
        frame = self.jitter.get()
        js = self.jitter.stats
        st = self.stats
        st.late, st.duplicates, st.concealed = js.late, js.duplicates, js.concealed
        st.dropped, st.inserted = js.dropped, js.inserted
        return frame

    def _datagram_received(self, data: bytes, addr) -> None:
        st = self.stats
        if len(data) < RTP_HEADER.size or data[0] >> 6 != RTP_VERSION:
            if is_rtcp(data):
                st.ignored += 1
            else:
                st.malformed += 1
            return
        if 191 < data[1] < 224:          # RTCP (RFC 5761)
            st.ignored += 1
            return
        if self.srtp is not None:
            clear = self.srtp.unprotect(data)
            if clear is None:
                st.srtp_failed += 1
                return
            data = clear
        if data[0] == 0x80:              # no CSRC, extension or padding: the usual packet
            start, end = 12, len(data)
        else:
            span = payload_span(data)
            if span is None:
                st.malformed += 1
                return
            start, end = span
        if addr != self._source and not self._accept_source(addr):
            return
        second, seq, timestamp, ssrc = RTP_FIELDS.unpack_from(data, 1)
        # every packet of the stream counts for sequence/loss/jitter (RFC 3550 A.3), even one
        # whose payload type we then ignore: its sequence number is no loss
        self._recv.update(seq, timestamp, ssrc, (self._loop or asyncio.get_running_loop()).time())
        pt = second & 0x7F
        if pt == self._extra_dtmf_pt:
            pt = self.dtmf_payload_type
        if pt != self.payload_type and pt != self.dtmf_payload_type and pt != PT_CN:
            st.ignored += 1
            return
        st.packets_received += 1
        st.bytes_received += end - start
        if not self.receiving:
            return
        if pt == self.payload_type:
            if self.on_audio is not None:
                self.on_audio(pt, seq, timestamp, ssrc, data[start:end])
            else:
                self.jitter.put(RtpPacket(pt, seq, timestamp, ssrc, data[start:end], bool(second & 0x80)))
        elif pt == self.dtmf_payload_type:
            self._event_received(ssrc, timestamp, data[start:end])

    def _accept_source(self, addr: tuple[str, int]) -> bool:
        """Symmetric RTP, latched once to an allowed source (see the class docstring). `addr`
        is the socket's; once taken it is `_source`, which later packets compare with."""
        raw, addr = addr, inet.peer(addr)
        if not self.symmetric or addr == self._latched:
            self._source = raw
            return True
        if addr == self._sdp_remote or (self._latched is None and (
                self.source_allowed is None or self.source_allowed(addr[0]))):
            if self._latched is not None:
                logger.info("RTP source moved %s -> %s (the signalled address)", self._latched, addr)
            self._latched = addr
            self._source = raw
            return True
        self.stats.foreign += 1
        return False

    # -- lifetime -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._transport is None

    def close(self) -> None:
        """Close the socket and give the port back to its pool; idempotent. The callbacks go
        too (they hold whoever listened, often in a reference cycle through this endpoint)."""
        self.on_audio = self.on_dtmf = None
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.release(self._port)
