"""A bridged call's common part: its two legs, media both ways, hold, DTMF, transfers, its record."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Callable


from .. import reasons
from ..callrecord import CallRecord, SipEnd
from ..media import AppToSip, SipToApp, cancel_quietly
from ..reasons import Disconnected, DisconnectReason as R
from ..routing import Denied, Route, TransferDecision
from ..logsafe import safe
from ..sdk import Call, CallDelegate
from ..sip import CallFailed, IncomingCall, Referral, SipCall
from ..sip.uri import hostport


if TYPE_CHECKING:
    from .bridge import Bridge

log = logging.getLogger("bridge.call")


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


async def wait_first(*aws) -> None:
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
        await wait_first(new.answered, new.ended, self.events.ended.wait(), self._stop.wait())
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
            await wait_first(sip.ended, self.events.ended.wait(), self._stop.wait(), self._swapped.wait())
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
