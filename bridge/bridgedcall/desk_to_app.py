"""desk phone -> app: an INVITE, its route, 180, makeCall; the app user accepts, then 200 OK."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING


from .. import codecs, reasons
from ..reasons import DisconnectReason as R
from ..routing import Denied
from ..sdk import MakeCallParams, StartFailError
from ..sip import CallFailed, IncomingCall
from .call import BridgedCall, wait_first

if TYPE_CHECKING:
    from .bridge import Bridge

log = logging.getLogger("bridge.call")


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
        await wait_first(self.events.connected.wait(), self.events.ended.wait(), sip.ended, self._stop.wait())
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
