"""A short path for a WebRTC leg's audio RTP, around aiortc's per-packet machinery.

aiortc (1.16) carries every audio packet through several tasks and objects: on receipt, aioice's
queue, the DTLS transport's task, `RtpPacket.parse`, the RTP router and the receiver (statistics,
a timestamp of the arrival as a datetime, depayloading, the jitter buffer); on sending, the
sender's task awaiting its track, a new `RtpPacket` with its header extensions, an NTP timestamp
made from a datetime, `serialize`, and four nested coroutines down to the socket. Profiled at
40-75 relayed calls that was ~70 % of the bridge's busy time (docs/performance.md).

Here aiortc keeps ICE, DTLS, the SRTP keys, RTCP and the negotiation; only the audio packets
take the short way:

- `DirectSender` stands in for an audio `RTCRtpSender`'s RTP task. It still reads the sender's
  track: frames are encoded by aiortc's encoder (here on the event loop, where aiortc hands each
  frame to a thread pool and back), packets pass as they are. `send` builds the header with one
  `struct.pack` (the negotiated header extensions precomputed: the MID is fixed), protects it
  with the DTLS transport's SRTP session and hands it to the nominated ICE pair's datagram
  transport (a TURN relay's included). It keeps the sender's counters, so aiortc's RTCP sender
  reports tell the truth, and the DTLS transport's statistics. Others (the bridge's relay) may
  call `send` at any time: sequence numbers and timestamps are one stream whoever sends.
- `receive` hands the leg's RTP (the bridge relays or recodes it) to a sink straight
  from the ICE connection: SRTP unprotect, a header read, the receiver's RTCP statistics and the
  transport's packet counts kept (receiver reports stay right; `liveness` reads the counts), and
  the sink gets (payload type, sequence, timestamp, SSRC, payload). RTCP, DTLS and STUN go the
  usual way.
- `release` undoes both once the peer connection is closed, and breaks the reference cycles
  aiortc and aioice leave in a closed connection, so that a call's objects are freed as it ends
  and not by the next full collection, which stalls every call up (docs/performance.md, "Churn").

These use aiortc's and aioice's private attributes (as `rtcjitter` does) and fail loudly when
they are missing, so a new aiortc that moves them breaks tests, not calls.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import traceback
from typing import Callable

import av
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.codecs import get_encoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import State
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtpPacket

from . import rtcreports
from .rtp import RTP_FIELDS, RTP_HEADER, PacketSink, payload_span
from .srtp import Transform, protector, unprotector

log = logging.getLogger(__name__)

NTP_OFFSET = 2208988800            # seconds from 1900 (NTP) to 1970 (Unix)
CONNECTED = State.CONNECTED


def _private(obj: object, name: str) -> object:
    if not hasattr(obj, name):
        raise RuntimeError(f"this aiortc has no {type(obj).__name__}.{name}")
    return getattr(obj, name)


class DirectSender:
    """Sends one `RTCRtpSender`'s audio packets itself (install before the call connects)."""

    def __init__(self, sender: RTCRtpSender) -> None:
        self._sender = sender
        self._original = sender._run_rtp
        self._dtls = sender.transport
        _private(self._dtls, "_RTCDtlsTransport__tx_packets")
        for name in ("_RTCRtpSender__rtp_started", "_RTCRtpSender__rtp_exited", "_RTCRtpSender__mid",
                     "_RTCRtpSender__packet_count"):
            _private(sender, name)
        self.running = False          # the short path carries this sender's RTP now
        self._seq = random.getrandbits(16)
        self._origin = random.getrandbits(32)
        self._first = 0x80
        self._pt = 0
        self.clock_rate = 8000        # the codec's RTP clock (48 kHz for Opus)
        self._extensions = b""
        self._sent_octets = 0
        self._sent_packets = 0
        self._pair: object = None      # the nominated ICE pair `_sendto` and `_address` are of
        self._sendto: Callable[[bytes, tuple], None] | None = None
        self._address: tuple | None = None
        self._session: object = None   # the DTLS transport's SRTP session `_protect` is of
        self._protect: Transform | None = None
        sender._run_rtp = self._run   # type: ignore[method-assign]

    async def _run(self, codec: RTCRtpCodecParameters) -> None:
        if not codec.mimeType.lower().startswith("audio/"):
            return await self._original(codec)
        sender = self._sender
        self._pt = codec.payloadType
        self.clock_rate = codec.clockRate
        template = RtpPacket(payload_type=self._pt)
        template.extensions.mid = sender._RTCRtpSender__mid       # type: ignore[attr-defined]
        header = template.serialize(self._dtls._rtp_header_extensions_map)
        self._first, self._extensions = header[0], header[12:]
        encoder = get_encoder(codec)
        sender._RTCRtpSender__rtp_started.set()                   # type: ignore[attr-defined]
        self.running = True
        try:
            while True:
                track = sender.track
                if track is None:
                    await asyncio.sleep(0.02)
                    continue
                data = await track.recv()
                if not sender._enabled:
                    continue
                if isinstance(data, av.Packet):
                    payloads, timestamp = encoder.pack(data)
                else:
                    payloads, timestamp = encoder.encode(data)
                for payload in payloads:
                    self.send(payload, timestamp)
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            log.warning("direct RTP sender failed:\n%s", traceback.format_exc())
        finally:
            self.running = False
            self._pair = self._sendto = self._address = self._session = self._protect = None
            track = sender.track
            if track is not None:
                track.stop()
            sender._RTCRtpSender__track = None                    # type: ignore[attr-defined]
            sender._RTCRtpSender__rtp_exited.set()                # type: ignore[attr-defined]

    def send(self, payload: bytes, timestamp: int, marker: bool = False) -> bool:
        """One packet of `payload` at `timestamp` (the codec's clock, from the stream's start);
        False when the leg cannot carry it (not connected, or no longer)."""
        dtls = self._dtls
        pair = dtls.transport._connection._nominated.get(1)
        if pair is not self._pair or dtls._tx_srtp is not self._session:
            if not self._route(pair):
                return False
        if not self.running or dtls._state is not CONNECTED:
            return False
        timestamp = (self._origin + timestamp) & 0xFFFFFFFF
        seq = self._seq
        rtp = self._protect(RTP_HEADER.pack(self._first, self._pt | (0x80 if marker else 0), seq, timestamp,
                                            self._sender._ssrc) + self._extensions + payload)
        if rtp is None:
            return False
        try:
            self._sendto(rtp, self._address)   # a socket's, or aioice's TURN relay
        except (OSError, RuntimeError):
            return False
        dtls._RTCDtlsTransport__tx_packets += 1
        dtls._RTCDtlsTransport__tx_bytes += len(rtp)
        self._seq = (seq + 1) & 0xFFFF
        self._sent_packets += 1
        self._sent_octets += len(payload)
        sender = self._sender
        sender._RTCRtpSender__ntp_timestamp = int((time.time() + NTP_OFFSET) * 4294967296)  # type: ignore[attr-defined]
        sender._RTCRtpSender__rtp_timestamp = timestamp             # type: ignore[attr-defined]
        sender._RTCRtpSender__packet_count = self._sent_packets     # type: ignore[attr-defined]
        sender._RTCRtpSender__octet_count = self._sent_octets       # type: ignore[attr-defined]
        return True

    def _route(self, pair) -> bool:
        """Take the nominated pair's socket (or TURN relay) and address, and the DTLS
        transport's SRTP session, when either is new; False while there is none."""
        session = self._dtls._tx_srtp
        if pair is None or session is None:
            return False
        self._pair, self._sendto, self._address = pair, pair.protocol.transport.sendto, pair.remote_addr
        self._session, self._protect = session, protector(session)
        return True


class _Statistics(StreamStatistics):
    """aiortc's per-source receive statistics (for its receiver reports), fed from raw fields."""

    def note(self, seq: int, timestamp: int) -> None:
        self.packets_received += 1
        if self.base_seq is None:
            self.base_seq = seq
        max_seq = self.max_seq
        if max_seq is None or 0 < ((seq - max_seq) & 0xFFFF) < 0x8000:
            arrival = int(time.time() * self._clockrate)
            if max_seq is not None and seq < max_seq:
                self.cycles += 1 << 16
            self.max_seq = seq
            last = self._last_timestamp
            if timestamp != last and self.packets_received > 1:
                assert self._last_arrival is not None and last is not None
                diff = abs((arrival - self._last_arrival) - (timestamp - last))
                self._jitter_q4 += diff - ((self._jitter_q4 + 8) >> 4)
            self._last_arrival = arrival
            self._last_timestamp = timestamp


def receive(receiver: RTCRtpReceiver, sink: PacketSink, clock_rate: int = 8000) -> None:
    """From now on hand `receiver`'s RTP packets to `sink` as they arrive, before aiortc's
    receiver (its decoder thread and its track end: nothing is left to decode); RTCP statistics
    are kept for its reports."""
    dtls = receiver.transport
    connection = dtls.transport._connection
    _private(dtls, "_RTCDtlsTransport__rx_packets")
    streams: dict[int, StreamStatistics] = _private(receiver, "_RTCRtpReceiver__remote_streams")  # type: ignore[assignment]
    again = hasattr(connection, "_rtcdirect_usual")      # a new sink in place of the old
    usual = connection._rtcdirect_usual if again else connection.data_received
    connection._rtcdirect_usual = usual

    decoding = True                      # the receiver's decoder thread may (yet) run
    session: object = None               # the DTLS transport's SRTP session `unprotect` is of
    unprotect: Transform | None = None

    def data_received(data: bytes, component: int) -> None:
        nonlocal decoding, session, unprotect
        if len(data) < 12 or not 127 < data[0] < 192 or 191 < data[1] < 224 or dtls._rx_srtp is None:
            return usual(data, component)        # DTLS, STUN, RTCP (and RTP before the keys)
        if dtls._rx_srtp is not session:
            session = dtls._rx_srtp
            unprotect = unprotector(session)
        clear = unprotect(data)                  # type: ignore[misc]
        if clear is None:
            return                               # not the peer's, or a replay
        if decoding:
            decoding = not _stop_decoder(receiver)
        dtls._RTCDtlsTransport__rx_packets += 1  # the transport's statistics (liveness reads them)
        dtls._RTCDtlsTransport__rx_bytes += len(data)
        span = payload_span(clear)
        if span is None:
            return
        second, seq, timestamp, ssrc = RTP_FIELDS.unpack_from(clear, 1)
        stream = streams.get(ssrc)
        if stream is None:
            stream = streams[ssrc] = _Statistics(clock_rate)
        if isinstance(stream, _Statistics):
            stream.note(seq, timestamp)
        sink(second & 0x7F, seq, timestamp, ssrc, clear[span[0]:span[1]])

    connection.data_received = data_received
    if again:
        return
    for protocol in _private(connection, "_protocols"):        # type: ignore[attr-defined]
        _skip_stun_parse(protocol, component=protocol.local_candidate.component)


def _stop_decoder(receiver: RTCRtpReceiver) -> bool:
    """End the receiver's decoder thread, idle now (one a call), and its track; False if the
    receiver has not started it yet (it does once DTLS is up)."""
    if not _private(receiver, "_RTCRtpReceiver__started"):
        return False
    receiver._RTCRtpReceiver__stop_decoder()                   # type: ignore[attr-defined]
    return True


def _skip_stun_parse(protocol, component: int) -> None:
    """aioice tries to parse every datagram as STUN first (an exception per RTP packet)."""
    usual = protocol.datagram_received

    def datagram_received(data: bytes, addr: tuple) -> None:
        if data and 127 < data[0] < 192:
            protocol.receiver.data_received(data, component)
        else:
            usual(data, addr)

    protocol.datagram_received = datagram_received


def release(pc: RTCPeerConnection) -> None:
    """After `pc.close()`: undo `DirectSender` and `receive`, and cut what keeps a closed
    connection in reference cycles: the event listeners of the connection and its transports
    (bound methods of the connection, and the caller's closures), the ICE check list (its pairs'
    protocols point back at the ICE connection). Left: pyOpenSSL's certificate check, a callback
    in a cycle with itself (6 small objects), which OpenSSL may call as long as the context lives."""
    transports: set = set()
    for transceiver in pc.getTransceivers():
        vars(transceiver.sender).pop("_run_rtp", None)          # the class's own again
        rtcreports.release(transceiver.sender, transceiver.receiver)
        transports.update(t for t in (transceiver.sender.transport, transceiver.receiver.transport) if t)
    for dtls in transports:
        ice = dtls.transport
        connection = ice._connection
        for pair in getattr(connection, "_check_list", ()):
            vars(pair.protocol).pop("datagram_received", None)
        if isinstance(getattr(connection, "_check_list", None), list):
            connection._check_list.clear()
        for name in ("data_received", "_rtcdirect_usual"):
            vars(connection).pop(name, None)
        for emitter in (dtls, ice, ice.iceGatherer):
            emitter.remove_all_listeners()
    pc.remove_all_listeners()

