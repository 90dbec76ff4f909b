"""app -> desk phone: a notification, its route, verifyCall, the INVITE (fallback targets in order),
ringback or early media, then acceptCall."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING


from .. import ccparam, reasons
from ..reasons import DisconnectReason as R
from ..routing import Denied
from ..sdk import StartFailError, VerifyCallParams
from ..sip import SipCall, SipResult
from .call import BridgedCall, wait_first

if TYPE_CHECKING:
    from .bridge import Bridge

log = logging.getLogger("bridge.call")

# SIP results after which the next fallback target is tried
HUNT_ON = (SipResult.BUSY, SipResult.NO_ANSWER, SipResult.NOT_FOUND, SipResult.UNAVAILABLE)


@dataclass(frozen=True)
class Notification:
    """A push for a desk-phone user: the seed's fields."""

    cc_param: str
    app_callee_uid: str
    app_callee_sid: str
    app_call_type: str
    param: ccparam.CcParam


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
        await wait_first(sip.answered, sip.ended, self.events.ended.wait(), self._stop.wait())
        if sip.state == "answered":
            self.bridge.metrics.setup_seconds.labels("invite_to_answer").observe(time.monotonic() - invited)
            return sip
        if sip.ended.done():
            return sip
        self.result = "app_ended" if self.events.ended.is_set() else "stopped"
        await sip.hangup()
        return None
