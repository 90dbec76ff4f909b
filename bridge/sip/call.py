"""A SIP call: one dialog, its RTP endpoint, and what both directions share.

`OutgoingCall` (`bridge.sip.outgoing`) and `IncomingCall` (`bridge.sip.incoming`) add how a
call starts; this module holds how it goes on and ends: in-dialog requests (BYE, re-INVITE and
UPDATE for hold, resume, a moved peer and session refresh; INFO DTMF; OPTIONS), our own hold
and resume (a re-INVITE offering sendonly, then sendrecv), the media policy for every SDP,
session timers, and BYE with credentials. A call is marked ended before anything is sent, so no
network or DNS trouble can leave it half-ended.

Direction: what we want (sendrecv, or sendonly while we hold) meets what the peer's SDP allows
(its direction mirrored; an RFC 2543 hold, c=0.0.0.0, allows nothing); the stream sends only if
both allow it and receives only if both do.

SRTP (`sip.srtp`, SDES): a call has one key of its own per suite, made when first needed and
kept for the whole call. Our first offer carries one `a=crypto` line per suite, an answer the
offer's line with our key, a re-offer the line of the suite in use (or none, if the peer took
plain RTP); each SDP from the peer sets the keys of the RTP endpoint again (unchanged keys keep
their SRTP state).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..logsafe import safe
from ..rtp import RtpEndpoint
from ..srtp import SUITES, SrtpKey, new_key
from . import dtmf, sdes, sdp
from .dialog import Dialog
from .message import METHODS, SipMessage
from .sessiontimer import SessionTimer
from .transaction import ServerTransaction
from .transfer import Referral
from .uri import SipParseError

if TYPE_CHECKING:
    from .useragent import UserAgent

log = logging.getLogger("bridge.sip")


class SipResult(str, enum.Enum):
    """How a SIP call ended, in terms a bridge can map to the app side."""

    NORMAL = "normal"               # answered, then hung up (BYE)
    BUSY = "busy"                   # 486, 600
    DECLINED = "declined"           # 603
    NOT_FOUND = "not_found"         # 404, 484, 604
    UNAVAILABLE = "unavailable"     # 480, 408, transaction timeout
    NO_ANSWER = "no_answer"         # ring timeout (we cancelled)
    CANCELLED = "cancelled"         # cancelled before answer (by us on request, or by the caller)
    AUTH_FAILED = "auth_failed"     # 401/407 after credentials, or 403
    REJECTED = "rejected"           # other 4xx/6xx
    SERVER_ERROR = "server_error"   # 5xx
    FAILED = "failed"               # local trouble (media, no common codec, no ACK, ...)
    MEDIA_TIMEOUT = "media_timeout"       # no RTP from the peer for sip.media_timeout
    SESSION_EXPIRED = "session_expired"   # RFC 4028: the session was not refreshed in time


_RESULTS = {486: SipResult.BUSY, 600: SipResult.BUSY, 603: SipResult.DECLINED,
            404: SipResult.NOT_FOUND, 484: SipResult.NOT_FOUND, 604: SipResult.NOT_FOUND,
            480: SipResult.UNAVAILABLE, 408: SipResult.UNAVAILABLE, 410: SipResult.NOT_FOUND,
            401: SipResult.AUTH_FAILED, 407: SipResult.AUTH_FAILED, 403: SipResult.AUTH_FAILED,
            487: SipResult.CANCELLED}


def result_of(code: int) -> SipResult:
    if code in _RESULTS:
        return _RESULTS[code]
    return SipResult.SERVER_ERROR if 500 <= code < 600 else SipResult.REJECTED


@dataclass(frozen=True)
class CallEnd:
    result: SipResult
    code: int          # the SIP status that ended it (0 for BYE / local)
    by: str            # "local" or "remote"

    def __str__(self) -> str:
        code = f" {self.code}" if self.code else ""
        return f"{self.result.value}{code} by {self.by}"


class CallFailed(Exception):
    def __init__(self, end: CallEnd) -> None:
        super().__init__(str(end))
        self.end = end


_MIRROR = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
_SENDS = ("sendrecv", "sendonly")
_RECEIVES = ("sendrecv", "recvonly")
GLARE_TRIES = 3            # a re-INVITE of ours answered 491 (glare) is sent at most this often


def both_allow(ours: str, theirs: str) -> str:
    """The direction of a stream that `ours` and `theirs` (each from this side's view) both allow."""
    send = ours in _SENDS and theirs in _SENDS
    receive = ours in _RECEIVES and theirs in _RECEIVES
    if send:
        return "sendrecv" if receive else "sendonly"
    return "recvonly" if receive else "inactive"


class SipCall:
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

    # media -----------------------------------------------------------------------------

    def _local_sdp(self, codecs: list[tuple[str, int]], telephone_event: int | None,
                   direction: str = "sendrecv", answer_to: sdp.Audio | None = None) -> str:
        """Our SDP: an answer to `answer_to`, else an offer (a re-offer once a session exists)."""
        _, port = self.media.local_address
        return sdp.build(self.ua.cfg.contact_host, port, codecs, session=self._session,
                         telephone_event=telephone_event, direction=direction, like=self._remote_sdp,
                         crypto=self._crypto_lines(answer_to),
                         protocol="RTP/SAVP" if self.ua.cfg.srtp == "required" else "RTP/AVP")

    def _key(self, suite: str) -> bytes:
        if suite not in self._keys:
            self._keys[suite] = new_key()
        return self._keys[suite]

    def _crypto_lines(self, answer_to: sdp.Audio | None) -> list[sdes.Crypto]:
        if self.ua.cfg.srtp == "off":
            return []
        if answer_to is None and self._remote_sdp is None:
            return sdes.offer({suite: self._key(suite) for suite in SUITES})
        taken = (answer_to or self._remote_sdp).crypto  # type: ignore[union-attr]
        return [sdes.Crypto(taken.tag, taken.suite, self._key(taken.suite))] if taken is not None else []

    def usable_sdp(self, body: bytes, codecs: tuple[str, ...] | None = None) -> tuple[sdp.Audio, tuple[str, int]]:
        """The peer's audio stream and codec (of ours, or `codecs`); SdpError if unusable, or if
        RTP may not go where it says (the media policy)."""
        return self.ua.usable_sdp(body, codecs or self.ua.cfg.codecs, self.signalling_peer)

    def _apply_remote_sdp(self, audio: sdp.Audio, codec: tuple[str, int] | None = None) -> None:
        if codec is not None:
            self.codec = codec[0]
            self.media.set_codec(codec[0], codec[1], audio.telephone_event)
            if self._offered_dtmf_pt is not None and audio.telephone_event is not None:
                self.media.accept_dtmf_payload_type(self._offered_dtmf_pt)
        if audio.crypto is not None:
            self.media.set_srtp(SrtpKey(audio.crypto.suite, self._key(audio.crypto.suite)), audio.crypto.srtp_key)
        else:
            self.media.set_srtp(None, None)
        if not audio.held_by_address and audio.port:
            self.media.set_remote((audio.address, audio.port))
        self.media.set_direction(self._answer_direction(audio))
        hold = audio.on_hold
        if hold != self.on_hold_now:
            self.on_hold_now = hold
            log.info("call %s: %s by the remote party", self.call_id, "held" if hold else "resumed")
            if self.on_hold is not None:
                self.on_hold(hold)
        self._remote_sdp = audio

    def _answer_direction(self, offer: sdp.Audio) -> str:
        """Our direction against the peer's SDP: what we want, as far as it allows."""
        theirs = "inactive" if offer.held_by_address else _MIRROR.get(offer.direction, "sendrecv")
        return both_allow("sendonly" if self.held_locally else "sendrecv", theirs)

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

    # in-dialog requests ----------------------------------------------------------------

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
