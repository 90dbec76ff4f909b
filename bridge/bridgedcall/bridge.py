"""All bridged calls of the daemon: admitted (alone, or claimed in a cluster), counted on routes,
started, drained."""

from __future__ import annotations

import asyncio
import logging
import time
import wave
from typing import TYPE_CHECKING, Callable

import numpy as np

from .. import tls
from ..audio import read_wav
from ..callrecord import CallRecordLog
from ..config import Config
from ..metrics import Metrics
from ..ringback import Ringbacks
from ..routing import Route, Router
from ..logsafe import safe
from ..sip import IncomingCall, SipCall, UserAgent

from .app_to_desk import AppToDeskCall, Notification
from .call import BridgedCall
from .desk_to_app import DeskToAppCall

if TYPE_CHECKING:
    from ..cluster.membership import Membership

log = logging.getLogger("bridge.call")

# results of calls refused before anyone rang: their claim goes back, so that another node may take them
UNRUNG = ("no_route", "route_limit", "cluster_unavailable")


class Admission:
    """Why a new call is refused (None in `Bridge.admit`: it is taken)."""

    DUPLICATE = "duplicate"            # another node (or this one) took it already
    BUSY = "busy"                      # bridge.max_calls reached, across the cluster
    DRAINING = "draining"
    UNAVAILABLE = "cluster_unavailable"   # Redis out of reach: nobody can say who takes it


class Bridge:
    """All bridged calls of the daemon: starts them, counts them, drains them."""

    def __init__(self, cfg: Config, ua: UserAgent, metrics: Metrics,
                 token_for: Callable[[str, str], str], cluster: "Membership | None" = None) -> None:
        assert cfg.bridge is not None
        self.cfg = cfg
        self.cluster = cluster              # None: one node alone, counting and claiming in memory
        self.router: Router = cfg.router
        self.ua = ua
        self.metrics = metrics
        self.token_for = token_for
        self.calls: set[BridgedCall] = set()
        self.draining = False
        self._tasks: set[asyncio.Task] = set()
        self._seen_sids: dict[str, float] = {}
        ca = cfg.bridge.platform_ca             # a wss:// platform with a private CA
        self.platform_ssl = tls.client_context(ca) if ca else None
        self.ringbacks = Ringbacks()
        self._music_path = cfg.bridge.music_on_hold
        self._music: dict[int, np.ndarray | None] = {}
        self.music_on_hold(8000)                # read at start: a broken file is said at once
        self.records = CallRecordLog(cfg.bridge.call_records)

    def music_on_hold(self, rate: int) -> np.ndarray | None:
        """`bridge.music_on_hold` at `rate` (the SIP leg's: 8 kHz G.711, 16 kHz G.722), read once
        per rate; None: silence while the app user holds (also for a file that cannot be read,
        logged once)."""
        if self._music_path is None:
            return None
        if rate not in self._music:
            try:
                self._music[rate] = read_wav(self._music_path, rate)
            except (OSError, ValueError, EOFError, wave.Error) as exc:
                if not self._music:
                    log.error("music on hold %s cannot be read (%s): the phone hears silence on hold",
                              self._music_path, exc)
                self._music[rate] = None
        return self._music[rate]

    @property
    def platform_url(self) -> str:
        return self.cfg.platform.ws_url

    def full(self) -> bool:
        assert self.cfg.bridge is not None
        return len(self.calls) >= self.cfg.bridge.max_calls

    def seen(self, sid: str) -> bool:
        """True if a notification for call `sid` was taken already (idempotency)."""
        now = time.monotonic()
        if len(self._seen_sids) > 10000:
            self._seen_sids = {k: t for k, t in self._seen_sids.items() if now - t < 600}
        if sid in self._seen_sids:
            return True
        self._seen_sids[sid] = now
        return False

    async def admit(self, kind: str, ident: str) -> tuple[str | None, list[str]]:
        """May this node take a new call (`kind` push by sid, or invite by Call-ID)? Returns the
        refusal (an `Admission`, None: taken) and the cluster scopes the call now holds. Alone:
        the draining and `bridge.max_calls` checks and the seen-sid memory, as ever. In a
        cluster: one claim of the call and one count in the cluster-wide `bridge` scope, each
        given back if the other fails."""
        assert self.cfg.bridge is not None
        if self.draining:
            return Admission.DRAINING, []
        if self.cluster is None:
            if self.full():
                return Admission.BUSY, []
            if kind == "push" and self.seen(ident):
                return Admission.DUPLICATE, []
            return None, []
        from ..cluster.limits import bridge_scope
        from ..cluster.store import RedisDown
        claims, limits = self.cluster.claims, self.cluster.limits
        # a push's signature is accepted up to replay_window either side of its timestamp
        hold = 2 * self.cfg.notifications.replay_window if kind == "push" and self.cfg.notifications else None
        try:
            if not await claims.take(kind, ident, hold):
                return Admission.DUPLICATE, []
            if await limits.take([(bridge_scope(), self.cfg.bridge.max_calls)]) is not None:
                await claims.give_back(kind, ident)
                return Admission.BUSY, []
        except RedisDown as exc:
            log.warning("%s %s refused: %s", kind, safe(ident), exc)
            return Admission.UNAVAILABLE, []
        return None, [bridge_scope()]

    async def count_on(self, call: BridgedCall, route: Route, what: str) -> str | None:
        """Count `call` (`what` in the log) on its route, locally and across the cluster; the
        refusal's result (logged), or None."""
        refused = await self._count_on(call, route)
        if refused is not None:
            log.warning("%s: route %s %s", what, route.name,
                        f"is at its limit of {route.calls.limit} calls" if refused == "route_limit"
                        else "cannot count the call: the cluster's state is out of reach")
        return refused

    async def _count_on(self, call: BridgedCall, route: Route) -> str | None:
        if not route.calls.acquire():
            return "route_limit"
        if self.cluster is not None:
            from ..cluster.limits import route_scope
            from ..cluster.store import RedisDown
            scope = route_scope("to_sip" if isinstance(call, AppToDeskCall) else "to_app", route.name)
            try:
                full = await self.cluster.limits.take([(scope, route.calls.limit)])
            except RedisDown as exc:
                log.warning("%s: route %s: %s", call.name, route.name, exc)
                route.calls.release()
                return "cluster_unavailable"
            if full is not None:
                route.calls.release()
                return "route_limit"
            call.held.append(scope)
        call.route = route
        return None

    async def give_back(self, call: BridgedCall) -> None:
        """What a call took in the cluster: its counts, and its claim if nobody was rung."""
        if self.cluster is None:
            return
        held, call.held = call.held, []
        if held:
            await self.cluster.limits.give_back(held)
        if call.claim is not None and call.result in UNRUNG:
            from ..cluster.store import RedisDown
            try:
                await self.cluster.claims.give_back(*call.claim)
            except RedisDown:
                pass                          # it expires by itself (cluster.claim_ttl)

    def spawn(self, coro, what: str) -> asyncio.Task:
        """A background step of a call (a DTMF send...): kept, and its failure logged, not lost."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("%s failed: %s", what, t.exception())
        task.add_done_callback(done)
        return task

    def start(self, call: BridgedCall) -> None:
        self.calls.add(call)
        self.metrics.active_calls.labels(call.direction).inc()
        task = asyncio.ensure_future(call.run())
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            self.calls.discard(call)
            self.metrics.active_calls.labels(call.direction).dec()
            self.metrics.calls.labels(call.direction, call.result).inc()
            for direction, stats in (("app_to_sip", call.app_to_sip.stats), ("sip_to_app", call.sip_to_app.stats)):
                for outcome in ("frames", "late", "underruns", "overruns"):
                    self.metrics.frames.labels(direction, outcome).inc(getattr(stats, outcome))
            if not t.cancelled() and t.exception() is not None:
                log.error("bridged call failed", exc_info=t.exception())
        task.add_done_callback(done)

    def notify(self, push: Notification, held: list[str] | None = None) -> None:
        call = AppToDeskCall(self, push)
        call.held = list(held or [])
        call.claim = ("push", push.param.sid) if self.cluster is not None else None
        self.start(call)

    async def on_incoming(self, sip: IncomingCall) -> None:
        refused, held = await self.admit("invite", sip.call_id)
        if refused == Admission.DUPLICATE:        # a forked or failed-over copy another node took
            await sip.reject(482, "Taken By Another Node")
            return
        # Retry-After: this node cannot take it, another may (Kamailio's dispatcher fails over);
        # none: no node can (the cluster is at bridge.max_calls)
        if refused == Admission.UNAVAILABLE:
            await sip.reject(503, "Cluster State Unavailable", headers=[("Retry-After", "5")])
            return
        if refused == Admission.DRAINING:
            await sip.reject(503, "Draining", headers=[("Retry-After", "30")])
            return
        if refused is not None:
            await sip.reject(503)
            return
        call = DeskToAppCall(self, sip)
        call.held = held
        call.claim = ("invite", sip.call_id) if self.cluster is not None else None
        self.start(call)

    async def drop_all(self) -> None:
        """A survivor ended this node's calls while it was cut off from Redis: end them here too."""
        log.warning("ending %d call(s) a survivor already ended (this node was cut off from the cluster)",
                    len(self.calls))
        for call in list(self.calls):
            call.stop()

    async def on_replaces(self, new: IncomingCall, old: SipCall) -> None:
        """An INVITE with Replaces names the SIP leg of one of our calls: it takes that leg's place."""
        for call in self.calls:
            if call.sip is old:
                self.spawn(call.take_over(new), f"{call.name}: replacing its SIP leg")
                return
        await new.reject(481)

    async def drain(self, timeout: float, cut: asyncio.Event | None = None) -> None:
        """Take no new calls; let active ones finish for up to `timeout` (or until `cut` is
        set), then end them."""
        self.draining = True
        self.ua.draining = True
        if self.calls:
            log.info("draining %d call(s) for up to %.0f s", len(self.calls), timeout)
            waits = [asyncio.ensure_future(asyncio.wait(list(self._tasks)))]    # cancelling it cancels no call
            if cut is not None:
                waits.append(asyncio.ensure_future(cut.wait()))
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        if self.calls:
            log.info("ending %d call(s) still up after the drain", len(self.calls))
        for call in list(self.calls):
            call.stop()                       # each hangs up both its legs (BYE, and the app call)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
