"""`CallMedia`: a call's aiortc peer connection, the audio each way, and its figures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Callable

from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

from .. import rtcdirect, rtcjitter, rtcreports
from ..relay import clock_rate
from ..audio import WavTrack, frame_to_mono
from ..liveness import Liveness
from ..reasons import DisconnectReason, StartFailReason
from .negotiation import ice_configuration, negotiated_payload_types
from .params import AudioSource, AudioStats, _fail

log = logging.getLogger("bridge.sdk")

PC_CLOSE_TIMEOUT = 5.0     # seconds for the peer connection to close (aiortc) when a call ends


class CallMedia:
    """The peer connection, the local audio and the peer's (a part of `Call`)."""

    async def get_stats(self) -> AudioStats | None:
        """bridge's extension: the audio figures now (None before media was negotiated)."""
        if self._pc is None or not self.codec:
            return self.stats
        try:
            report = await self._pc.getStats()
        except Exception as exc:           # an aiortc whose objects changed: no figures, no crash
            log.warning("call %s: no statistics: %s", self.sid, exc)
            return self.stats
        return AudioStats.of(report, clock_rate(self.codec.lower()))

    def tap_peer_packets(self, sink: Callable[[RtpPacket], None]) -> None:
        """bridge's extension: hand the peer's audio RTP packets to `sink` as they arrive, not
        decoded (`peer_audio` gets no more frames). Needs the negotiated call (`codec` set)."""
        receivers = [r for r in self._pc.getReceivers() if r.track.kind == "audio"] if self._pc else []
        if not receivers or not self.codec:
            raise RuntimeError("no negotiated audio to tap yet")
        rtcjitter.tap(receivers[0], sink)

    def relay_peer_packets(self, sink: rtcdirect.PacketSink) -> None:
        """bridge's extension: hand the peer's audio RTP to `sink(payload type, sequence, timestamp,
        ssrc, payload)` straight from SRTP, past aiortc's receiver (`peer_audio` gets no more
        frames; RTCP reports stay right; `payload_types` names the codecs). Needs the negotiated
        call (`codec` set); called again, the new sink takes the place of the old."""
        receivers = [r for r in self._pc.getReceivers() if r.track.kind == "audio"] if self._pc else []
        if not receivers or not self.codec:
            raise RuntimeError("no negotiated audio to relay yet")
        rtcdirect.receive(receivers[0], sink, clock_rate=clock_rate(self.codec.lower()))

    def _send_directly(self, sender: RTCRtpSender) -> None:
        """The gate's audio to `sender` on rtcdirect's short path, with no retransmission
        history (nobody NACKs audio), and its transceiver's RTCP as one report every ~5 s
        (`rtcreports`)."""
        rtcjitter.no_send_history(sender)
        assert self._gate is not None and self._pc is not None
        self._gate.direct = rtcdirect.DirectSender(sender)
        receiver = next(t.receiver for t in self._pc.getTransceivers() if t.sender is sender)
        rtcreports.take_over(sender, receiver)

    @staticmethod
    def _audio_source(audio: AudioSource) -> MediaStreamTrack | None:
        if audio is None or isinstance(audio, MediaStreamTrack):
            return audio
        if isinstance(audio, str):
            try:
                return WavTrack(audio)
            except (OSError, ValueError, EOFError) as exc:
                _fail(StartFailReason.INVALID_PARAM, f"audio file {audio!r}: {exc}")
        _fail(StartFailReason.INVALID_PARAM, "audio must be an aiortc audio track or a WAV file path")
        return None

    def _new_peer_connection(self, ice_servers: list[dict]) -> RTCPeerConnection:
        self.ice_servers = ice_servers
        pc = RTCPeerConnection(ice_configuration(ice_servers, self.ice_transport_policy))
        self._pc = pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self._drains.append(asyncio.ensure_future(self._drain(track)))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected" and self.liveness_timeout and self._liveness is None:
                self._liveness = Liveness(pc, self.liveness_timeout, self._peer_lost)
                try:
                    self._liveness.start()
                except RuntimeError as exc:       # an aiortc this module does not know
                    log.error("call %s: no liveness watch, a dead peer is noticed late: %s", self.sid, exc)
            elif pc.connectionState == "failed" and self.state != "disconnected":
                log.warning("call %s: media connection failed", self.sid)
                await self._end_unstable()
        return pc

    def _peer_lost(self, silent: float) -> None:
        if self.state != "disconnected":
            log.warning("call %s: nothing from the peer for %.1f s: ending the call", self.sid, silent)
            self._spawn(self._end_unstable())

    async def _end_unstable(self) -> None:
        """The media path to the peer is gone: end with NETWORK_UNSTABLE, the platform willing or not."""
        await self.end_call(timeout=1.0, reason=DisconnectReason.NETWORK_UNSTABLE)

    async def _drain(self, track: MediaStreamTrack) -> None:
        """Always read the remote track: aiortc queues decoded frames without bound."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self._peer_frame(frame)

    def _peer_frame(self, frame) -> None:
        """Hand one decoded frame of the peer to the `peer_audio` sink."""
        if self._sink is not None:
            try:
                self._sink(frame_to_mono(frame), frame.sample_rate)
            except Exception:
                log.exception("peer_audio sink failed; dropping it")
                self._sink = None

    async def _answer(self, pc: RTCPeerConnection, offer: str) -> None:
        """Take the caller's offer and send our answer; raises if it holds no usable audio."""
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        if not any(t.kind == "audio" for t in pc.getTransceivers()):
            raise ValueError("the offer has no audio stream")
        assert self._gate is not None
        if self._transceiver is None:
            self._send_directly(pc.addTrack(self._gate))
        answer = await pc.createAnswer()
        self.payload_types = negotiated_payload_types(answer.sdp)
        self.codec = next(iter(self.payload_types.values()), "")   # before media starts: tracks pick their rate by it
        if not self.codec:
            raise ValueError("no codec in common with the offer")
        try:
            await pc.setLocalDescription(answer)    # gathers the ICE candidates
        except OSError as exc:                      # e.g. no interface list: a sandbox without AF_NETLINK
            raise OSError(f"cannot gather ICE candidates: {exc}") from None
        await self._send({"type": "answer", "sdp": pc.localDescription.sdp})

    async def _close_media(self) -> None:
        """Stop the local audio, the liveness watch, the peer connection and the peer's readers."""
        if self._gate is not None:
            self._gate.stop()
        if self._liveness is not None:
            await self._liveness.stop()
            self._liveness = None
        if self._pc is not None:       # bounded: aiortc's own close (ICE failed), once cancelled, never ends
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._pc.close(), PC_CLOSE_TIMEOUT)
            rtcdirect.release(self._pc)
        for task in self._drains:     # a receiver that never started never ends its track
            task.cancel()
