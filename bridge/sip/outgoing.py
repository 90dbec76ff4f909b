"""A call the bridge places: INVITE through the PBX, ringing, answer or a result.

- 401/407 are answered once with digest credentials; the ACK of a 2xx and the CANCEL carry the
  INVITE's credentials (RFC 3261 13.2.2.4, 22).
- A 422 (session interval too small) is retried once with the peer's Min-SE (RFC 4028).
- Ring timeout and hang-up before answer CANCEL only after a provisional response (9.1); a
  CANCEL that gets no final response within 64*T1 ends the call anyway. Timer B ends a call
  only while nothing was heard from the far end (17.1.1.2): a phone may ring for minutes.
- A 2xx that crosses our CANCEL is ACKed and ended with BYE, and the call ends for the reason we
  cancelled (a ring timeout stays NO_ANSWER, so fallback targets are still tried).
- A second 2xx from another fork is ACKed and sent a BYE (13.2.2.4); retransmitted 2xx are
  ACKed again until the transaction ends.
- No answer at all from the proxy's address: the next resolved address is tried (RFC 3263 4.3).
- A reliable provisional response (`Require: 100rel`, RFC 3262) is acknowledged with PRACK in
  its early dialog, once per RSeq; `sip.reliable_provisionals: required` requires it of the phone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from ..logsafe import safe
from ..rtp import RtpEndpoint
from . import sdp
from .call import SipCall
from .clienttransaction import InviteClientTransaction
from .dialog import Dialog
from .message import Request, SipMessage, new_call_id, new_tag
from .resolver import ResolveError
from .result import CallEnd, SipResult, result_of
from .uri import NameAddr, SipParseError, SipUri, quote

if TYPE_CHECKING:
    from .useragent import UserAgent

log = logging.getLogger("bridge.sip")

DTMF_PT = 101


class OutgoingCall(SipCall):
    direction = "outgoing"

    def __init__(self, ua: "UserAgent", media: RtpEndpoint, target: str, caller: str,
                 display_name: str | None, ring_timeout: float,
                 headers: list[tuple[str, str]] | None = None, prefer: str | None = None) -> None:
        super().__init__(ua, media, new_call_id(ua.cfg.contact_host))
        self.extra_headers = headers or []         # Replaces, Referred-By (a transfer)
        self.prefer = prefer        # a codec to offer first (the app leg's, so that packets relay)
        self.target = target
        self.caller = caller
        self.display_name = display_name
        self.ring_timeout = ring_timeout
        self._invite: Request | None = None
        self._tx: InviteClientTransaction | None = None
        self._cancel_reason: SipResult | None = None
        self._cancel_sent = False
        self._cancel_deadline: asyncio.TimerHandle | None = None
        self._acks: dict[str, tuple[bytes, tuple[str, int]]] = {}    # remote tag -> our ACK, where
        self._local_uri = ""
        self._rseq = 0                     # the last reliable provisional PRACKed
        self._seq_floor = 0                # CSeq numbers PRACKs used (a later BYE goes above)

    def request_uri(self) -> str:
        if self.target.startswith(("sip:", "sips:", "tel:")):
            return self.target
        return f"sip:{self.target}@{self.ua.domain}"

    async def run(self) -> None:
        ua, cfg = self.ua, self.ua.cfg
        uri = self.request_uri()
        try:
            self.secure = SipUri.parse(uri).scheme == "sips"
        except SipParseError as exc:
            log.warning("call %s: bad target %s: %s", self.call_id, safe(uri), exc)
            self._finish(CallEnd(SipResult.NOT_FOUND, 0, "local"))
            return
        if self.secure and cfg.transport != "tls":
            log.warning("call %s: the target %s is a sips: URI, which needs sip.transport: tls", self.call_id, safe(uri))
            self._finish(CallEnd(SipResult.FAILED, 0, "local"))
            return
        # The From user is our account (PBXs authenticate it); the caller id is shown as the
        # display name and asserted in P-Asserted-Identity (RFC 3325).
        shown = self.display_name or self.caller or ""
        name = f"{quote(shown)} " if shown else ""
        local_uri = self._local_uri = f"{name}<sip:{cfg.username}@{ua.domain}>"
        identity = [("P-Asserted-Identity", f"{name}<sip:{self.caller}@{ua.domain}>")] \
            if self.caller and self.caller != cfg.username else []
        codecs = sdp.offer_codecs(cfg.codecs, self.prefer)
        self._offered_dtmf_pt = DTMF_PT
        extra = identity + self.extra_headers + ua.timer_headers()
        if cfg.reliable_provisionals == "required":
            extra.append(("Require", "100rel"))
        invite = Request("INVITE", uri, ua.via(), f"{local_uri};tag={new_tag()}", f"<{uri}>", self.call_id, 1,
                         headers=ua.contact_headers(self.secure) + extra, body=self._local_sdp(codecs, DTMF_PT))
        timer = asyncio.get_running_loop().call_later(self.ring_timeout, self._ring_timeout)
        retried: set[int] = set()
        try:
            try:
                destinations = await ua.proxy_addresses()
            except ResolveError as exc:
                log.warning("call %s: %s", self.call_id, exc)
                self._finish(CallEnd(SipResult.UNAVAILABLE, 503, "local"))
                return
            while True:
                reply = await self._try(invite, destinations)
                if reply is None:
                    self._finish(CallEnd(self._cancel_reason, 0, "local") if self._cancel_reason
                                 else CallEnd(SipResult.UNAVAILABLE, 408, "remote"))
                    return
                code = reply.code
                if code in (401, 407) and code not in retried and self._cancel_reason is None:
                    retried.add(code)
                    creds = ua.credentials(reply, "INVITE", uri)
                    if not creds:
                        self._finish(CallEnd(SipResult.AUTH_FAILED, code, "remote"))
                        return
                    invite = self._again(invite, [h for h in extra] + creds)
                    continue
                if code == 422 and 422 not in retried and (reply.first("Min-SE") or "").strip().isdigit():
                    retried.add(422)
                    extra = identity + self.extra_headers + ua.timer_headers(int((reply.first("Min-SE") or "").strip()))
                    invite = self._again(invite, extra + invite.credentials())
                    continue
                if 200 <= code < 300:
                    await self._confirm(reply, local_uri)
                    if self._tx is not None and self._invite is not None:
                        ua.spawn(_absorb_2xx(ua, self._tx, self._invite, self._acks, local_uri))
                    return
                result = result_of(code)
                if code == 487 and self._cancel_reason is not None:
                    result = self._cancel_reason
                self._finish(CallEnd(result, code, "local" if result in (
                    SipResult.NO_ANSWER, SipResult.CANCELLED) else "remote"))
                return
        finally:
            timer.cancel()
            if self._cancel_deadline is not None:
                self._cancel_deadline.cancel()

    def _again(self, invite: Request, headers: list[tuple[str, str]]) -> Request:
        """The INVITE again with a new branch and CSeq (after 401/407/422)."""
        return Request("INVITE", invite.uri, self.ua.via(), invite.from_, invite.to, self.call_id,
                       invite.cseq + 1, invite.routes, self.ua.contact_headers(self.secure) + headers, invite.body)

    async def _try(self, invite: Request, destinations: list[tuple[str, int]]) -> SipMessage | None:
        """Send the INVITE to each address in turn until one answers at all; its final response."""
        for n, dest in enumerate(destinations):
            if n:
                invite = Request("INVITE", invite.uri, self.ua.via(), invite.from_, invite.to, self.call_id,
                                 invite.cseq, invite.routes, invite.headers, invite.body)
            self._invite = invite
            self.signalling_peer = dest[0]
            self._tx = tx = self.ua.layer.invite(invite, dest)
            self.ua.journal_invite(self, invite, dest)
            reply = await self._await_final(tx)
            if reply is not None or tx.state != "terminated" or self._cancel_reason is not None:
                return reply
            if tx.provisional or n + 1 == len(destinations):
                return None
            log.warning("call %s: no answer from %s:%d; trying %s:%d", self.call_id, *dest, *destinations[n + 1])
            self.ua.proxy_failed()
        return None

    async def _await_final(self, tx: InviteClientTransaction) -> SipMessage | None:
        heard = False
        while True:
            reply = await tx.next()
            if reply is None or reply.code >= 200:
                return reply
            heard = True
            if reply.code > 100:
                self._provisional(reply)
            if self._cancel_reason is not None and heard:
                self._send_cancel()

    def _provisional(self, reply: SipMessage) -> None:
        rseq = (reply.first("RSeq") or "").strip()
        if "100rel" in reply.tokens("Require") and rseq.isdigit() and reply.to_tag:
            if int(rseq) <= self._rseq:
                return                                  # a retransmission: our PRACK is under way
            self._rseq = int(rseq)
            self.ua.spawn(self._prack(reply, int(rseq)))
        early = False
        if reply.body_bytes and reply.to_tag:
            try:
                audio, codec = self.usable_sdp(reply.body_bytes)
                self._apply_remote_sdp(audio, codec)
                early = True
            except sdp.SdpError as exc:
                log.info("call %s: early media SDP unusable: %s", self.call_id, safe(exc))
        if self.state == "new" or early:
            self.state = "ringing"
            log.info("call %s: ringing (%d%s)", self.call_id, reply.code, ", early media" if early else "")
            if self.on_ringing is not None:
                self.on_ringing(early)

    async def _prack(self, reply: SipMessage, rseq: int) -> None:
        """PRACK a reliable provisional response, in the early dialog it set up (RFC 3262 4)."""
        assert self._invite is not None
        try:
            early = self._dialog_for(reply, self._local_uri)
        except SipParseError as exc:
            log.info("call %s: cannot PRACK a malformed %d: %s", self.call_id, reply.code, safe(exc))
            return
        early.local_seq = max(early.local_seq, self._seq_floor)
        prack = early.request("PRACK", self.ua.via(), [("RAck", f"{rseq} {self._invite.cseq} INVITE")]
                              + early.credentials)
        self._seq_floor = prack.cseq
        tx = await self.ua.send_in_dialog(early, prack)
        reply = await tx.next() if tx is not None else None
        if reply is None or reply.code >= 300:
            log.info("call %s: PRACK answered %s", self.call_id, reply.code if reply is not None else "nothing")

    def _dialog_for(self, reply: SipMessage, local_uri: str) -> Dialog:
        assert self._invite is not None
        return _dialog(self._invite, reply, local_uri)

    async def _ack(self, dialog: Dialog) -> bool:
        """ACK a 2xx of `dialog`; False if its next hop cannot be reached."""
        assert self._invite is not None
        ack = dialog.request("ACK", self.ua.via(), dialog.credentials, cseq=self._invite.cseq)
        sent = await self.ua.send_ack(dialog, ack)
        if sent is not None:
            self._acks[dialog.remote_tag] = sent
        return sent is not None

    async def _confirm(self, reply: SipMessage, local_uri: str) -> None:
        """2xx: build the dialog, ACK it, start media (or end it at once, for a reason)."""
        try:
            dialog = self._dialog_for(reply, local_uri)
        except SipParseError as exc:
            log.warning("call %s: unusable 2xx (%s)", self.call_id, safe(exc))
            self._finish(CallEnd(SipResult.FAILED, reply.code, "remote"))
            return
        dialog.local_seq = max(dialog.local_seq, self._seq_floor)
        self.dialog = dialog
        self.ua.add_peers(dialog)
        if not await self._ack(dialog):              # nowhere to send the ACK, nor a BYE
            self._finish(CallEnd(SipResult.FAILED, reply.code, "local"))
            return
        self.ua.journal_up(self)
        if self._cancel_reason is not None:       # answered while we were cancelling (9.1)
            log.info("call %s: answered as we cancelled it; hanging up", self.call_id)
            await self._bye(CallEnd(self._cancel_reason, 0, "local"))
            return
        try:
            audio, codec = self.usable_sdp(reply.body_bytes)
        except sdp.SdpError as exc:
            log.warning("call %s: answer SDP unusable (%s); hanging up", self.call_id, safe(exc))
            await self._bye(CallEnd(SipResult.FAILED, 0, "local"))
            return
        self._apply_remote_sdp(audio, codec)
        self.state = "answered"
        log.info("call %s: answered (%s)", self.call_id, self.codec)
        self.start_session_timer(reply, "uac")
        self.answered.set_result(None)

    def _ring_timeout(self) -> None:
        if self.state in ("new", "ringing"):
            log.info("call %s: no answer within %.0f s", self.call_id, self.ring_timeout)
            self.cancel(SipResult.NO_ANSWER)

    def cancel(self, reason: SipResult = SipResult.CANCELLED) -> None:
        """Stop ringing; the call ends with `reason` once the far end confirms (487)."""
        if self.state not in ("new", "ringing") or self._cancel_reason is not None:
            return
        self._cancel_reason = reason
        if self._tx is not None and self._tx.provisional:
            self._send_cancel()
        # no provisional yet: CANCEL goes out when one arrives (RFC 3261 9.1); if none ever
        # comes, Timer B ends the INVITE transaction and the call ends with `reason`.

    def _send_cancel(self) -> None:
        tx, invite = self._tx, self._invite
        if tx is None or invite is None or self._cancel_sent:
            return
        self._cancel_sent = True
        cancel = Request("CANCEL", invite.uri, invite.via, invite.from_, invite.to, invite.call_id,
                         invite.cseq, invite.routes, invite.credentials())
        self.ua.spawn(self._cancel_transaction(cancel, tx.dest))
        # 9.1: no final response within 64*T1 of the CANCEL: the INVITE transaction is over
        self._cancel_deadline = asyncio.get_running_loop().call_later(self.ua.timers.long, self._abandon, tx)

    async def _cancel_transaction(self, cancel: Request, dest: tuple[str, int]) -> None:
        tx = self.ua.layer.request(cancel, dest)
        reply = await tx.next()
        if reply is not None and reply.code in (401, 407) and self._invite is not None:
            creds = self.ua.credentials(reply, "CANCEL", cancel.uri)
            if creds:
                tx.terminate()
                again = Request("CANCEL", cancel.uri, cancel.via, cancel.from_, cancel.to, cancel.call_id,
                                cancel.cseq, cancel.routes, creds)
                await self.ua.layer.request(again, dest).next()

    @staticmethod
    def _abandon(tx: InviteClientTransaction) -> None:
        if tx.state in ("calling", "proceeding"):
            tx.terminate()                  # the call's wait for a final gets None

    async def hangup(self) -> None:
        if self.state == "answered":
            await self._bye()
        elif self.state in ("new", "ringing"):
            self.cancel(SipResult.CANCELLED)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.ended), self.ua.timers.long + 1)


def _dialog(invite: Request, reply: SipMessage, local_uri: str) -> Dialog:
    """The dialog a 2xx to `invite` opens."""
    routes = list(reversed(reply.all("Record-Route")))
    return Dialog(invite.call_id, NameAddr.parse(invite.from_).tag, reply.to_tag, local_uri,
                  reply.to.without_params(), reply.contact_uri or invite.uri, routes, invite.cseq,
                  credentials=invite.credentials())


async def _absorb_2xx(ua: "UserAgent", tx: InviteClientTransaction, invite: Request,
                      acks: dict[str, tuple[bytes, tuple[str, int]]], local_uri: str) -> None:
    """Until the INVITE transaction ends (Timer M, 32 s after the 2xx): re-ACK retransmitted 2xx;
    ACK and BYE other forks. It holds the transaction, the INVITE and the ACKs, never the call:
    a call that ends sooner is freed at once, its app leg and peer connection with it (holding
    it kept every short call's objects alive 32 s, doubling what the collector walks)."""
    while tx.state == "accepted":
        reply = await tx.next()
        if reply is None:
            return
        if reply.to_tag in acks:
            data, dest = acks[reply.to_tag]
            ua.transport.send(data, dest)
            continue
        log.info("call %s: a second fork answered (To-tag %s): ACK and BYE", invite.call_id, safe(reply.to_tag))
        try:
            fork = _dialog(invite, reply, local_uri)
        except SipParseError:
            continue
        sent = await ua.send_ack(fork, fork.request("ACK", ua.via(), fork.credentials, cseq=invite.cseq))
        if sent is not None:
            acks[fork.remote_tag] = sent
        bye = await ua.send_in_dialog(fork, fork.request("BYE", ua.via(), fork.credentials))
        if bye is not None:
            ua.spawn(bye.next())
