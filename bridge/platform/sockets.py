"""A leg's WebSocket: its opening (the first message, its token, its ICE servers, a callee
relayed to its call's home node) and the messages it carries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, AsyncIterator

import aiohttp
from aiohttp import web

from .. import ccparam, iceservers, protocol, token
from ..logsafe import failure, safe
from ..protocol import ProtocolError
from ..reasons import Disconnected, DisconnectReason as R, Source

from .model import User, json_error

if TYPE_CHECKING:
    from ..cluster.signalling import LinkedSocket

log = logging.getLogger("bridge.platform")

FIRST_MESSAGE_TIMEOUT = 10.0


class Sockets:
    """How a leg's WebSocket opens and what it carries (a part of `Platform`)."""

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=self.cfg.max_message_bytes, heartbeat=30.0)
        if not ws.can_prepare(request).ok:
            raise json_error(web.HTTPBadRequest, "websocket_required",
                              "GET /v1/ws takes a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket, "
                              "Sec-WebSocket-Version: 13, a valid Sec-WebSocket-Key)")
        await ws.prepare(request)
        messages = self._messages(ws)
        first = await self._next_within(ws, messages, "no opening message within 10 s")
        if first is None:
            return ws
        if first["type"] == "ice_servers":
            first = await self._ice_servers(ws, first, messages)
            if first is None:
                return ws
        if first["type"] not in protocol.OPENING_MESSAGES:
            await self._reject(ws, ProtocolError(
                "unexpected", "the first message must be make_call, verify_call, listen or ice_servers"))
            return ws
        if not self.accepting:
            await self._disconnect(ws, Disconnected(Source.CLOUD_SERVER, R.SERVICE_MAINTENANCE))
            return ws
        if first["type"] == "verify_call" and self.cluster is not None and await self._elsewhere(ws, first, messages):
            return ws
        handler = {"make_call": self._make_call, "verify_call": self._verify_call,
                   "listen": self._listen}[first["type"]]
        try:
            await handler(ws, first, messages)
        except Exception as exc:
            log.error("signalling handler %s failed: %s", first["type"], failure(exc))
            if not ws.closed:
                await ws.close(code=aiohttp.WSCloseCode.INTERNAL_ERROR, message=b"internal error")
        return ws

    async def _elsewhere(self, ws: web.WebSocketResponse, first: dict, messages) -> bool:
        """A callee whose call lives on another platform node: carry its leg there (True)."""
        assert self.cluster is not None
        from ..cluster.store import RedisDown
        try:
            sid = ccparam.verify(first["cc_param"], self.cfg.cc_param_secret).sid
        except ccparam.CcParamError:
            return False                          # refused here, as ever
        if sid in self.calls:
            return False
        try:
            home = await self.cluster.home_of(sid)
        except RedisDown as exc:
            log.warning("verifyCall for call %s: %s", sid, exc)
            await self._disconnect(ws, Disconnected(Source.CLOUD_SERVER, R.SERVICE_INTERNAL_ERROR))
            return True
        if home is None or home == self.cluster.id:
            return False
        log.info("call %s: its callee reached this node; relaying the leg to %s", sid, home)
        await self.cluster.relay(ws, first, messages, home)
        return True

    async def _attached(self, sock: "LinkedSocket", msg: dict) -> None:
        """The home node's side of a relayed callee: the leg runs as if its socket were here."""
        try:
            await self._verify_call(sock, msg, sock.messages())  # type: ignore[arg-type]
        except Exception as exc:
            log.error("relayed verify_call failed: %s", failure(exc))
        finally:
            await sock.close()

    async def _ice_servers(self, ws: web.WebSocketResponse, msg: dict, messages) -> dict | None:
        """A caller's first step: the servers for its call, then its make_call. A bad token gets
        no servers (no TURN credentials); make_call then refuses the call as it always does (its
        sid, evtDisconnected, the Call Event)."""
        me = User(msg["my_service_id"], msg["my_id"])
        refusal = self._token_refusal(msg["token"], me, "ice_servers")
        servers = self._servers_for(me) if refusal is None else []
        await self._send(ws, {"type": "ice_servers", "ice_servers": servers})
        nxt = await self._next_within(ws, messages, "no make_call within 10 s of ice_servers")
        if nxt is None:
            return None
        if nxt["type"] != "make_call" or (nxt["my_service_id"], nxt["my_id"]) != (me.service, me.user):
            await self._reject(ws, ProtocolError("unexpected", "ice_servers must be followed by the same "
                                                 "user's make_call"))
            return None
        return nxt

    async def _next_within(self, ws: web.WebSocketResponse, messages, late: str) -> dict | None:
        """The socket's next valid message within FIRST_MESSAGE_TIMEOUT (None: closed, or too late)."""
        try:
            async with asyncio.timeout(FIRST_MESSAGE_TIMEOUT):
                return await anext(messages, None)
        except TimeoutError:
            await self._reject(ws, ProtocolError("timeout", late))
            return None

    def _servers_for(self, user: "User") -> list[dict]:
        return iceservers.for_user(self.ice_servers, str(user))

    def _token_refusal(self, raw: str, me: "User", what: str) -> R | None:
        try:
            who = token.verify(raw, self.keys, max_age=self.cfg.token_max_age)
        except token.TokenError as exc:
            log.info("%s by %s refused: %s", what, me, safe(exc))
            return R.SERVICE_ACCESS_TOKEN_ERROR
        if (who.service_id, who.user_id) != (me.service, me.user):
            log.info("%s by %s refused: token is for %s@%s", what, me, who.user_id, who.service_id)
            return R.AUTH_ERROR
        return None

    async def _messages(self, ws: web.WebSocketResponse) -> AsyncIterator[dict]:
        """Valid client messages; invalid ones are answered with an error and skipped."""
        async for raw in ws:
            if raw.type == aiohttp.WSMsgType.TEXT:
                try:
                    yield protocol.parse(raw.data)
                except ProtocolError as exc:
                    log.info("bad signalling message: %s", safe(exc.message))
                    await self._send(ws, exc.to_json())
            elif raw.type == aiohttp.WSMsgType.BINARY:
                await self._send(ws, ProtocolError("binary", "binary frames are not accepted; "
                                                   "send JSON text").to_json())
            elif raw.type == aiohttp.WSMsgType.ERROR:
                log.info("signalling socket error: %s", safe(raw.data))
                return

    async def _send(self, ws: web.WebSocketResponse | None, message: dict) -> None:
        if ws is None or ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(json.dumps(message))

    async def _reject(self, ws: web.WebSocketResponse, error: ProtocolError) -> None:
        await self._send(ws, error.to_json())
        await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=error.code.encode())

    async def _disconnect(self, ws: web.WebSocketResponse, param: Disconnected) -> None:
        await self._send(ws, {"type": "disconnected", **param.to_json()})
        await ws.close()
