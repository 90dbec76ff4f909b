"""A call the PBX sends the bridge: dialed number, caller, and ringing, answer or reject.

The INVITE server transaction stays in Proceeding while the app user rings, however long that
takes, so a late CANCEL is matched and answered 487. The 200 OK is resent until its ACK; no
ACK within 64*T1 ends the call with BYE. A BYE before the answer (an early-dialog BYE) gets 200
and the INVITE gets 487 (RFC 3261 15.1.2). An INVITE without SDP (delayed offer) is answered
with our offer, and the ACK carries the answer.

Reliable provisional responses (RFC 3262): when the INVITE requires 100rel (or supports it and
`sip.reliable_provisionals: required`), the 180 carries `Require: 100rel` and an `RSeq`, and is
resent (T1, doubling) until its PRACK; no PRACK within 64*T1 ends the call with 500.

UPDATE in the early dialog (RFC 3311): without SDP (a session refresh) it gets 200; with an
offer it gets 500 and a Retry-After of 0-10 s (5.2), since the bridge answers the INVITE's offer
(or makes its own) only in the 200: the PBX may offer again once the call is answered.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from ..rtp import RtpEndpoint
from ..srtp import SrtpKey
from . import sdp
from .call import SipCall
from .dialog import Dialog
from .message import Party, SipMessage, new_tag
from .result import CallEnd, CallFailed, SipResult, result_of
from .servertransaction import InviteServerTransaction, ServerTransaction

if TYPE_CHECKING:
    from .useragent import UserAgent

log = logging.getLogger("bridge.sip")


class IncomingCall(SipCall):
    direction = "incoming"

    def __init__(self, ua: "UserAgent", media: RtpEndpoint, invite: SipMessage, tx: InviteServerTransaction,
                 offer: sdp.Audio | None, codec: tuple[str, int] | None) -> None:
        super().__init__(ua, media, invite.call_id)
        self.invite = invite
        self.tx = tx
        self.offer = offer
        self.chosen = codec
        if offer is not None and codec is not None:      # the media path is set up before the answer
            media.set_codec(codec[0], codec[1], offer.telephone_event)
            if offer.crypto is not None:
                media.set_srtp(SrtpKey(offer.crypto.suite, self._key(offer.crypto.suite)), offer.crypto.srtp_key)
        self.signalling_peer = tx.addr[0]
        self.secure = invite.request_uri.scheme == "sips"
        self.caller = Party.of(invite.from_)
        self.dialed = invite.to.uri.user or invite.request_uri.user or ""
        self.dialog = Dialog(invite.call_id, new_tag(), invite.from_tag, invite.to.without_params(),
                             invite.from_.without_params(), invite.contact_uri or invite.from_.uri_text,
                             invite.all("Record-Route"), 0, remote_seq=invite.cseq[0])
        wanted = ua.cfg.reliable_provisionals
        self.reliable = wanted != "off" and ("100rel" in invite.tokens("Require") or (
            wanted == "required" and "100rel" in invite.tokens("Supported")))
        self._rseq = random.randint(1, 2**30)
        self._pracked: asyncio.Event | None = None

    def _respond(self, code: int, **kw) -> None:
        assert self.dialog is not None
        self.ua.reply(self.tx, code, to_tag=self.dialog.local_tag, **kw)

    async def ringing(self) -> None:
        if self.state == "new":
            self.state = "ringing"
            headers = self.ua.contact_headers(self.secure)
            if self.reliable:
                self._rseq += 1
                headers += [("Require", "100rel"), ("RSeq", str(self._rseq))]
                self._pracked = asyncio.Event()
            self._respond(180, headers=headers)
            self.ua.journal_ringing(self)
            if self.reliable and self.tx.last is not None:
                self.ua.spawn(self._until_pracked(self.tx.last, self._pracked))

    async def _until_pracked(self, data: bytes, pracked: asyncio.Event) -> None:
        """Resend a reliable provisional until its PRACK (RFC 3262 3); none in 64*T1: 500."""
        interval, waited = self.ua.timers.t1, 0.0
        while waited < self.ua.timers.long:
            step = min(interval, self.ua.timers.long - waited)
            try:
                await asyncio.wait_for(pracked.wait(), step)
                return
            except asyncio.TimeoutError:
                waited += step
            if self.state != "ringing":
                return
            self.ua.transport.send(data, self.tx.addr)
            interval *= 2
        if self.state == "ringing":
            log.warning("call %s: no PRACK for our reliable 180; refusing the call", self.call_id)
            await self.reject(500)

    def _prack(self, msg: SipMessage, tx) -> None:
        rack = (msg.first("RAck") or "").split()
        ours = [str(self._rseq), str(self.invite.cseq[0]), "INVITE"]
        if self._pracked is None or [p.upper() if i == 2 else p for i, p in enumerate(rack)] != ours:
            self.ua.reply(tx, 481, reason="No Such Reliable Response")
            return
        self._pracked.set()
        self.ua.reply(tx, 200)

    async def answer(self) -> None:
        """200 OK with our SDP; returns when the caller's ACK arrives (raises CallFailed if not)."""
        if self.state not in ("new", "ringing"):
            raise CallFailed(self.ended.result() if self.ended.done() else CallEnd(SipResult.FAILED, 0, "local"))
        if self.offer is not None and self.chosen is not None:
            self._apply_remote_sdp(self.offer, self.chosen)
            body = self._local_sdp([self.chosen], self.offer.telephone_event, self._answer_direction(self.offer),
                                   answer_to=self.offer)
        else:                                         # delayed offer: we offer, the ACK answers
            codecs = sdp.offer_codecs(self.ua.cfg.codecs)
            self._offered_dtmf_pt = 101
            self.media.set_codec(codecs[0][0], codecs[0][1], 101)
            self.codec = codecs[0][0]
            self._awaiting_answer = True
            body = self._local_sdp(codecs, 101)
        self.state = "answered"              # (a reliable 180 stops being resent)
        headers = self.ua.contact_headers(self.secure) + self.start_session_timer(self.invite, "uas")
        self._respond(200, body=body, headers=headers)
        self.ua.journal_up(self)
        await asyncio.wait([self.tx.confirmed, self.ended], return_when=asyncio.FIRST_COMPLETED)
        acked = self.tx.confirmed.done() and self.tx.confirmed.result()
        if not acked or self.ended.done():
            if not self.ended.done():
                log.warning("call %s: no ACK for our 200 OK; hanging up", self.call_id)
                await self._bye(CallEnd(SipResult.FAILED, 0, "remote"))
            raise CallFailed(self.ended.result())
        log.info("call %s: answered (%s)", self.call_id, self.codec)
        if not self.answered.done():
            self.answered.set_result(None)

    def on_ack(self, msg: SipMessage) -> None:
        self.tx.ack()
        if self._awaiting_answer and self.offer is None:
            self._awaiting_answer = False
            try:
                answer, codec = self.usable_sdp(msg.body_bytes)
            except sdp.SdpError as exc:
                log.warning("call %s: the ACK's answer is unusable (%s): hanging up", self.call_id, exc)
                self.ua.spawn(self._bye(CallEnd(SipResult.FAILED, 0, "local")))
                return
            self._apply_remote_sdp(answer, codec)
            return
        super().on_ack(msg)

    async def reject(self, code: int = 486, reason: str | None = None,
                     headers: list[tuple[str, str]] | None = None) -> None:
        if self.state in ("new", "ringing"):
            self._respond(code, reason=reason, headers=headers)
            self._finish(CallEnd(result_of(code), code, "local"))

    async def hangup(self) -> None:
        if self.state == "answered":
            await self._bye()
        else:
            await self.reject(480)

    def _reoffer(self, msg: SipMessage, tx: ServerTransaction) -> None:
        if self.state in ("new", "ringing") and msg.body_bytes:       # an offer before ours is answered
            self.ua.reply(tx, 500, reason="Offer Pending", headers=[("Retry-After", str(random.randint(0, 10)))])
            return
        super()._reoffer(msg, tx)

    def remote_cancel(self) -> None:
        if self.state in ("new", "ringing"):
            self._respond(487)
            self._finish(CallEnd(SipResult.CANCELLED, 487, "remote"))

    def _remote_bye(self) -> None:
        if self.state in ("new", "ringing"):            # BYE in the early dialog (15.1.2)
            self._respond(487)
            self._finish(CallEnd(SipResult.CANCELLED, 0, "remote"))
            return
        super()._remote_bye()
