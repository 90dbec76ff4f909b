"""The admin endpoints: GET /healthz and GET /metrics, and who may ask.

    GET /healthz   200 {"ok": true, ...} or 503 {"ok": false, ...}: the process's role (`bridge`,
                   `platform`, both), its SIP registration, calls, draining, and on a node of a
                   cluster its `cluster` state (node id, Redis, `up` or `unreachable`, lease,
                   live nodes); `cluster: null` alone
    GET /metrics   Prometheus text: this process's metrics, plus the cluster gauges on a node

Who may ask: a bearer `notifications.admin_token` if one is configured, else loopback clients
only; anyone else gets 401 `unauthorized`. A bridge serves them on its notification listener;
a `bridge platform` process (no notification listener) on its platform listener.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Callable

from aiohttp import web

from .httpguard import error_response
from .metrics import Metrics

Health = Callable[[], tuple[bool, dict]]


class AdminEndpoints:
    def __init__(self, admin_token: str | None, health: Health, metrics: Metrics,
                 refresh: Callable[[], None] = lambda: None) -> None:
        self.admin_token = admin_token
        self.health = health
        self.metrics = metrics
        self.refresh = refresh

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)

    def _allowed(self, request: web.Request) -> bool:
        if self.admin_token:
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            return hmac.compare_digest(given, f"Bearer {self.admin_token}".encode())
        try:
            return ipaddress.ip_address(request.remote or "").is_loopback
        except ValueError:
            return False

    async def _healthz(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return error_response(401, "unauthorized", "admin token required")
        ok, detail = self.health()
        return web.json_response({"ok": ok, **detail}, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return error_response(401, "unauthorized", "admin token required")
        self.refresh()
        return web.Response(body=self.metrics.text(), content_type="text/plain", charset="utf-8")
