"""Pushes: how the platform tells a callee of a call (Notify callback, push URLs, a listening SDK)."""

from __future__ import annotations

import logging
import zlib


from .. import callbacks
from ..config import Service
from ..logsafe import safe
from ..reasons import DisconnectReason as R, Source

from .model import PlatformCall, State

log = logging.getLogger("bridge.platform")


class Pushes:
    """How a callee learns of a call (a part of `Platform`)."""

    async def _notify(self, call: PlatformCall) -> None:
        service = self.services[call.callee.service]
        try:
            if service.notify_cb_url:
                params = {"sid": call.sid, "from_service_id": call.caller.service,
                          "from_user_id": call.caller.user, "to_service_id": call.callee.service,
                          "to_user_id": call.callee.user, "type": "A", "param": call.cc_param}
                if call.app_server_data:
                    params["app_svr_data"] = call.app_server_data
                await callbacks.get(self.clients.session(service.id, "setup"), service.notify_cb_url,
                                    params, service.api_secret, self.cfg.callback_timeout)
            elif service.push_urls:
                await self._push_to_nodes(service, call)
            else:
                sockets = self.listeners.get(call.callee)
                push = {"type": "push", **self._push(call)}
                if not sockets and not await self._push_elsewhere(call, push):
                    raise callbacks.CallbackError(f"{call.callee} has no connected session")
                for ws in list(sockets or ()):
                    await self._send(ws, push)
        except callbacks.CallbackError as exc:
            log.info("call %s: push failed: %s", call.sid, safe(exc))
            self._callback_failed("push")
            await self.end(call, Source.CLOUD_SERVER, R.PUSH_ERROR)
            return
        if call.state is not State.ENDED:
            await self._send(call.caller_ws, {"type": "wait_connected"})

    async def _push_to_nodes(self, service: Service, call: PlatformCall) -> None:
        """POST the push to the service's `push_url`s: starting at the one the call's sid hashes
        to (calls spread over the nodes), then the next ones in turn while a node cannot take it
        (no connection, no answer in time, 503 with Retry-After). The node that takes it answers
        202; a node that finds another took it answers 202 `duplicate`."""
        assert service.push_secret
        urls = service.push_urls
        first = zlib.crc32(call.sid.encode()) % len(urls)
        order = urls[first:] + urls[:first]
        for n, url in enumerate(order):
            try:
                await callbacks.post_json(self.clients.session(service.id, "setup"), url, self._push(call),
                                          service.push_secret, self.cfg.callback_timeout)
                return
            except callbacks.CallbackError as exc:
                if not exc.elsewhere or n + 1 == len(order) or call.state is State.ENDED:
                    raise
                log.info("call %s: push to %s failed (%s); trying %s", call.sid, url, safe(exc), order[n + 1])

    async def _push_elsewhere(self, call: PlatformCall, push: dict) -> bool:
        """The callee listens on other platform nodes (a cluster): hand them the push."""
        if self.cluster is None:
            return False
        from ..cluster.store import RedisDown
        try:
            return await self.cluster.push_elsewhere(str(call.callee), push)
        except RedisDown as exc:
            log.warning("call %s: %s", call.sid, exc)
            return False

    async def _pushed_here(self, user: str, push: dict) -> bool:
        """A push another node handed over for a user listening on this node."""
        sockets = next((s for u, s in self.listeners.items() if str(u) == user), set())
        for ws in list(sockets):
            await self._send(ws, push)
        return bool(sockets)

    @staticmethod
    def _push(call: PlatformCall) -> dict:
        """The push payload: the seed's fields, plus who calls (for display)."""
        return {"cc_param": call.cc_param, "app_callee_uid": call.callee.user,
                "app_callee_sid": call.callee.service, "app_call_type": "audio",
                "app_svr_data": call.app_server_data, "sid": call.sid,
                "caller_id": call.caller.user, "caller_service_id": call.caller.service}
