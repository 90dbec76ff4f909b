"""`Call`: one 1-to-1 audio call, caller or callee, over the platform's signalling."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import ssl as _ssl
from typing import Any, Callable

import aiohttp
from aiortc import RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

from .. import ccparam, protocol, rtcdirect, rtcjitter
from ..relay import clock_rate
from ..audio import GatedTrack, Sink, WavTrack, frame_to_mono
from ..liveness import Liveness
from ..reasons import Disconnected, DisconnectReason, Source, StartFailReason
from .negotiation import ICE_TRANSPORT_POLICIES, _preferences, ice_configuration, negotiated_payload_types
from .params import (AudioSource, AudioStats, CallVerifiedParam, MakeCallParams, StartFailError, VerifyCallParams,
                     _fail, _validate_ids)

log = logging.getLogger("bridge.sdk")

LIVENESS_TIMEOUT = 8.0     # seconds of silence from the peer (media and consent) that end a call
WS_CLOSE_TIMEOUT = 2.0     # seconds to wait for the platform's close frame when a call ends
ICE_SERVERS_TIMEOUT = 10.0  # seconds for the platform to answer a caller's ice_servers
PC_CLOSE_TIMEOUT = 5.0     # seconds for the peer connection to close (aiortc) when a call ends


def _unlink(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Cut the reference cycles aiohttp (3.14) leaves a closed WebSocket in: its connection's
    heartbeat callback (a method of the WebSocket) and the traceback of an error met while
    closing (its frames hold the WebSocket). Left, they wait for a full collection."""
    protocol = getattr(getattr(ws, "_writer", None), "protocol", None)
    if protocol is not None and hasattr(protocol, "_data_received_cb"):
        protocol._data_received_cb = None
    error = ws.exception()
    if error is not None:
        error.__traceback__ = None


def _http_to_ws(url: str) -> str:
    if url.startswith(("ws://", "wss://")):
        return url
    if url.startswith(("http://", "https://")):
        return url.replace("http", "ws", 1).rstrip("/") + "/v1/ws"
    _fail(StartFailReason.INVALID_PARAM, f"platform URL {url!r} must be http(s):// or ws(s)://")
    return ""


class Call:
    """One 1-to-1 audio call, as caller (make_call) or callee (verify_call)."""

    def __init__(self, platform_url: str | None = None,
                 liveness_timeout: float | None = LIVENESS_TIMEOUT, *,
                 ssl: _ssl.SSLContext | None = None, ice_transport_policy: str = "all") -> None:
        if ice_transport_policy not in ICE_TRANSPORT_POLICIES:
            raise ValueError("ice_transport_policy must be 'all' or 'relay'")
        self.platform_url = platform_url
        self.liveness_timeout = liveness_timeout    # None: rely on aioice's consent (~30-45 s)
        self.ssl = ssl                              # None: the system's CAs for wss://
        self.ice_transport_policy = ice_transport_policy
        self.ice_servers: list[dict] = []           # what the platform handed for this call
        self._preferences: list = []
        self._liveness: Liveness | None = None
        self.sid: str | None = None
        self.role: Source | None = None
        self.state = "idle"   # idle, calling, verified, connected, disconnected
        self.was_connected = False
        self.disconnected: Disconnected | None = None
        self.held = False                # this side holds the call (hold())
        self.peer_held = False           # the peer holds it (evt_peer_hold)
        self.stats: AudioStats | None = None   # the last figures, taken as the call ends
        self.peer: CallVerifiedParam | None = None
        self.errors: list[dict] = []
        self._delegate: Any = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pc: RTCPeerConnection | None = None
        self._gate: GatedTrack | None = None
        self._transceiver: RTCRtpTransceiver | None = None
        self._sink: Sink | None = None
        self.codec = ""          # the negotiated audio codec, once known
        self.payload_types: dict[int, str] = {}   # the negotiated audio codecs by payload type
        self._tasks: set[asyncio.Task] = set()
        self._drains: list[asyncio.Task] = []   # readers of the peer's track
        self._first: asyncio.Future | None = None
        self._connected: asyncio.Future | None = None
        self._done = asyncio.Event()
        self._released = asyncio.Event()   # set last: peer connection, socket and session closed

    # --- the seed's API ----------------------------------------------------------------

    async def make_call(self, params: MakeCallParams) -> None:
        """Place a call; returns once the platform took (or refused) it."""
        self._check_idle()
        _validate_ids(params.my_id, params.my_service_id, params.media_type)
        if not isinstance(params.peer_id, str) or not protocol.USER_ID.fullmatch(params.peer_id):
            _fail(StartFailReason.INVALID_USER_ID, f"peer_id {params.peer_id!r} is not a valid user id")
        if not isinstance(params.peer_service_id, str) or not protocol.SERVICE_ID.fullmatch(params.peer_service_id):
            _fail(StartFailReason.INVALID_SERVICE_ID,
                  f"peer_service_id {params.peer_service_id!r} is not a valid service id")
        if (params.my_id, params.my_service_id) == (params.peer_id, params.peer_service_id):
            _fail(StartFailReason.ID_CONFLICT, "a user cannot call itself")
        if not isinstance(params.access_token, str) or not params.access_token:
            _fail(StartFailReason.INVALID_PARAM, "access_token is required")
        data = params.app_server_data
        if data is not None and (not isinstance(data, str)
                                 or len(data.encode()) > protocol.MAX_APP_SERVER_DATA):
            _fail(StartFailReason.TOO_LONG_APP_SERVER_DATA,
                  f"app_server_data must be a string of at most {protocol.MAX_APP_SERVER_DATA} bytes")
        if not self.platform_url:
            _fail(StartFailReason.INVALID_PARAM, "no platform URL")
        url = _http_to_ws(self.platform_url)
        source = self._audio_source(params.audio)
        self.role = Source.CALLER
        self.state = "calling"
        self._delegate, self._sink = params.delegate, params.peer_audio
        preferences = _preferences(params.codecs)
        self._gate = GatedTrack(source)
        if not await self._connect(url):
            return
        servers = await self._ask_ice_servers(params.access_token, params.my_id, params.my_service_id)
        if servers is None:
            return
        pc = self._new_peer_connection(servers)
        transceiver = pc.addTransceiver(self._gate, direction="sendrecv")
        self._send_directly(transceiver.sender)
        if preferences:
            transceiver.setCodecPreferences(preferences)
        await pc.setLocalDescription(await pc.createOffer())
        await self._begin({
            "type": "make_call", "token": params.access_token, "my_id": params.my_id,
            "my_service_id": params.my_service_id, "peer_id": params.peer_id,
            "peer_service_id": params.peer_service_id, "media_type": params.media_type,
            "app_server_data": params.app_server_data, "sdp": pc.localDescription.sdp,
        })

    async def verify_call(self, params: VerifyCallParams) -> None:
        """Answer a push: check `cc_param` with the platform; returns once verified (or refused)."""
        self._check_idle()
        _validate_ids(params.my_id, params.my_service_id, params.media_type)
        try:
            param = ccparam.decode(params.cc_param)
        except ccparam.CcParamError as exc:
            raise StartFailError(StartFailReason.DECODE_CALL_PARAM, str(exc)) from None
        url = _http_to_ws(self.platform_url or param.platform_url)
        source = self._audio_source(params.audio)
        self.role = Source.CALLEE
        self.state = "calling"
        self._delegate, self._sink = params.delegate, params.peer_audio
        self._preferences = _preferences(params.codecs)
        self._gate = GatedTrack(source)
        self._gate.open = params.early_media
        if await self._connect(url):     # the peer connection is made with `verified`'s ICE servers
            await self._begin({"type": "verify_call", "cc_param": params.cc_param, "my_id": params.my_id,
                               "my_service_id": params.my_service_id, "media_type": params.media_type})

    async def accept_call(self, timeout: float = 10.0) -> None:
        """Accept a verified call; returns when it is connected (raises if it ended instead)."""
        if self.role is not Source.CALLEE or self.state != "verified":
            raise RuntimeError(f"accept_call needs a verified incoming call (state: {self.state})")
        self._connected = asyncio.get_running_loop().create_future()
        await self._send({"type": "accept_call"})
        await asyncio.wait([self._connected, asyncio.ensure_future(self._done.wait())],
                           timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not self.was_connected:       # (it may have connected and ended at once: that is fine)
            raise RuntimeError(f"call not connected: {self.disconnected or 'timeout'}")

    async def end_call(self, timeout: float = 3.0, reason: DisconnectReason | None = None) -> Disconnected | None:
        """Hang up (decline before accepting, cancel before an answer); returns how it ended, once
        the call's media and signalling are closed.

        `reason` is bridge's extension: say why (e.g. BUSY), from protocol.END_REASONS.
        """
        if self.state in ("idle", "disconnected"):
            await self._until_released(timeout)
            return self.disconnected
        message: dict = {"type": "end_call"}
        if reason is not None:
            message["reason"] = int(reason)
        await self._send(message)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._done.wait()
        if not self._done.is_set():
            connected = self.state == "connected"
            if reason is None:
                reason = DisconnectReason.NORMAL if connected else (
                    DisconnectReason.CANCEL if self.role is Source.CALLER else DisconnectReason.DECLINE)
            await self._finish(Disconnected(self.role or Source.CALLER, reason))
        await self._until_released(timeout)
        return self.disconnected

    def mute_my_audio(self, muted: bool) -> None:
        """Send silence instead of the source while muted; the peer gets evt_peer_mic_(un)muted."""
        if self._gate is not None:
            self._gate.muted = bool(muted)
        self._spawn(self._send({"type": "mute", "muted": bool(muted)}))

    async def hold(self, *, send_audio: bool = False) -> None:
        """bridge's extension: put the call on hold; the peer gets evt_peer_hold. This side sends
        silence while held, unless `send_audio` (a gateway passing on its far end's music on hold)."""
        await self._hold(True, send_audio)

    async def unhold(self) -> None:
        """bridge's extension: resume a held call; the peer gets evt_peer_unhold."""
        await self._hold(False, False)

    async def _hold(self, held: bool, send_audio: bool) -> None:
        if self.state != "connected":
            raise RuntimeError(f"{'hold' if held else 'unhold'} needs a connected call (state: {self.state})")
        self.held = held
        if self._gate is not None:
            self._gate.held = held and not send_audio
        await self._send({"type": "hold", "held": held})

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

    async def send_dtmf(self, digits: str) -> None:
        """bridge's extension: DTMF digits to the peer, carried in signalling."""
        if not isinstance(digits, str) or not protocol.DTMF_DIGITS.fullmatch(digits):
            raise ValueError("digits must be 1-32 of 0-9 * # A-D")
        if self.state != "connected":
            raise RuntimeError("send_dtmf needs a connected call")
        await self._send({"type": "dtmf", "digits": digits})

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

    async def wait_disconnected(self, timeout: float | None = None) -> Disconnected:
        """How the call ended, once it ended and its media and signalling are closed."""
        async with asyncio.timeout(timeout):
            await self._done.wait()
        await self._until_released(timeout)
        assert self.disconnected is not None
        return self.disconnected

    async def _until_released(self, timeout: float | None) -> None:
        """Let the ending (`_finish`, in whichever task saw it) close what it holds."""
        if self._done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._released.wait()

    # --- internals ---------------------------------------------------------------------

    def _send_directly(self, sender: RTCRtpSender) -> None:
        """The gate's audio to `sender` on rtcdirect's short path, with no retransmission
        history (nobody NACKs audio)."""
        rtcjitter.no_send_history(sender)
        assert self._gate is not None
        self._gate.direct = rtcdirect.DirectSender(sender)

    def _check_idle(self) -> None:
        if self.state != "idle":
            raise RuntimeError("a Call object places or takes one call; create a new Call")

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

    async def _connect(self, url: str) -> bool:
        """Open the signalling socket; False (and the call ended) if the platform is unreachable."""
        self._session = aiohttp.ClientSession()
        self._first = asyncio.get_running_loop().create_future()
        try:
            self._ws = await self._session.ws_connect(url, heartbeat=30.0, max_msg_size=1 << 20,
                                                      ssl=self.ssl if self.ssl is not None else True,
                                                      timeout=aiohttp.ClientWSTimeout(ws_close=WS_CLOSE_TIMEOUT))
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("cannot reach the platform at %s: %s", url, exc)
            await self._finish(Disconnected(Source.CLOUD_SERVER, DisconnectReason.UNAVAILABLE_NETWORK))
            return False
        return True

    async def _ask_ice_servers(self, access_token: str, my_id: str, my_service_id: str) -> list[dict] | None:
        """A caller's first message: its STUN/TURN servers for this call (None: the call ended)."""
        assert self._ws is not None
        await self._send({"type": "ice_servers", "token": access_token, "my_id": my_id,
                          "my_service_id": my_service_id})
        try:
            async with asyncio.timeout(ICE_SERVERS_TIMEOUT):
                while True:
                    raw = await self._ws.receive()
                    if raw.type != aiohttp.WSMsgType.TEXT:
                        break
                    m = json.loads(raw.data)
                    if m.get("type") == "ice_servers":
                        return m.get("ice_servers") if isinstance(m.get("ice_servers"), list) else []
                    if m.get("type") == "disconnected":
                        await self._finish(Disconnected.from_json(m))
                        return None
                    await self._handle(m)
        except (TimeoutError, ValueError, aiohttp.ClientError) as exc:
            log.warning("the platform did not hand ICE servers: %s", exc or type(exc).__name__)
        await self._finish(Disconnected(Source.CLOUD_SERVER, DisconnectReason.WEB_SIGNALING_UNEXPECTED_DISCONNECTED))
        return None

    async def _begin(self, opening: dict) -> None:
        """Send the socket's opening message, read the platform's answers, wait for the first."""
        assert self._first is not None
        await self._send(opening)
        self._spawn(self._read())
        await asyncio.wait([self._first, asyncio.ensure_future(self._done.wait())],
                           return_when=asyncio.FIRST_COMPLETED)

    async def _send(self, message: dict) -> None:
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._ws.send_str(json.dumps(message))

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                if raw.type != aiohttp.WSMsgType.TEXT:
                    break
                try:
                    await self._handle(json.loads(raw.data))
                except Exception:
                    log.exception("call %s: cannot handle %s", self.sid, raw.data[:200])
        finally:
            if not self._done.is_set():
                await self._finish(Disconnected(
                    Source.CLOUD_SERVER, DisconnectReason.WEB_SIGNALING_UNEXPECTED_DISCONNECTED))

    async def _handle(self, m: dict) -> None:
        kind = m.get("type")
        pc = self._pc
        if kind == "call_made":
            self.sid = m["sid"]
            self._resolve(self._first)
        elif kind == "verified" and pc is None:
            self.sid = m["sid"]
            self.peer = CallVerifiedParam(m["sid"], m["peer_id"], m["peer_service_id"], m.get("app_server_data"))
            pc = self._new_peer_connection(m.get("ice_servers") or [])
            assert self._gate is not None
            if self._preferences:   # a transceiver made before the offer arrives carries the preferences
                self._transceiver = pc.addTransceiver(self._gate, direction="sendrecv")
                self._send_directly(self._transceiver.sender)
                self._transceiver.setCodecPreferences(self._preferences)
            try:
                await self._answer(pc, m["sdp"])
            except Exception as exc:      # not an audio offer, no codec in common with our preferences...
                log.warning("call %s: cannot use the caller's offer: %s", self.sid, exc)
                await self._send({"type": "end_call", "reason": int(DisconnectReason.INTERNAL_ERROR)})
                return
            self.state = "verified"
            self._emit("evt_verified", self.peer)
            self._resolve(self._first)
        elif kind == "sdp" and pc is not None:
            self.payload_types = negotiated_payload_types(m["sdp"])
            self.codec = next(iter(self.payload_types.values()), "")   # before media starts (inside the next line)
            try:
                if not self.codec:
                    raise ValueError("no audio stream with a codec in the answer")
                await pc.setRemoteDescription(RTCSessionDescription(m["sdp"], "answer"))
            except Exception as exc:
                log.warning("call %s: cannot use the callee's answer: %s", self.sid, exc)
                await self._send({"type": "end_call", "reason": int(DisconnectReason.INTERNAL_ERROR)})
        elif kind == "wait_connected":
            self._emit("evt_wait_connected")
        elif kind == "connected":
            self.state = "connected"
            self.was_connected = True
            if self._gate is not None:
                self._gate.open = True
            self._emit("evt_connected")
            self._resolve(self._connected)
        elif kind == "disconnected":
            await self._finish(Disconnected.from_json(m))
        elif kind == "peer_mute":
            self._emit("evt_peer_mic_muted" if m.get("muted") else "evt_peer_mic_unmuted")
        elif kind == "dtmf":
            self._emit("evt_dtmf", m.get("digits", ""))
        elif kind == "peer_hold" and isinstance(m.get("held"), bool):
            self.peer_held = m["held"]
            self._emit("evt_peer_hold" if self.peer_held else "evt_peer_unhold")
        elif kind == "error":
            log.warning("call %s: platform says %s: %s", self.sid, m.get("code"), m.get("message"))
            self.errors.append(m)

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

    @staticmethod
    def _resolve(future: asyncio.Future | None) -> None:
        if future is not None and not future.done():
            future.set_result(None)

    async def _finish(self, param: Disconnected) -> None:
        if self._done.is_set() or self.disconnected is not None:
            return
        self.state = "disconnected"
        self.disconnected = param
        if self._pc is not None:              # the last figures, before anyone hears it ended
            self.stats = await self.get_stats()
        self._done.set()
        self._resolve(self._first)
        self._resolve(self._connected)
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
        # told before the signalling socket closes: an unreachable platform must not delay it
        self._emit("evt_disconnected", param)
        try:
            if self._ws is not None:
                await self._ws.close()
        finally:
            if self._session is not None:
                await self._session.close()
            if self._ws is not None:
                _unlink(self._ws)
            self._released.set()

    def _emit(self, name: str, *args: Any) -> None:
        handler: Callable | None = getattr(self._delegate, name, None)
        if handler is None:
            return
        try:
            result = handler(*args)
        except Exception:
            log.exception("delegate %s failed", name)
            return
        if inspect.isawaitable(result):
            self._spawn(result)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
