"""The notification endpoint: push-style call notifications for desk-phone users, over HTTP.

POST /v1/notifications with a JSON body {cc_param, app_callee_uid, app_callee_sid,
app_call_type}, signed like every request between bridge parts (see `callbacks`):
X-Bridge-Timestamp and X-Bridge-Signature = v1=HMAC-SHA256(secret, "<timestamp>.<body>").
It answers 202 at once and the call proceeds in the background. Unsigned, stale, replayed or
malformed requests get a 4xx with {"error", "message"} and never start a call; a second
notification for the same call is acknowledged (202, "duplicate") and ignored, by every node
of a cluster (`bridge.cluster.claim`: the call's sid is claimed once). A 503 (draining, full,
or the cluster's Redis out of reach) carries `Retry-After`: a pusher with a list of nodes
tries the next. Each node refuses a signature it saw (409); across nodes the claim of the sid
is what stops a replayed push (202 `duplicate`: the claim lasts as long as the signature can be
accepted, 2 x replay_window), so a pusher may send the same signed request to the next node
after a 503. Bodies are at
most 8 KiB (413); the listener's timeouts, caps and error shape are `httpguard`'s.

The same server answers GET /healthz and GET /metrics (`admin`: bearer `admin_token` if
configured, else loopback clients only).
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Callable

from aiohttp import web

from . import callbacks, ccparam, protocol
from .admin import AdminEndpoints, Health
from .bridgedcall import Admission, Bridge, Notification
from .config import NotificationsConfig
from .httpguard import error_response as _error
from .logsafe import safe
from .metrics import Metrics

log = logging.getLogger("bridge.notifications")

MAX_BODY = 8 * 1024
CALL_ID = re.compile(r"[a-zA-Z0-9-]{1,64}")


class NotificationServer:
    def __init__(self, cfg: NotificationsConfig, bridge: Bridge, metrics: Metrics,
                 health: Health, refresh: Callable[[], None] = lambda: None) -> None:
        self.cfg = cfg
        self.bridge = bridge
        self.metrics = metrics
        self.admin = AdminEndpoints(cfg.admin_token, health, metrics, refresh)
        self._signatures: dict[str, float] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/v1/notifications", self._notification)
        self.admin.add_routes(app)
        return app

    # --- notifications ------------------------------------------------------------------

    async def _notification(self, request: web.Request) -> web.Response:
        response = await self._take(request)
        outcome = "accepted" if response.status == 202 else f"rejected_{response.status}"
        self.metrics.notifications.labels(outcome).inc()
        return response

    async def _take(self, request: web.Request) -> web.Response:
        body = await request.read()             # read already, within the body timeout (httpguard)
        problem = callbacks.check(self.cfg.secret, request.headers, body, window=self.cfg.replay_window)
        if problem:
            log.info("notification refused: %s", problem)
            return _error(401, "unauthorized", problem)
        signature = request.headers[callbacks.SIGNATURE]
        if self._replayed(signature):
            return _error(409, "replayed", "this signed request was already received")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return _error(400, "bad_json", "body is not valid JSON")
        if not isinstance(data, dict):
            return _error(400, "bad_request", "body must be a JSON object")
        for name, pattern in (("cc_param", None), ("app_callee_uid", protocol.USER_ID),
                              ("app_callee_sid", protocol.SERVICE_ID), ("app_call_type", None)):
            value = data.get(name)
            if not isinstance(value, str) or not value:
                return _error(400, "bad_request", f"field {name!r} must be a non-empty string")
            if pattern is not None and not pattern.fullmatch(value):
                return _error(400, "bad_request", f"field {name!r} is not a valid id")
        if data["app_call_type"] != "audio":
            return _error(400, "bad_request", "app_call_type must be 'audio'")
        try:
            param = ccparam.decode(data["cc_param"])
        except ccparam.CcParamError as exc:
            return _error(400, "bad_cc_param", str(exc))
        if (param.callee_service, param.callee_user) != (data["app_callee_sid"], data["app_callee_uid"]):
            return _error(400, "bad_cc_param", "cc_param is for another callee")
        if not (CALL_ID.fullmatch(param.sid) and protocol.USER_ID.fullmatch(param.caller_user)
                and protocol.SERVICE_ID.fullmatch(param.caller_service)):
            return _error(400, "bad_cc_param", "cc_param names an invalid call id or caller")
        if param.platform_url.rstrip("/") not in self.bridge.cfg.bridge.trusted_platforms:  # type: ignore[union-attr]
            log.info("notification refused: cc_param names an untrusted platform %s", safe(param.platform_url, 100))
            return _error(403, "untrusted_platform", "cc_param names a platform this bridge does not trust")
        refused, held = await self.bridge.admit("push", param.sid)
        if refused == Admission.DRAINING:
            return _retry_elsewhere(_error(503, "draining", "the bridge is shutting down; try another node"))
        if refused == Admission.BUSY:
            return _retry_elsewhere(_error(503, "busy", "the bridge is at its call limit"))
        if refused == Admission.UNAVAILABLE:
            return _retry_elsewhere(_error(503, "cluster_unavailable", "the cluster's shared state (Redis) is out "
                                           "of reach: this node cannot tell whether another took the call"))
        if refused == Admission.DUPLICATE:
            return web.json_response({"status": "duplicate", "sid": param.sid}, status=202)
        log.info("notification: call %s from %s@%s for %s@%s", param.sid, param.caller_user,
                 param.caller_service, param.callee_user, param.callee_service)
        self.bridge.notify(Notification(data["cc_param"], data["app_callee_uid"], data["app_callee_sid"],
                                        "audio", param), held)
        return web.json_response({"status": "accepted", "sid": param.sid}, status=202)

    def _replayed(self, signature: str) -> bool:
        now = time.monotonic()
        if len(self._signatures) > 1000:
            horizon = 2 * self.cfg.replay_window
            self._signatures = {s: t for s, t in self._signatures.items() if now - t < horizon}
        if signature in self._signatures:
            return True
        self._signatures[signature] = now
        return False


def _retry_elsewhere(response: web.Response) -> web.Response:
    """A 503 a pusher with a list of nodes moves on from (`Retry-After`, RFC 9110 10.2.3)."""
    response.headers["Retry-After"] = "1"
    return response
