"""What the platform owes app servers: Call Event callbacks, and REST on their calls."""

from __future__ import annotations

import asyncio
import logging
import math

from aiohttp import web

from .. import callbacks, token
from ..config import Service
from ..logsafe import safe
from ..reasons import DisconnectReason as R, Source

from .model import PlatformCall, State, json_error

log = logging.getLogger("bridge.platform")


class AppServers:
    """Call Events and REST for app servers (a part of `Platform`)."""

    async def _call_event(self, call: PlatformCall) -> None:
        assert call.ended is not None
        duration = call.end_time - call.start_time if call.start_time else 0.0
        params = {
            "sid": call.sid, "from_service_id": call.caller.service, "from_user_id": call.caller.user,
            "to_service_id": call.callee.service, "to_user_id": call.callee.user, "type": "A",
            "setup_time": str(int(call.setup_time)),
            "start_time": str(int(call.start_time)) if call.start_time else "0",
            "end_time": str(int(call.end_time)), "duration": f"{duration:.3f}",
            "terminate": str(call.ended.reason.q850), "disconnect_reason": str(int(call.ended.reason)),
            "releaser_type": str(call.ended.source.releaser_type),
            "rel_code_str": call.ended.reason.str_code, "user_rel_code": "",
            "app_svr_data": call.app_server_data or "", "billing_sec": str(math.ceil(duration)),
        }
        targets = [call.caller.service] if not call.tracked else [call.caller.service, call.callee.service]
        for service_id in dict.fromkeys(targets):
            service = self.services.get(service_id)
            if service is None or not service.call_event_cb_url:
                continue
            await self._deliver_call_event(service, params)

    async def _deliver_call_event(self, service: Service, params: dict[str, str], tries: int = 3) -> None:
        assert service.call_event_cb_url
        for attempt in range(1, tries + 1):
            try:
                await callbacks.get(self.clients.session(service.id, "events"), service.call_event_cb_url,
                                    params, service.api_secret, self.cfg.callback_timeout)
                return
            except callbacks.CallbackError as exc:
                if attempt == tries or self.clients.closed:
                    log.error("call %s: Call Event to %s lost after %d tries: %s", params["sid"], service.id,
                              attempt, safe(exc))
                    self._callback_failed("call_event")
                    return
                log.warning("call %s: Call Event callback to %s failed (try %d): %s",
                            params["sid"], service.id, attempt, safe(exc))
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))

    # --- REST for app servers -----------------------------------------------------------

    def _rest_key(self, request: web.Request) -> token.ServiceKey:
        key = self.keys.get(request.headers.get(callbacks.API_KEY, ""))
        if key is None:
            raise json_error(web.HTTPUnauthorized, "unauthorized", f"unknown or missing {callbacks.API_KEY}")
        problem = callbacks.check(key.api_secret, request.headers, f"{request.method} {request.raw_path}")
        if problem:
            raise json_error(web.HTTPUnauthorized, "unauthorized", problem)
        return key

    async def _rest_get(self, request: web.Request) -> web.Response:
        return await self._rest(request, "get")

    async def _rest_delete(self, request: web.Request) -> web.Response:
        return await self._rest(request, "delete")

    async def _rest(self, request: web.Request, op: str) -> web.Response:
        """An app server's request for one of its service's calls, answered by the call's home
        node: this one, or (a cluster) the one Redis names, over the platform nodes' channel."""
        key, sid = self._rest_key(request), request.match_info["sid"]
        if sid not in self.calls and self.cluster is not None:
            from ..cluster.store import RedisDown
            try:
                home = await self.cluster.home_of(sid)
                if home is not None and home != self.cluster.id:
                    status, body = await self.cluster.ask_home(home, sid, op, key.service_id)
                    return web.json_response(body, status=status)
            except (RedisDown, TimeoutError) as exc:
                log.warning("REST %s of call %s: its home node did not answer: %s", op, safe(sid), exc or "timeout")
                raise json_error(web.HTTPServiceUnavailable, "home_unreachable",
                                  "the platform node of this call does not answer; try again") from None
        status, body = await self._rest_here(sid, op, key.service_id)
        return web.json_response(body, status=status)

    async def _rest_here(self, sid: str, op: str, service_id: str) -> tuple[int, dict]:
        call = self.calls.get(sid)
        if call is None or service_id not in (call.caller.service, call.callee.service):
            return 404, {"error": "unknown_call", "message": "no active call with this sid"}
        if op == "delete":
            await self.end(call, Source.APP_SERVER, R.NORMAL if call.state is State.CONNECTED else R.CANCEL)
            return 200, {"sid": call.sid, "state": "ended"}
        return 200, {"sid": call.sid, "state": call.state.value, "from": str(call.caller), "to": str(call.callee),
                     "setup_time": call.setup_time, "start_time": call.start_time or None}
