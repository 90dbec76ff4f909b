"""What the peer sends in a call's dialog (a part of `SipCall`): BYE, re-INVITE and UPDATE (hold,
resume, a moved peer, session refresh; glare gets 491), INFO DTMF, REFER, PRACK, OPTIONS, and
the ACK for our 2xx (with the answer to an offer of ours in it)."""

from __future__ import annotations

import logging

from ..logsafe import safe
from . import dtmf, sdp
from .message import METHODS, SipMessage
from .result import CallEnd, SipResult
from .servertransaction import ServerTransaction
from .transfer import Referral
from .uri import SipParseError

log = logging.getLogger("bridge.sip")


class InDialog:
    """The peer's requests in the dialog, each answered (a part of `SipCall`)."""

    def on_request(self, msg: SipMessage, tx: ServerTransaction) -> None:
        """A request inside this call's dialog (the user agent checked its source and tags)."""
        assert self.dialog is not None
        ua = self.ua
        if not self.dialog.accept_remote_seq(msg.cseq[0], msg.method):
            ua.reply(tx, 500, reason="Out Of Order CSeq")
            return
        method = msg.method
        if method == "BYE":
            ua.reply(tx, 200)
            self._remote_bye()
        elif method in ("INVITE", "UPDATE"):
            self._reoffer(msg, tx)
        elif method == "INFO":
            self._info(msg, tx)
        elif method == "REFER":
            self._refer(msg, tx)
        elif method == "PRACK":
            self._prack(msg, tx)
        elif method == "OPTIONS":
            ua.reply(tx, 200, headers=ua.capabilities())
        else:
            ua.reply(tx, 405 if method in METHODS else 501, headers=ua.capabilities())

    def _remote_bye(self) -> None:
        self._finish(CallEnd(SipResult.NORMAL, 0, "remote"))

    def on_ack(self, msg: SipMessage) -> None:
        """An ACK for one of our 2xx responses (a new transaction, matched by the dialog)."""
        if self._awaiting_answer and msg.body_bytes:
            self._awaiting_answer = False
            try:
                answer, _ = self.usable_sdp(msg.body_bytes, (self.codec,))
            except sdp.SdpError as exc:
                log.warning("call %s: the answer in the ACK is unusable (%s): hanging up", self.call_id, safe(exc))
                self.ua.spawn(self._bye(CallEnd(SipResult.FAILED, 0, "local")))
                return
            self._apply_remote_sdp(answer)

    def _prack(self, msg: SipMessage, tx: ServerTransaction) -> None:
        """A PRACK for a reliable provisional response we did not send (RFC 3262 3): 481."""
        self.ua.reply(tx, 481)

    def _refer(self, msg: SipMessage, tx: ServerTransaction) -> None:
        """A transfer request (RFC 3515): 202 and progress NOTIFYs if the call's user takes it."""
        assert self.dialog is not None
        try:
            referral = Referral.of(msg, self.dialog, self.ua)
        except SipParseError as exc:
            self.ua.reply(tx, 400, reason=str(exc))
            return
        if self.state != "answered" or self.on_refer is None or not self.on_refer(referral):
            self.ua.reply(tx, 403, reason="Transfer Not Allowed")
            return
        self.ua.reply(tx, 202, headers=[("Contact", self.ua.contact_header(self.secure))])
        self.ua.spawn(referral.notify(100, "Trying"))

    def _info(self, msg: SipMessage, tx: ServerTransaction) -> None:
        digits = dtmf.from_info(msg.content_type, msg.body_bytes)
        if digits is None:
            self.ua.reply(tx, 415 if msg.body_bytes else 200,
                          headers=[("Accept", ", ".join(dtmf.INFO_TYPES))] if msg.body_bytes else [])
            return
        self.ua.reply(tx, 200)
        for digit in digits:
            self.media.deliver_dtmf(digit)

    def _reoffer(self, msg: SipMessage, tx: ServerTransaction) -> None:
        """re-INVITE / UPDATE: hold, resume, new address or session refresh; same RTP socket.

        Without SDP, a re-INVITE gets our offer in the 200 (the answer comes in the ACK) and an
        UPDATE (a session refresh) gets a 200 without SDP."""
        assert self.dialog is not None
        if msg.method == "INVITE" and self._reinviting:      # glare (RFC 3261 14.2)
            self.ua.reply(tx, 491)
            return
        direction = self.media.direction
        offer: sdp.Audio | None = None
        if msg.body_bytes:
            try:
                offer, _ = self.usable_sdp(msg.body_bytes, (self.codec,))
            except sdp.SdpError as exc:
                log.info("call %s: re-offer refused: %s", self.call_id, safe(exc))
                self.ua.reply(tx, 488, reason=str(exc))
                return
            self._apply_remote_sdp(offer)
            direction = self._answer_direction(offer)
        elif msg.method == "INVITE":
            self._awaiting_answer = True
        if self.dialog.refresh_target(msg.contact):
            log.info("call %s: remote target moved to %s", self.call_id, safe(self.dialog.remote_target))
            self.ua.add_peers(self.dialog)
        headers = self.ua.contact_headers(self.secure)
        if self.session_timer is not None:
            headers += self.session_timer.refreshed_by_peer(msg)
        body = ""
        if msg.body_bytes or msg.method == "INVITE":
            body = self._local_sdp([(self.codec, self.media.payload_type)], self.media.dtmf_payload_type, direction,
                                   answer_to=offer)
        self.ua.reply(tx, 200, body=body, headers=headers)
