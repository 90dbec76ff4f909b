"""A SIP call: one dialog, its RTP endpoint, and what both directions share.

`OutgoingCall` (`bridge.sip.outgoing`) and `IncomingCall` (`bridge.sip.incoming`) add how a
call starts; this module holds how it goes on and ends: our own hold and resume (a re-INVITE
offering sendonly, then sendrecv), our requests in the dialog (DTMF, re-INVITE, UPDATE),
session timers, and BYE with credentials. A call is marked ended before anything is sent, so no
network or DNS trouble can leave it half-ended. Its parts: `bridge.sip.indialog` (what the peer
sends in the dialog: BYE, re-INVITE and UPDATE for hold, resume, a moved peer and session
refresh; INFO DTMF; REFER; OPTIONS) and `bridge.sip.offeranswer` (SDP, SRTP keys and the media
policy for every SDP); how a call ended is `bridge.sip.result`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Callable

from ..logsafe import safe
from ..rtp import RtpEndpoint
from . import dtmf, sdp
from .dialog import Dialog
from .indialog import InDialog
from .message import SipMessage
from .offeranswer import OfferAnswer
from .result import CallEnd, CallFailed, SipResult
from .sessiontimer import SessionTimer
from .transfer import Referral

if TYPE_CHECKING:
    from .useragent import UserAgent

log = logging.getLogger("bridge.sip")

GLARE_TRIES = 3            # a re-INVITE of ours answered 491 (glare) is sent at most this often


class SipCall(InDialog, OfferAnswer):
    """One SIP call with its own RTP endpoint; see OutgoingCall and IncomingCall."""

    direction = ""

    def __init__(self, ua: "UserAgent", media: RtpEndpoint, call_id: str) -> None:
        self.ua = ua
        self.media = media
        self.call_id = call_id
        self.dialog: Dialog | None = None
        self.state = "new"     # new, ringing, answered, ended
        loop = asyncio.get_running_loop()
        self.answered: asyncio.Future[None] = loop.create_future()
        self.ended: asyncio.Future[CallEnd] = loop.create_future()
        self.on_ringing: Callable[[bool], None] | None = None   # arg: early media present
        self.on_hold: Callable[[bool], None] | None = None
        self.on_refer: Callable[[Referral], bool] | None = None   # True: the transfer is taken
        self.codec = ""
        self.on_hold_now = False                     # the peer holds the call
        self.held_locally = False                    # we hold it (hold())
        self._offering = asyncio.Lock()              # one re-INVITE of ours at a time
        self._reinviting = False                     # ... and it is in flight: theirs gets 491
        self.signalling_peer: str | None = None      # the address SIP for this call came from
        self.secure = False                           # a sips: call: sips: in our Contact
        self._keys: dict[str, bytes] = {}             # our SRTP key per suite (never logged)
        self.session_timer: SessionTimer | None = None
        self._session = sdp.SessionVersion()
        self._remote_sdp: sdp.Audio | None = None
        self._offered_dtmf_pt: int | None = None
        self._awaiting_answer = False      # we offered in a 2xx (delayed offer): the ACK answers

    # our hold --------------------------------------------------------------------------

    async def hold(self, held: bool) -> bool:
        """Hold the call (a re-INVITE offering a=sendonly: we may go on sending, e.g. music on
        hold) or resume it (a=sendrecv). True if the peer accepted; a refusal leaves the call as
        it was (RFC 3261 14.1), and a 481 or 408 (the dialog is gone) ends it. A 491 (the peer's
        re-INVITE crossed ours) is sent again after 14.1's wait: 2.1-4 s if we chose the Call-ID,
        else 0-2 s."""
        async with self._offering:
            if self.state != "answered" or self.dialog is None:
                return False
            if held == self.held_locally:
                return True
            reply = await self._offer_direction("sendonly" if held else "sendrecv")
            if self.state != "answered":
                return False
            if reply is None or reply.code in (408, 481):
                log.warning("call %s: %s answered %s: the dialog is gone", self.call_id,
                            "hold" if held else "resume", reply.code if reply else "nothing")
                self.end_locally(SipResult.SESSION_EXPIRED)
                return False
            if not 200 <= reply.code < 300:
                log.info("call %s: the peer refused to %s: %d", self.call_id, "hold" if held else "resume",
                         reply.code)
                return False
            self.held_locally = held
            answer = None
            if reply.body_bytes:
                try:
                    answer, _ = self.usable_sdp(reply.body_bytes, (self.codec,))
                except sdp.SdpError as exc:
                    log.warning("call %s: the answer to our %s is unusable: %s", self.call_id,
                                "hold" if held else "resume", safe(exc))
            if answer is not None:
                self._apply_remote_sdp(answer)
            else:
                self.media.set_direction("sendonly" if held else "sendrecv")
            if self.session_timer is not None:
                self.session_timer.start()          # a 2xx to a re-INVITE refreshes the session
            log.info("call %s: %s (media %s)", self.call_id, "on hold by us" if held else "resumed by us",
                     self.media.direction)
            return True

    async def _offer_direction(self, direction: str) -> SipMessage | None:
        """Our re-INVITE offering the stream with `direction` (its 491s sent again): the final
        response, None if nothing answered."""
        reply = None
        for attempt in range(GLARE_TRIES):
            timer = self.session_timer
            headers = [] if timer is None else [
                ("Session-Expires", f"{timer.interval};refresher={'uac' if timer.we_refresh else 'uas'}"),
                ("Supported", "timer")]
            self._reinviting = True
            try:
                _, reply = await self.request("INVITE", headers, offer=True, direction=direction)
            finally:
                self._reinviting = False
            if reply is None or reply.code != 491 or attempt + 1 == GLARE_TRIES or self.state != "answered":
                return reply
            await asyncio.sleep(random.randrange(210, 401) / 100 if self.direction == "outgoing"
                                else random.randrange(0, 201) / 100)
        return reply

    # ending ----------------------------------------------------------------------------

    def _finish(self, end: CallEnd) -> None:
        if self.ended.done():
            return
        self.state = "ended"
        log.info("call %s (%s): ended %s", self.call_id, self.direction, end)
        if not self.answered.done():
            self.answered.set_exception(CallFailed(end))
            self.answered.exception()  # retrieved: nobody has to await it
        if self.session_timer is not None:
            self.session_timer.stop()
        self.session_timer = None
        self.on_ringing = self.on_hold = self.on_refer = None   # let go of the bridged call
        self.ended.set_result(end)
        self.media.close()
        self.ua.forget(self)

    async def _bye(self, end: CallEnd | None = None) -> None:
        """End the call (first), then send BYE; its answer is awaited in the background."""
        self._finish(end or CallEnd(SipResult.NORMAL, 0, "local"))
        dialog = self.dialog
        if dialog is None:
            return
        request = dialog.request("BYE", self.ua.via(), dialog.credentials)
        tx = await self.ua.send_in_dialog(dialog, request)
        if tx is not None:
            self.ua.spawn(self._bye_answered(dialog, request, tx))

    async def _bye_answered(self, dialog: Dialog, request, tx) -> None:
        """A 401/407 to our BYE is answered once with credentials (RFC 3261 22)."""
        reply = await tx.next()
        if reply is not None and reply.code in (401, 407):
            creds = self.ua.credentials(reply, "BYE", request.uri)
            if creds:
                tx = await self.ua.send_in_dialog(dialog, dialog.request("BYE", self.ua.via(), creds))
                reply = await tx.next() if tx is not None else None
        if reply is None:
            log.warning("call %s: BYE not answered", self.call_id)
        elif reply.code >= 300:
            log.info("call %s: BYE answered %d", self.call_id, reply.code)

    def end_locally(self, result: SipResult) -> None:
        """End an answered call from our side for `result` (media timeout, session expiry)."""
        if self.state == "answered":
            log.warning("call %s: %s: hanging up", self.call_id, result.value.replace("_", " "))
            self.ua.spawn(self._bye(CallEnd(result, 0, "local")))

    # our requests in the dialog (the peer's: InDialog) ---------------------------------

    async def send_dtmf(self, digits: str) -> None:
        """Digits to the phone: RFC 4733 events when negotiated (`sip.dtmf: auto`, or `rfc4733`),
        else (or with `sip.dtmf: info`) one SIP INFO each, `application/dtmf-relay`, in order."""
        mode = self.ua.cfg.dtmf
        if mode == "rfc4733" or (mode == "auto" and self.media.dtmf_payload_type is not None):
            if self.media.dtmf_payload_type is None:
                log.info("call %s: DTMF %r dropped: telephone-event was not negotiated (sip.dtmf: rfc4733)",
                         self.call_id, digits)
                return
            self.media.send_dtmf(digits)
            return
        for digit in digits:
            if self.state != "answered" or self.dialog is None:
                return
            content_type, body = dtmf.to_info(digit)
            request = self.dialog.request("INFO", self.ua.via(), list(self.dialog.credentials), body,
                                          content_type=content_type)
            tx = await self.ua.send_in_dialog(self.dialog, request)
            reply = await tx.next() if tx is not None else None
            if reply is None or reply.code >= 300:
                log.info("call %s: DTMF INFO %r answered %s", self.call_id, digit,
                         reply.code if reply is not None else "nothing")

    async def request(self, method: str, headers: list[tuple[str, str]], *, offer: bool = False,
                      direction: str | None = None) -> tuple[int, SipMessage | None]:
        """A request of ours in the dialog (re-INVITE, UPDATE...): its final (status, response);
        status 0 when nothing answered. `offer`: our current SDP goes with it (with `direction`,
        if given, instead of the stream's: a hold). A 401/407 is
        answered once with credentials; a 2xx to a re-INVITE is ACKed; a 2xx's Contact moves the
        remote target."""
        dialog = self.dialog
        assert dialog is not None
        ua = self.ua
        extra = list(dialog.credentials)
        for attempt in range(2):
            body = self._local_sdp([(self.codec, self.media.payload_type)], self.media.dtmf_payload_type,
                                   direction or self.media.direction) if offer else ""
            request = dialog.request(method, ua.via(), [("Contact", ua.contact_header(self.secure))] + headers + extra,
                                     body)
            tx = await ua.send_in_dialog(dialog, request)
            reply = await tx.next() if tx is not None else None
            while reply is not None and reply.code < 200:
                reply = await tx.next()
            if reply is None:
                return 0, None
            if method == "INVITE" and 200 <= reply.code < 300:
                await ua.send_ack(dialog, dialog.request("ACK", ua.via(), extra, cseq=request.cseq))
            if reply.code in (401, 407) and attempt == 0:
                extra = dialog.credentials = ua.credentials(reply, method, request.uri)
                if extra:
                    continue
            if 200 <= reply.code < 300:
                dialog.refresh_target(reply.contact)
            return reply.code, reply
        return 0, None

    async def hangup(self) -> None:
        """End the call from our side: BYE if answered, else CANCEL (outgoing) / 480 (incoming)."""
        raise NotImplementedError

    # session timers --------------------------------------------------------------------

    def start_session_timer(self, msg: SipMessage, we_are: str) -> list[tuple[str, str]]:
        """Arm RFC 4028 timers from a 2xx (UAC) or an INVITE (UAS); headers for our 2xx."""
        timer = SessionTimer.negotiate(self, msg, we_are, self.ua.cfg.session_expires, self.ua.cfg.min_se)
        if timer is None:
            return []
        self.session_timer = timer
        timer.start()
        return timer.response_headers()
