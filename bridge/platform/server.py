"""The platform's signalling: one WebSocket per call leg, the call's state and timers (see the package)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from .. import callbacks, ccparam, token
from ..config import PlatformConfig
from ..iceservers import IceServer
from ..logsafe import failure, safe
from ..metrics import Metrics
from ..reasons import Disconnected, DisconnectReason as R, Source
from .appserver import AppServers
from .model import PlatformCall, State, User, error
from .push import Pushes
from .sockets import Sockets

if TYPE_CHECKING:
    from ..cluster.signalling import Signalling

log = logging.getLogger("bridge.platform")


class Platform(Sockets, Pushes, AppServers):
    """The platform's state and its aiohttp routes; how a leg's WebSocket opens and what it carries
    (`Sockets`), how callees are told of calls (`Pushes`) and what app servers get (`AppServers`)
    are in their own modules."""

    def __init__(self, cfg: PlatformConfig, metrics: Metrics | None = None,
                 ice_servers: tuple[IceServer, ...] = ()) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.ice_servers = ice_servers
        self.services = cfg.services
        self.keys = {s.api_key: token.ServiceKey(s.id, s.api_key, s.api_secret)
                     for s in cfg.services.values()}
        self.calls: dict[str, PlatformCall] = {}
        self.active: dict[User, set[str]] = {}
        self.listeners: dict[User, set[web.WebSocketResponse]] = {}
        self._tasks: set[asyncio.Task] = set()
        self.clients = callbacks.Clients(cfg.callback_ca)
        self.accepting = True
        self.cluster: "Signalling | None" = None      # None: alone, everything in memory

    def join(self, cluster: "Signalling") -> None:
        """Serve as one of several platform nodes (see the module's docstring)."""
        self.cluster = cluster
        cluster.on_attach = self._attached
        cluster.on_push = self._pushed_here
        cluster.on_rest = self._rest_here

    # --- life ------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/ws", self._websocket)
        app.router.add_get("/v1/calls/{sid}", self._rest_get)
        app.router.add_delete("/v1/calls/{sid}", self._rest_delete)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.close()

    async def close(self) -> None:
        """End every call (SERVICE_MAINTENANCE), close listeners, flush callbacks."""
        self.accepting = False
        for call in list(self.calls.values()):
            await self.end(call, Source.CLOUD_SERVER, R.SERVICE_MAINTENANCE)
        for sockets in list(self.listeners.values()):
            for ws in list(sockets):
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"platform shutting down")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.cfg.callback_timeout + 1)
        await self.clients.close()

    def _spawn(self, coro, sid: str) -> None:
        """Run `coro` for call `sid` in the background; if it fails, log it and count it."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(t, sid))

    def _task_done(self, task: asyncio.Task, sid: str) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        name = getattr(task.get_coro(), "__name__", "task")
        log.error("call %s: background task %s failed: %s", sid, name, failure(task.exception()))
        if self.metrics is not None:
            self.metrics.platform_task_errors.labels(name).inc()

    def _callback_failed(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.platform_callback_failures.labels(kind).inc()

    @property
    def active_calls(self) -> int:
        return sum(1 for c in self.calls.values() if c.state is not State.ENDED)

    # --- caller ---------------------------------------------------------------------

    async def _make_call(self, ws: web.WebSocketResponse, msg: dict, messages) -> None:
        caller = User(msg["my_service_id"], msg["my_id"])
        callee = User(msg["peer_service_id"], msg["peer_id"])
        call = PlatformCall(sid=str(uuid.uuid4()), caller=caller, callee=callee,
                            app_server_data=msg.get("app_server_data"), offer=msg["sdp"],
                            caller_ws=ws, tracked=False)
        self.calls[call.sid] = call
        refusal = self._refusal(msg, caller, callee)
        if refusal is None and self.cluster is not None:
            refusal = await self._shared_refusal(call)
        if refusal is not None:
            await self._send(ws, {"type": "call_made", "sid": call.sid})
            await self.end(call, Source.CLOUD_SERVER, refusal)
            return
        call.tracked = True
        self.active.setdefault(caller, set()).add(call.sid)
        self.active.setdefault(callee, set()).add(call.sid)
        call.cc_param = ccparam.mint(ccparam.CcParam(
            sid=call.sid, callee_service=callee.service, callee_user=callee.user,
            caller_service=caller.service, caller_user=caller.user,
            platform_url=self.cfg.ws_url, expires=time.time() + self.cfg.answer_timeout + 5,
        ), self.cfg.cc_param_secret)
        log.info("call %s %s -> %s: made", call.sid, caller, callee)
        await self._send(ws, {"type": "call_made", "sid": call.sid})
        loop = asyncio.get_running_loop()
        call.timers.append(loop.call_later(self.cfg.answer_timeout, self._timeout, call, R.NOANSWER))
        self._spawn(self._notify(call), call.sid)
        async for m in messages:
            if m["type"] == "end_call":
                reason = R.NORMAL if call.state is State.CONNECTED else R.CANCEL
                await self.end(call, Source.CALLER, R(m.get("reason", reason)))
            elif not await self._in_call(call, ws, m):
                await self._send(ws, error("unexpected", f"{m['type']} is not a caller's message"))
        await self.end(call, Source.CALLER, R.NETWORK_UNSTABLE)

    async def _shared_refusal(self, call: PlatformCall) -> R | None:
        """On a node of a cluster: BUSY if the callee is in a call on another node; else the call
        is recorded in Redis (its home, its users). Redis out of reach: SERVICE_INTERNAL_ERROR."""
        assert self.cluster is not None
        from ..cluster.store import RedisDown
        try:
            if self.services[call.callee.service].one_call_per_user and await self.cluster.busy(str(call.callee)):
                return R.BUSY
            await self.cluster.call_made(call.sid, str(call.caller), str(call.callee),
                                         [str(call.caller), str(call.callee)])
        except RedisDown as exc:
            log.warning("call %s: refused: %s", call.sid, exc)
            return R.SERVICE_INTERNAL_ERROR
        return None

    def _refusal(self, msg: dict, caller: User, callee: User) -> R | None:
        refusal = self._token_refusal(msg["token"], caller, "makeCall")
        if refusal is not None:
            return refusal
        if callee.service not in self.services:
            return R.SERVICE_INVALID_ID
        if self.active.get(callee) and self.services[callee.service].one_call_per_user:
            return R.BUSY
        return None

    # --- callee ---------------------------------------------------------------------

    async def _verify_call(self, ws: web.WebSocketResponse, msg: dict, messages) -> None:
        try:
            param = ccparam.verify(msg["cc_param"], self.cfg.cc_param_secret)
        except ccparam.CcParamError as exc:
            log.info("verifyCall refused: %s", safe(exc))
            expired = "expired" in str(exc)
            await self._disconnect(ws, Disconnected(
                Source.CLOUD_SERVER, R.RELEASED_CALL if expired else R.AUTH_ERROR))
            return
        if (param.callee_service, param.callee_user) != (msg["my_service_id"], msg["my_id"]):
            log.info("verifyCall refused: cc_param is not for %s@%s", msg["my_id"], msg["my_service_id"])
            await self._disconnect(ws, Disconnected(Source.CLOUD_SERVER, R.AUTH_ERROR))
            return
        call = self.calls.get(param.sid)
        if call is None or call.state is not State.CALLING or call.callee_ws is not None:
            log.info("verifyCall refused: call %s already verified or released", param.sid)
            await self._disconnect(ws, Disconnected(Source.CLOUD_SERVER, R.RELEASED_CALL))
            return
        call.callee_ws = ws
        call.state = State.VERIFIED
        log.info("call %s: verified by %s", call.sid, call.callee)
        await self._send(ws, {"type": "verified", "sid": call.sid, "peer_id": call.caller.user,
                              "peer_service_id": call.caller.service, "sdp": call.offer,
                              "app_server_data": call.app_server_data,
                              "ice_servers": self._servers_for(call.callee)})
        async for m in messages:
            kind = m["type"]
            if kind == "answer" and not call.answered and call.state is State.VERIFIED:
                call.answered = True
                await self._send(call.caller_ws, {"type": "sdp", "sdp": m["sdp"]})
            elif kind == "accept_call" and call.answered and call.state is State.VERIFIED:
                await self._connect(call)
            elif kind == "end_call":
                reason = R.NORMAL if call.state is State.CONNECTED else R.DECLINE
                await self.end(call, Source.CALLEE, R(m.get("reason", reason)))
            elif not await self._in_call(call, ws, m):
                await self._send(ws, error("unexpected", f"{kind} is not allowed now"))
        await self.end(call, Source.CALLEE, R.NETWORK_UNSTABLE)

    async def _connect(self, call: PlatformCall) -> None:
        call.state = State.CONNECTED
        call.start_time = time.time()
        for timer in call.timers:
            timer.cancel()
        loop = asyncio.get_running_loop()
        call.timers = [loop.call_later(self.cfg.max_call_time, self._timeout, call,
                                       R.MAX_CALL_TIME_EXCEEDED)]
        log.info("call %s: connected", call.sid)
        for ws in (call.caller_ws, call.callee_ws):
            await self._send(ws, {"type": "connected"})

    async def _in_call(self, call: PlatformCall, ws: web.WebSocketResponse, m: dict) -> bool:
        """Messages either side may send during a call; False if `m` is not one of them."""
        if call.state is State.ENDED:
            return True
        if m["type"] == "mute":
            await self._send(call.peer_ws(ws), {"type": "peer_mute", "muted": m["muted"]})
            return True
        if m["type"] == "dtmf" and call.state is State.CONNECTED:
            await self._send(call.peer_ws(ws), {"type": "dtmf", "digits": m["digits"]})
            return True
        if m["type"] == "hold" and call.state is State.CONNECTED:
            await self._send(call.peer_ws(ws), {"type": "peer_hold", "held": m["held"]})
            return True
        return False

    # --- listeners (embedded push) ----------------------------------------------------

    async def _listen(self, ws: web.WebSocketResponse, msg: dict, messages) -> None:
        me = User(msg["my_service_id"], msg["my_id"])
        refusal = self._token_refusal(msg["token"], me, "listen")
        if refusal is not None:
            await self._disconnect(ws, Disconnected(Source.CLOUD_SERVER, refusal))
            return
        self.listeners.setdefault(me, set()).add(ws)
        log.info("%s listening for calls", me)
        await self._listening(me, +1)
        try:
            await self._send(ws, {"type": "listening"})
            async for m in messages:
                await self._send(ws, error("unexpected", f"{m['type']} is not allowed on a listen socket"))
        finally:
            sockets = self.listeners.get(me, set())
            sockets.discard(ws)
            if not sockets:
                self.listeners.pop(me, None)
            await self._listening(me, -1)

    async def _listening(self, me: User, delta: int) -> None:
        """Tell the other platform nodes (a cluster) where `me` listens for pushes."""
        if self.cluster is None:
            return
        from ..cluster.store import RedisDown
        try:
            await self.cluster.listening(str(me), delta)
        except RedisDown as exc:
            log.warning("%s: pushes from other nodes may not find this session: %s", me, exc)

    # --- ending -----------------------------------------------------------------------

    def _timeout(self, call: PlatformCall, reason: R) -> None:
        self._spawn(self.end(call, Source.CLOUD_SERVER, reason), call.sid)

    async def end(self, call: PlatformCall, source: Source, reason: R) -> None:
        """End `call` once: tell both legs, free the users, send the Call Event callback."""
        if call.state is State.ENDED:
            return
        call.state = State.ENDED
        call.end_time = time.time()
        call.ended = Disconnected(source, reason)
        for timer in call.timers:
            timer.cancel()
        self.calls.pop(call.sid, None)
        if call.tracked:
            for user in (call.caller, call.callee):
                sids = self.active.get(user)
                if sids is not None:
                    sids.discard(call.sid)
                    if not sids:
                        del self.active[user]
        log.info("call %s %s -> %s: ended %s", call.sid, call.caller, call.callee, call.ended)
        if self.cluster is not None and call.tracked:
            self._spawn(self.cluster.call_ended(call.sid, [str(call.caller), str(call.callee)]), call.sid)
        for ws in (call.caller_ws, call.callee_ws):
            if ws is not None and not ws.closed:
                await self._send(ws, {"type": "disconnected", **call.ended.to_json()})
                self._spawn(ws.close(), call.sid)
        self._spawn(self._call_event(call), call.sid)
