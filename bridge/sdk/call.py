"""`Call`: one 1-to-1 audio call, caller or callee, over the platform's signalling.

Its WebSocket to the platform is in `signalling` (`CallSignalling`), its peer connection and
audio in `media` (`CallMedia`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl as _ssl
from typing import Any, Callable

import aiohttp
from aiortc import RTCPeerConnection, RTCRtpTransceiver

from .. import ccparam, protocol
from ..audio import GatedTrack, Sink
from ..liveness import Liveness
from ..reasons import Disconnected, DisconnectReason, Source, StartFailReason
from .media import CallMedia
from .negotiation import ICE_TRANSPORT_POLICIES, _preferences
from .params import (AudioStats, CallVerifiedParam, MakeCallParams, StartFailError, VerifyCallParams, _fail,
                     _validate_ids)
from .signalling import CallSignalling, _http_to_ws

log = logging.getLogger("bridge.sdk")

LIVENESS_TIMEOUT = 8.0     # seconds of silence from the peer (media and consent) that end a call


class Call(CallSignalling, CallMedia):
    """One 1-to-1 audio call, as caller (make_call) or callee (verify_call); its signalling
    (`CallSignalling`) and its media (`CallMedia`) are in their own modules."""

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

    async def send_dtmf(self, digits: str) -> None:
        """bridge's extension: DTMF digits to the peer, carried in signalling."""
        if not isinstance(digits, str) or not protocol.DTMF_DIGITS.fullmatch(digits):
            raise ValueError("digits must be 1-32 of 0-9 * # A-D")
        if self.state != "connected":
            raise RuntimeError("send_dtmf needs a connected call")
        await self._send({"type": "dtmf", "digits": digits})

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

    def _check_idle(self) -> None:
        if self.state != "idle":
            raise RuntimeError("a Call object places or takes one call; create a new Call")

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
        await self._close_media()
        # told before the signalling socket closes: an unreachable platform must not delay it
        self._emit("evt_disconnected", param)
        await self._close_signalling()

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
