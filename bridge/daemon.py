"""The daemon: one uvloop process serving the platform, the notification endpoint, the SIP
account and the bridged calls.

Signals: SIGTERM/SIGINT drain (no new calls; active ones may finish until `drain_timeout`),
and say so with the number of calls; a second SIGTERM/SIGINT ends the calls at once. SIGHUP reloads the routes (a broken file keeps the old ones and logs why). systemd is told
READY, RELOADING, STOPPING, STATUS (active calls) and WATCHDOG.

With `cluster:` the bridge is a node of a cluster (`bridge.cluster`): it joins before it takes
SIP (waiting out a killed predecessor's lease), mirrors its dialogs in Redis, reaps dead nodes,
and leaves after its calls are over. Redis out of reach: /healthz says so (503) and new calls
are refused with a reason, never left hanging. /healthz and /metrics (`admin`) are on the
notification listener, or on the platform listener of a `bridge platform` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import resource
import signal
from typing import TYPE_CHECKING, Awaitable, Callable

import uvloop
from aiohttp import web

from . import config, httpguard, ice, production, rtcjitter, systemd, tls, token, webapp
from .admin import AdminEndpoints
from .bridgedcall import Bridge
from .cluster.config import ClusterConfig
from .collector import Collector
from .config import Config
from .metrics import Metrics
from .notifications import NotificationServer
from .platform import Platform
from .sip import JournalError, UserAgent

if TYPE_CHECKING:
    from .cluster.membership import Membership

log = logging.getLogger("bridge.daemon")

Companion = Callable[["Daemon"], Awaitable[None]]


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.platform = (Platform(cfg.platform, self.metrics, cfg.webrtc.ice_servers)
                         if cfg.platform.embedded else None)
        self.ua: UserAgent | None = None
        self.bridge: Bridge | None = None
        self.cluster: Membership | None = None
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()              # a second stop signal: end the calls now
        self._listeners: list[httpguard.Listener] = []

    def token_for(self, service_id: str, user_id: str) -> str:
        s = self.cfg.platform.services[service_id]
        return token.issue(token.ServiceKey(s.id, s.api_key, s.api_secret), user_id)

    def status(self) -> str:
        platform = self.platform.active_calls if self.platform else 0
        bridged = len(self.bridge.calls) if self.bridge else 0
        reg = f", SIP {self.ua.registration.state}" if self.ua else ""
        return f"{bridged} bridged calls, {platform} platform calls{reg}"

    def _calls_up(self) -> int:
        return (len(self.bridge.calls) if self.bridge else 0) + (self.platform.active_calls if self.platform else 0)

    @property
    def role(self) -> str:
        parts = (["bridge"] if self.cfg.bridge is not None else []) + (["platform"] if self.platform else [])
        return "+".join(parts) or "none"

    def health(self) -> tuple[bool, dict]:
        detail: dict = {"pid": os.getpid(), "role": self.role, "platform": "embedded" if self.platform else "remote",
                        "draining": bool(self.bridge and self.bridge.draining)}
        ok = True
        if self.ua is not None:
            reg = self.ua.registration
            detail["sip_registration"] = {"state": reg.state, "detail": reg.detail}
            ok = reg.state in ("registered", "disabled")
        if self.bridge is not None:
            detail["bridged_calls"] = len(self.bridge.calls)
        if self.platform is not None:
            detail["platform_calls"] = self.platform.active_calls
        if self.cluster is not None:
            detail["cluster"] = self.cluster.health()
            ok = ok and self.cluster.node.healthy
        else:
            detail["cluster"] = None                # alone: state in memory
        return ok and not detail["draining"], detail

    async def _listen(self, app: web.Application, name: str, host: str, port: int,
                      limits: config.HttpLimits, what: str, files: config.TlsFiles | None) -> None:
        listener = httpguard.Listener(app, name, limits, self._http_refused)
        try:
            context = tls.server_context(files.cert, files.key) if files else None
            await listener.start(host, port, context)
        except tls.TlsError as exc:
            raise SystemExit(f"bridge: cannot serve TLS for {what}: {exc}") from None
        except OSError as exc:
            raise SystemExit(f"bridge: cannot listen on {host}:{port} for {what}: {exc.strerror}") from None
        self._listeners.append(listener)
        log.info("%s listening on %s://%s:%d (header timeout %gs, body timeout %gs, at most %d connections, "
                 "%s per client)", what, "https" if files else "http", host, port, limits.header_timeout,
                 limits.body_timeout, limits.max_connections, limits.max_connections_per_client or "any")

    def _http_refused(self, listener: str, reason: str) -> None:
        self.metrics.http_refused.labels(listener, reason).inc()

    async def serve(self, companion: Companion | None = None) -> None:
        """Run until SIGTERM/SIGINT; `companion(self)` runs beside it (the demo's console)."""
        cfg = self.cfg
        ice.use_host_addresses(cfg.webrtc.ice_addresses)
        ice.use_public_address(cfg.webrtc.public_address)
        rtcjitter.use(cfg.webrtc.receive_prefetch)
        try:
            await self._start()
        except BaseException:
            await self._shutdown()
            raise
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        collector = Collector(self.metrics.gc_pause, self._calls_up)
        collector.start()
        systemd.notify("READY=1", f"STATUS={self.status()}")
        tasks = [asyncio.ensure_future(systemd.watchdog()), asyncio.ensure_future(self._report()),
                 asyncio.ensure_future(self._watch_loop())]
        if companion is not None:
            tasks.append(asyncio.ensure_future(companion(self)))
        await self._stop.wait()
        systemd.notify("STOPPING=1")
        try:
            await self._shutdown()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=2)
            await collector.stop()

    def stop(self) -> None:
        """Stop as on SIGTERM (the demo's console)."""
        self._stop_signal(signal.SIGTERM)

    def _stop_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        calls = len(self.bridge.calls) if self.bridge else 0
        if self._stop.is_set():
            if not self._hurry.is_set():
                log.warning("%s again: ending %d call(s) now", name, calls)
                self._hurry.set()
            return
        self._stop.set()
        if calls and self.cfg.bridge is not None:
            again = "Ctrl-C" if sig == signal.SIGINT else name
            log.warning("stopping (%s): draining %d call(s) for up to %.0f s; %s again ends them now",
                        name, calls, self.cfg.bridge.drain_timeout, again)
        else:
            log.info("stopping (%s): no calls", name)

    async def _start(self) -> None:
        cfg = self.cfg
        if cfg.cluster is not None:
            await self._join(cfg.cluster)
        if self.platform is not None:
            app = web.Application(client_max_size=webapp.MAX_BODY)
            self.platform.add_routes(app)
            webapp.add_routes(app, cfg.platform)      # /sdk/planetkit.js, /dialer, /v1/dev/token
            if cfg.bridge is None:                    # `bridge platform`: no notification listener
                admin_token = cfg.notifications.admin_token if cfg.notifications else None
                AdminEndpoints(admin_token, self.health, self.metrics, self.refresh_gauges).add_routes(app)
            p = cfg.platform
            await self._listen(app, "platform", p.host, p.port, p.http, f"platform (public URL {p.public_url})",
                               p.tls)
        if cfg.bridge is not None:
            assert cfg.sip is not None and cfg.notifications is not None
            self.ua = UserAgent(cfg.sip, self._on_incoming, journal=cfg.sip.journal)
            self.bridge = Bridge(cfg, self.ua, self.metrics, self.token_for, self.cluster)
            self.ua.on_replaces = self.bridge.on_replaces
            self.metrics.watch_sip(self.ua.counters)
            try:
                await self.ua.start()
            except JournalError as exc:
                raise SystemExit(f"bridge: {exc}") from None
            if self.cluster is not None:
                self.cluster.serve(self.ua, self.bridge.drop_all)
            server = NotificationServer(cfg.notifications, self.bridge, self.metrics, self.health,
                                        self.refresh_gauges)
            n = cfg.notifications
            await self._listen(server.app(), "notifications", n.host, n.port, n.http,
                               "notifications, /healthz, /metrics", n.tls)

    async def _join(self, cluster: ClusterConfig) -> None:
        """Join the cluster as this process's roles: a bridge node, a platform node, or both."""
        from .cluster.membership import Membership
        from .cluster.node import NodeIdInUse
        if self.cfg.bridge is None:                   # `bridge platform` beside a node of the same config
            cluster = dataclasses.replace(cluster, node_id=f"{cluster.node_id}-platform")
        self.cluster = Membership(cluster)
        n = self.cfg.notifications
        info = {"role": self.role, "platform": self.cfg.platform.public_url if self.platform else ""}
        if self.cfg.bridge is not None and n is not None:
            info["notifications"] = f"{n.host}:{n.port}"
        self.cluster.node.status = self._node_status
        try:
            await self.cluster.join(info)
        except NodeIdInUse as exc:
            raise SystemExit(f"bridge: {exc}") from None
        if self.platform is not None:
            await self._link_platform()

    async def _link_platform(self) -> None:
        """This process serves the platform as one of several nodes: they share cc_param's key."""
        from .cluster.signalling import Signalling
        from .cluster.store import RedisDown
        assert self.cluster is not None and self.platform is not None
        if not any(s.keypath == "platform.cc_param_secret" for s in self.cfg.secrets):
            raise SystemExit(f"bridge: {self.cfg.path}: platform.cc_param_secret: set it (or its _env variable): "
                             "the platform nodes of a cluster must share it")
        p = self.cfg.platform
        link = Signalling(self.cluster.store, self.cluster.node, p.answer_timeout, p.max_call_time)
        try:
            await link.start()
        except RedisDown as exc:
            raise SystemExit(f"bridge: cannot subscribe to the platform nodes' channel: {exc}") from None
        self.platform.join(link)
        self.cluster.platform_link = link

    def _node_status(self) -> dict[str, str]:
        """What this node publishes on every heartbeat (`bridge cluster status`)."""
        status = {"calls": str(len(self.bridge.calls) if self.bridge else 0),
                  "draining": "1" if self.bridge is not None and self.bridge.draining else "0"}
        if self.ua is not None and self.ua.local[1]:
            status["sip"] = f"{self.cfg.sip.contact_host if self.cfg.sip else ''}:{self.ua.local[1]}"
        return status

    async def _on_incoming(self, call) -> None:
        assert self.bridge is not None
        await self.bridge.on_incoming(call)

    async def _shutdown(self) -> None:
        if self.bridge is not None:
            assert self.cfg.bridge is not None
            if self.platform is not None:
                self.platform.accepting = False
            await self.bridge.drain(self.cfg.bridge.drain_timeout, self._hurry)
        if self.ua is not None:
            await self.ua.stop()
        for listener in reversed(self._listeners):
            await listener.stop()
        self._listeners.clear()
        if self.cluster is not None:
            await self.cluster.leave()

    def reload(self) -> None:
        """SIGHUP: load the config file again and take its routes; keep the old on errors."""
        systemd.notify("RELOADING=1")
        try:
            new = config.load(self.cfg.path)
        except config.ConfigError as exc:
            log.error("reload failed, keeping the running configuration:\n%s", exc)
        else:
            self.cfg.router.replace(new.router)
            log.info("reloaded routes from %s: %d to_sip, %d to_app (other changes need a restart)",
                     self.cfg.path, len(new.router.to_sip), len(new.router.to_app))
        systemd.notify("READY=1", f"STATUS={self.status()}")

    def refresh_gauges(self) -> None:
        m = self.metrics
        m.tasks.set(len(asyncio.all_tasks()))
        if self.ua is not None:
            m.sip_registered.set(1 if self.ua.registration.state == "registered" else 0)
            m.rtp_ports.set(self.ua.ports.in_use)
            m.sip_calls.set(len(self.ua.calls))
            m.sip_transactions.labels("client").set(len(self.ua.layer.client))
            m.sip_transactions.labels("server").set(len(self.ua.layer.server))
            m.sip_connections.set(getattr(self.ua.transport, "open_connections", 0))
        if self.platform is not None:
            self.metrics.platform_calls.set(self.platform.active_calls)
        for listener in self._listeners:
            self.metrics.http_connections.labels(listener.guard.name).set(listener.guard.open)
        if self.cluster is not None:
            self.metrics.cluster(self.cluster)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(5)
            systemd.notify(f"STATUS={self.status()}")

    async def _watch_loop(self, period: float = 0.05) -> None:
        """Event-loop lag (bridge_loop_lag_seconds): the one number that says a busy bridge is late."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + period
            await asyncio.sleep(period)
            self.metrics.loop_lag.observe(max(0.0, loop.time() - due))


def run(cfg: Config, companion: Companion | None = None) -> None:
    """Check the config for production (refuse development settings beyond loopback), then serve."""
    production.check(cfg)
    _raise_file_limit()
    uvloop.run(Daemon(cfg).serve(companion))


def _raise_file_limit() -> None:
    """Each HTTP connection and RTP port is a file descriptor: take the hard limit, not the
    soft one (often 1024 outside systemd), so the listeners' connection caps are what binds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
