"""Bridged calls: one object per call owns the app leg (WebRTC) and the SIP leg.

app -> desk phone: notification -> route -> verifyCall (WebRTC connects while the phone rings)
-> INVITE (fallback targets in order) -> ringback or early media -> 200 OK -> acceptCall.
desk phone -> app: INVITE -> route -> 180 -> makeCall -> the app user accepts -> 200 OK.
Either side hanging up ends the other within one signalling round trip; reasons are mapped by
`reasons.from_sip` and `reasons.to_sip_status`.
Hold travels both ways: the phone's re-INVITE (sendonly, inactive) becomes `hold` on the app
leg (evt_peer_hold), and the app user's `hold` a re-INVITE to the phone (sendonly) with music on
hold or silence meanwhile. When the call is over, its record goes to `callrecord`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import wave
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from . import ccparam, codecs, reasons, tls
from .audio import read_wav
from .callrecord import CallRecord, CallRecordLog, SipEnd
from .config import Config
from .media import AppToSip, SipToApp, cancel_quietly
from .metrics import Metrics
from .reasons import Disconnected, DisconnectReason as R
from .ringback import Ringbacks
from .routing import Denied, Route, Router, TransferDecision
from .logsafe import safe
from .sdk import Call, CallDelegate, MakeCallParams, StartFailError, VerifyCallParams
from .sip import CallFailed, IncomingCall, Referral, SipCall, SipResult, UserAgent
from .sip.uri import hostport

if TYPE_CHECKING:
    from .cluster.membership import Membership

log = logging.getLogger("bridge.call")

# SIP results after which the next fallback target is tried
HUNT_ON = (SipResult.BUSY, SipResult.NO_ANSWER, SipResult.NOT_FOUND, SipResult.UNAVAILABLE)
# results of calls refused before anyone rang: their claim goes back, so that another node may take them
UNRUNG = ("no_route", "route_limit", "cluster_unavailable")


class Admission:
    """Why a new call is refused (None in `Bridge.admit`: it is taken)."""

    DUPLICATE = "duplicate"            # another node (or this one) took it already
    BUSY = "busy"                      # bridge.max_calls reached, across the cluster
    DRAINING = "draining"
    UNAVAILABLE = "cluster_unavailable"   # Redis out of reach: nobody can say who takes it


@dataclass(frozen=True)
class Notification:
    """A push for a desk-phone user: the seed's fields."""

    cc_param: str
    app_callee_uid: str
    app_callee_sid: str
    app_call_type: str
    param: ccparam.CcParam


class _Events(CallDelegate):
    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.ended = asyncio.Event()
        self.param: Disconnected | None = None
        self.on_dtmf: Callable[[str], None] | None = None
        self.on_hold: Callable[[bool], None] | None = None

    def evt_dtmf(self, digits: str) -> None:
        if self.on_dtmf is not None:
            self.on_dtmf(digits)

    def evt_peer_hold(self) -> None:
        if self.on_hold is not None:
            self.on_hold(True)

    def evt_peer_unhold(self) -> None:
        if self.on_hold is not None:
            self.on_hold(False)

    def evt_connected(self) -> None:
        self.connected.set()

    def evt_disconnected(self, param: Disconnected) -> None:
        self.param = param
        self.ended.set()


async def _first(*aws) -> None:
    """Wait until the first of several futures/coroutines completes; cancel the coroutines.

    Futures passed in (a call's `answered`/`ended`) are shielded: they belong to their call.
    """
    tasks = [asyncio.shield(a) if asyncio.isfuture(a) else asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        for t in tasks:  # retrieve exceptions of finished futures (e.g. CallFailed)
            if t.done() and not t.cancelled():
                t.exception()


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
        self.calls: set["BridgedCall"] = set()
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
        from .cluster.limits import bridge_scope
        from .cluster.store import RedisDown
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

    async def count_on(self, call: "BridgedCall", route: Route, what: str) -> str | None:
        """Count `call` (`what` in the log) on its route, locally and across the cluster; the
        refusal's result (logged), or None."""
        refused = await self._count_on(call, route)
        if refused is not None:
            log.warning("%s: route %s %s", what, route.name,
                        f"is at its limit of {route.calls.limit} calls" if refused == "route_limit"
                        else "cannot count the call: the cluster's state is out of reach")
        return refused

    async def _count_on(self, call: "BridgedCall", route: Route) -> str | None:
        if not route.calls.acquire():
            return "route_limit"
        if self.cluster is not None:
            from .cluster.limits import route_scope
            from .cluster.store import RedisDown
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

    async def give_back(self, call: "BridgedCall") -> None:
        """What a call took in the cluster: its counts, and its claim if nobody was rung."""
        if self.cluster is None:
            return
        held, call.held = call.held, []
        if held:
            await self.cluster.limits.give_back(held)
        if call.claim is not None and call.result in UNRUNG:
            from .cluster.store import RedisDown
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

    def start(self, call: "BridgedCall") -> None:
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


class BridgedCall:
    direction = ""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.app = Call(bridge.platform_url, liveness_timeout=bridge.cfg.webrtc.liveness_timeout,
                        ssl=bridge.platform_ssl)
        self.events = _Events()
        self.sip: SipCall | None = None
        assert bridge.cfg.bridge is not None
        app = self.app                      # (not self: no reference cycle through the call)
        self.sip_to_app = SipToApp(lambda: app.codec, relay=bridge.cfg.bridge.media == "relay")
        self.app_to_sip = AppToSip()
        self.result = "failed"
        self.route: Route | None = None     # the route this call is counted on
        self._pump: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self._swapped = asyncio.Event()     # a transfer put another SIP leg under the app call
        self.identity: tuple[str | None, str | None] = (None, None)   # caller id, name toward SIP
        self.phone: str | None = None       # the desk phone's number (what transfer routes match)
        self.record = CallRecord(self.direction, time.time())
        self._on_hold_music: asyncio.Task | None = None   # music on hold while the app user holds
        self.held: list[str] = []           # cluster scopes this call is counted in
        self.claim: tuple[str, str] | None = None   # its claim in the cluster (kind, id)

    def stop(self) -> None:
        """End this call now (daemon shutting down)."""
        self._stop.set()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            await self._cleanup()

    async def _run(self) -> None:
        raise NotImplementedError

    async def _bridge_media(self, sip: SipCall, first: bool = True) -> None:
        """Audio both ways, DTMF (app signalling <-> RFC 4733 telephone-events), and transfers."""
        self.sip_to_app.connect(sip.media)
        await cancel_quietly(self._pump)
        if self.sip_to_app.relaying:
            self.app.relay_peer_packets(self.app_to_sip.relay_to(sip.media, self.app.payload_types))
        else:
            self._pump = asyncio.ensure_future(self.app_to_sip.run(sip.media))
        mode = "relay" if self.sip_to_app.relaying and not self.sip_to_app.recoding else "transcode"
        if first:
            self.bridge.metrics.media.labels(mode).inc()
        log.info("%s: media %s, app leg %s, SIP leg %s%s, RTP %s <-> %s", self.name, mode, self.app.codec,
                 sip.media.codec, " SRTP" if sip.media.srtp else "", hostport(*sip.media.local_address),
                 sip.media.remote_address)
        self.events.on_dtmf = lambda digits: self._dtmf_from_app(sip, digits)
        sip.media.on_dtmf = self._dtmf_from_phone
        sip.on_refer = self._refer
        self.events.on_hold = self._hold_from_app
        sip.on_hold = self._hold_from_phone
        if sip.call_id not in self.record.sip_call_ids:
            self.record.sip_call_ids.append(sip.call_id)
        if self.app_to_sip.held:              # a new SIP leg (a transfer) while the app user holds
            self.bridge.spawn(self._hold_phone(sip, True), f"{self.name}: hold")

    # hold ----------------------------------------------------------------------------------

    def _hold_from_app(self, held: bool) -> None:
        """The app user holds or resumes: the phone gets a re-INVITE (sendonly, then sendrecv) and,
        while held, music on hold or silence in place of the app's audio."""
        self.app_to_sip.held = held
        if held and (self._on_hold_music is None or self._on_hold_music.done()):
            self._on_hold_music = asyncio.ensure_future(self.app_to_sip.play_held(self.bridge.music_on_hold))
        if self.sip is not None:
            self.bridge.spawn(self._hold_phone(self.sip, held), f"{self.name}: hold")

    async def _hold_phone(self, sip: SipCall, held: bool) -> None:
        with contextlib.suppress(CallFailed):   # desk -> app: the app accepts just before the 200 OK
            await asyncio.shield(sip.answered)
        if await sip.hold(held):
            log.info("%s: the app user %s the call: the phone %s", self.name, "holds" if held else "resumes",
                     "is on hold" if held else "is back")
        elif not sip.ended.done():
            log.warning("%s: the phone did not accept the %s", self.name, "hold" if held else "resume")

    def _hold_from_phone(self, held: bool) -> None:
        """The desk phone holds (re-INVITE sendonly, inactive or 0.0.0.0) or resumes: the app user
        is told (evt_peer_hold, evt_peer_unhold) and hears whatever the phone sends (its music)."""
        if self.app.state != "connected":
            return
        log.info("%s: the phone %s the call", self.name, "holds" if held else "resumes")
        self.bridge.spawn(self.app.hold(send_audio=True) if held else self.app.unhold(),
                          f"{self.name}: hold to the app")

    # transfer ------------------------------------------------------------------------------

    def _refer(self, referral: Referral) -> bool:
        """The desk phone transfers the app party (REFER): allowed only where a transfer route says."""
        decision = self.bridge.router.route_transfer(referral.user, self.phone)
        if isinstance(decision, Denied):
            log.warning("%s: transfer by %s to %s %s", self.name, self.phone, safe(referral.target), decision)
            return False
        log.info("%s: %s transfers the call: %s%s", self.name, self.phone, decision,
                 " (attended: replaces a call)" if referral.replaces else "")
        self.bridge.spawn(self._transfer(referral, decision), f"{self.name}: transfer")
        return True

    async def _transfer(self, referral: Referral, decision: TransferDecision) -> None:
        """Call the transfer target; when it answers, it takes the old leg's place."""
        headers = [("Referred-By", referral.referred_by)] if referral.referred_by else []
        if referral.replaces is not None:
            headers.append(("Replaces", str(referral.replaces)))
        caller, display = self.identity
        new = await self.bridge.ua.call(referral.target, caller=caller, display_name=display,
                                        ring_timeout=decision.route.ring_timeout, headers=headers,
                                        prefer=self.sip.codec if self.sip is not None else None)
        await _first(new.answered, new.ended, self.events.ended.wait(), self._stop.wait())
        if new.state != "answered":
            if not new.ended.done():
                await new.hangup()
            end = new.ended.result() if new.ended.done() else None
            log.info("%s: the transfer to %s failed (%s); the call stays", self.name, decision.target, end)
            await referral.notify(end.code if end is not None and end.code >= 300 else 487)
            return
        await referral.notify(200)
        old = self.sip
        await self._swap(new)
        log.info("%s: transferred to %s", self.name, decision.target)
        await self._retire(old)

    async def take_over(self, new: IncomingCall) -> None:
        """An INVITE with Replaces named our SIP leg (RFC 3891): the new call takes its place."""
        old = self.sip
        try:
            await new.answer()
        except CallFailed:
            log.info("%s: the replacing call %s was not confirmed; the call stays", self.name, new.call_id)
            return
        await self._swap(new)
        log.info("%s: SIP leg replaced by %s", self.name, new.call_id)
        if old is not None:
            await old.hangup()

    async def _swap(self, new: SipCall) -> None:
        self.sip = new
        await self._bridge_media(new, first=False)
        self._swapped.set()

    @staticmethod
    async def _retire(old: SipCall | None) -> None:
        """The transferor hangs up after the final NOTIFY (RFC 5589); if it does not, we do."""
        if old is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(old.ended), 5)
        if not old.ended.done():
            await old.hangup()

    def _dtmf_from_app(self, sip: SipCall, digits: str) -> None:
        self.bridge.spawn(sip.send_dtmf(digits), f"{self.name}: DTMF to the phone")

    def _dtmf_from_phone(self, digit: str) -> None:
        if digit in "0123456789*#ABCD" and self.app.state == "connected":
            self.bridge.spawn(self.app.send_dtmf(digit), f"{self.name}: DTMF to the app")

    async def _talk(self) -> None:
        """Both legs up: wait for either side (or a stop) to end it, then end the other. A
        transfer may swap the SIP leg meanwhile: the app call goes on with the new one."""
        while True:
            sip = self.sip
            assert sip is not None
            self._swapped.clear()
            await _first(sip.ended, self.events.ended.wait(), self._stop.wait(), self._swapped.wait())
            if self.sip is sip or self.events.ended.is_set() or self._stop.is_set():
                break
        if self.events.ended.is_set():
            log.info("%s: app side ended (%s): hanging up the phone", self.name, self.events.param)
            await sip.hangup()
            lost = self.events.param is not None and self.events.param.reason is R.NETWORK_UNSTABLE
            self.result = "network_unstable" if lost else "normal"
        elif sip.ended.done():
            end = sip.ended.result()
            log.info("%s: phone side ended (%s): ending the app call", self.name, end)
            await self.app.end_call(reason=reasons.from_sip(end.result.value))
            self.result = "normal"
        else:                                 # the bridge is shutting down
            await asyncio.gather(sip.hangup(), self.app.end_call(reason=R.SERVICE_MAINTENANCE),
                                 return_exceptions=True)
            self.result = "stopped"

    async def _cleanup(self) -> None:
        await cancel_quietly(self._pump)
        self.app_to_sip.held = False
        await cancel_quietly(self._on_hold_music)
        self.sip_to_app.stop()
        if self.route is not None:
            self.route.calls.release()
            self.route = None
        await self.bridge.give_back(self)
        if self.app.state not in ("idle", "disconnected"):
            await self.app.end_call()
        if self.sip is not None and not self.sip.ended.done():
            await self.sip.hangup()
        self.events.on_dtmf = self.events.on_hold = None   # freed when it ends, not by the collector
        self._write_record()

    def _write_record(self) -> None:
        """The call record (`callrecord`): both legs as they ended."""
        record, sip = self.record, self.sip
        record.end = time.time()
        record.sid, record.result = self.app.sid, self.result
        record.app_codec, record.app_end, record.app_stats = self.app.codec, self.app.disconnected, self.app.stats
        if sip is not None:
            record.sip_codec, record.sip_stats = sip.codec, sip.media.stats
            if sip.call_id not in record.sip_call_ids:
                record.sip_call_ids.append(sip.call_id)
            if sip.ended.done():
                end = sip.ended.result()
                record.sip_end = SipEnd(end.result.value, end.code, end.by)
        try:
            self.bridge.records.write(record)
        except Exception:                       # a record must never take a call down with it
            log.exception("%s: the call record could not be written", self.name)

    @property
    def name(self) -> str:
        return f"{self.direction} {self.app.sid or '-'}"


class AppToDeskCall(BridgedCall):
    """An app user calls a desk phone."""

    direction = "app_to_sip"

    def __init__(self, bridge: Bridge, push: Notification) -> None:
        super().__init__(bridge)
        self.push = push
        self.received = time.monotonic()

    async def _run(self) -> None:
        p, push, bridge = self.push.param, self.push, self.bridge
        self.record.app_caller = f"{p.caller_user}@{p.caller_service}"
        self.record.app_callee = f"{push.app_callee_uid}@{push.app_callee_sid}"
        decision = bridge.router.route_to_sip(p.caller_service, p.caller_user, push.app_callee_sid,
                                              push.app_callee_uid)
        try:
            await self.app.verify_call(VerifyCallParams(
                my_id=push.app_callee_uid, my_service_id=push.app_callee_sid, cc_param=push.cc_param,
                delegate=self.events, audio=self.sip_to_app, peer_audio=self.app_to_sip, early_media=True,
                codecs=bridge.cfg.webrtc.codecs))
        except StartFailError as exc:
            log.warning("call %s: cannot verify: %s", p.sid, exc)
            return
        if self.app.state != "verified":
            log.info("call %s: not verified: %s", p.sid, self.app.disconnected)
            self.result = "not_verified"
            return
        if isinstance(decision, Denied):
            log.warning("call %s %s@%s -> %s@%s %s", p.sid, p.caller_user, p.caller_service,
                        push.app_callee_uid, push.app_callee_sid, decision)
            self.result = "no_route"
            await self.app.end_call(reason=R.SERVICE_INVALID_ID)
            return
        refused = await bridge.count_on(self, decision.route, f"call {p.sid}")
        if refused is not None:
            self.result = refused
            await self.app.end_call(reason=R.SERVICE_BUSY if refused == "route_limit" else R.SERVICE_INTERNAL_ERROR)
            return
        self.identity = (decision.caller_id, decision.display_name)
        self.record.route, self.record.sip_from = decision.route.name, decision.caller_id
        self.sip_to_app.ringback = lambda rate: bridge.ringbacks.get(
            decision.route.ringback or bridge.cfg.bridge.ringback, rate)   # type: ignore[union-attr]
        log.info("call %s: %s", p.sid, decision)
        for n, target in enumerate(decision.targets):
            sip = await self._ring(target, decision, first=n == 0)
            if sip is None:
                return                       # the app side ended, or we stop
            if sip.state == "answered":
                break
            end = sip.ended.result()
            if end.result in HUNT_ON and n + 1 < len(decision.targets):
                log.info("call %s: %s gave %s; trying %s", p.sid, target, end, decision.targets[n + 1])
                continue
            self.result = end.result.value
            await self.app.end_call(reason=reasons.from_sip(end.result.value))
            return
        assert self.sip is not None
        await self._bridge_media(self.sip)
        self.record.answer = time.time()
        answered = time.monotonic()
        try:
            await self.app.accept_call()
        except RuntimeError:
            log.info("call %s: app side gone before accept", p.sid)
            self.result = "app_gone"
            return
        self.bridge.metrics.setup_seconds.labels("answer_to_connected").observe(time.monotonic() - answered)
        await self._talk()

    async def _ring(self, target: str, decision, first: bool) -> SipCall | None:
        """Ring one target; returns the call (answered or ended), None if the app side ended."""
        ua = self.bridge.ua
        invited = time.monotonic()
        self.phone = target
        if first:
            self.bridge.metrics.setup_seconds.labels("notification_to_invite").observe(invited - self.received)
        sip = self.sip = await ua.call(target, caller=decision.caller_id, display_name=decision.display_name,
                                       ring_timeout=decision.ring_timeout, prefer=self.app.codec)
        self.record.sip_to = target
        self.record.sip_call_ids.append(sip.call_id)

        def ringing(early: bool) -> None:
            if early:
                self.sip_to_app.connect(sip.media)
            else:
                self.sip_to_app.play_ringback()
        sip.on_ringing = ringing
        await _first(sip.answered, sip.ended, self.events.ended.wait(), self._stop.wait())
        if sip.state == "answered":
            self.bridge.metrics.setup_seconds.labels("invite_to_answer").observe(time.monotonic() - invited)
            return sip
        if sip.ended.done():
            return sip
        self.result = "app_ended" if self.events.ended.is_set() else "stopped"
        await sip.hangup()
        return None


class DeskToAppCall(BridgedCall):
    """A desk phone calls an app user."""

    direction = "sip_to_app"

    def __init__(self, bridge: Bridge, sip: IncomingCall) -> None:
        super().__init__(bridge)
        self.sip = sip
        self.incoming = sip

    async def _run(self) -> None:
        sip, bridge = self.incoming, self.bridge
        self.record.sip_from, self.record.sip_to = sip.caller.number, sip.dialed
        self.record.sip_call_ids.append(sip.call_id)
        decision = bridge.router.route_to_app(sip.dialed, sip.caller.number, sip.caller.display_name)
        if isinstance(decision, Denied):
            log.warning("SIP call %s from %s to %s %s", sip.call_id, sip.caller.number, sip.dialed, decision)
            self.result = "no_route"
            await sip.reject(404)
            return
        refused = await bridge.count_on(self, decision.route, f"SIP call {sip.call_id}")
        if refused is not None:
            self.result = refused
            if refused == "cluster_unavailable":
                await sip.reject(503, "Cluster State Unavailable", headers=[("Retry-After", "5")])
            else:
                await sip.reject(503)             # the limit is the cluster's: no other node may take it
            return
        self.record.route = decision.route.name
        self.record.app_caller = f"{decision.caller_user}@{decision.caller_service}"
        self.record.app_callee = f"{decision.user}@{decision.service}"
        self.identity = (decision.user, f"{decision.user} (app)")
        self.phone = sip.caller.number
        log.info("SIP call %s from %s to %s: %s", sip.call_id, sip.caller.number, sip.dialed, decision)
        await sip.ringing()
        try:
            await self.app.make_call(MakeCallParams(
                my_id=decision.caller_user, my_service_id=decision.caller_service, peer_id=decision.user,
                peer_service_id=decision.service,
                access_token=bridge.token_for(decision.caller_service, decision.caller_user),
                delegate=self.events, audio=self.sip_to_app, peer_audio=self.app_to_sip,
                codecs=codecs.app_leg_order(bridge.cfg.webrtc.codecs, sip.chosen[0] if sip.chosen else None)))
        except StartFailError as exc:
            log.warning("SIP call %s: app call refused locally: %s", sip.call_id, exc)
            await sip.reject(500)
            return
        await _first(self.events.connected.wait(), self.events.ended.wait(), sip.ended, self._stop.wait())
        if not self.events.connected.is_set():
            if sip.ended.done():
                self.result = "cancelled"
                await self.app.end_call()
            elif self.events.ended.is_set():
                assert self.events.param is not None
                status = reasons.to_sip_status(self.events.param.reason)
                self.result = self.events.param.reason.name.lower()
                await sip.reject(status)
            else:
                self.result = "stopped"
                await sip.reject(503)
            return
        if sip.chosen is not None:
            await self._bridge_media(sip)
        try:
            await sip.answer()
        except CallFailed:
            self.result = "no_ack"                 # the PBX never confirmed: end the app side too
            await self.app.end_call(reason=R.NETWORK_UNSTABLE)
            return
        if sip.chosen is None:                     # delayed offer: the codec is known from the ACK
            await self._bridge_media(sip)
        self.record.answer = time.time()
        await self._talk()
