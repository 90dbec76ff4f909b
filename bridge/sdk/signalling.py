"""`CallSignalling`: a call's WebSocket to the platform, and what the platform's messages do."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import aiohttp
from aiortc import RTCSessionDescription

from ..reasons import Disconnected, DisconnectReason, Source, StartFailReason
from .negotiation import negotiated_payload_types
from .params import CallVerifiedParam, _fail

log = logging.getLogger("bridge.sdk")

WS_CLOSE_TIMEOUT = 2.0     # seconds to wait for the platform's close frame when a call ends
ICE_SERVERS_TIMEOUT = 10.0  # seconds for the platform to answer a caller's ice_servers


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


class CallSignalling:
    """The socket to the platform and the messages each way (a part of `Call`)."""

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

    async def _close_signalling(self) -> None:
        """The ending's last step: close the socket, then its session; `_released` set last."""
        try:
            if self._ws is not None:
                await self._ws.close()
        finally:
            if self._session is not None:
                await self._session.close()
            if self._ws is not None:
                _unlink(self._ws)
            self._released.set()
