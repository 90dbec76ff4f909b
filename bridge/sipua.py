"""The SIP user agent: UDP transport, RFC 3261 transactions, dialogs, registration, calls.

All of it runs on the asyncio loop, with no threads and nothing blocking. Messages are parsed
by pyVoIP's parser, mended (`bridge.sipmessage`). What this module does that pyVoIP 1.6.8 does
not (numbers are pyVoIP's measured defects, see README "SIP leg"):
- ACK for a 2xx goes to the Contact with the dialog's route set and the remote To-tag (10);
  ACK for a non-2xx reuses the INVITE's branch; BYE gets its own Via/branch and CSeq (15);
- 401 and 407 to INVITE and REGISTER are answered once with digest credentials (11);
- every final status is a result, never an exception (12);
- OPTIONS is answered 200, other known methods 405 and unknown ones 501 (13);
- re-INVITE/UPDATE (hold, resume, session refresh) is answered on the same RTP socket (14);
- registration retries with bounded backoff forever and notices a dead registrar with
  OPTIONS keep-alives (17);
- INVITE, BYE, CANCEL, REGISTER are retransmitted per RFC 3261 timers; CANCEL -> 487 (18);
- an incoming INVITE is handed over at once, after 100 Trying (19);
- RTP is bridge's own (`bridge.rtp`), one asyncio endpoint per call (1-9, 20, 21).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from . import sdp
from .config import SipConfig
from .jitter import JitterBuffer
from .ports import PortPool
from .rtp import RtpEndpoint
from .sipmessage import (METHODS, Party, SipMessage, SipParseError, digest, display_name_of,
                         host_port_of, new_branch, new_call_id, new_tag, render, response,
                         uri_of, user_of)

log = logging.getLogger("bridge.sip")

T1, T2 = 0.5, 4.0
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE"
USER_AGENT = "bridge"

Addr = tuple[str, int]


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
    FAILED = "failed"               # local trouble (media, no common codec, ...)


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


@dataclass
class Registration:
    """The registration as the daemon shows it."""

    state: str = "unregistered"    # unregistered, registering, registered, failed, disabled
    detail: str = ""
    since: float = field(default_factory=time.time)
    expires: float = 0.0
    count: int = 0                 # successful registrations so far

    def set(self, state: str, detail: str = "") -> None:
        if (state, detail) != (self.state, self.detail):
            log.info("registration: %s %s", state, detail)
            self.state, self.detail, self.since = state, detail, time.time()


# --- transactions -------------------------------------------------------------------------

@dataclass
class Request:
    """An outgoing request, kept structured so ACK and CANCEL can be derived from it."""

    method: str
    uri: str
    via: str
    from_: str
    to: str
    call_id: str
    cseq: int
    routes: list[str] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: str = ""

    @property
    def branch(self) -> str:
        return self.via.split("branch=")[1].split(";")[0]

    def render(self) -> bytes:
        fields = [("Via", self.via), ("Max-Forwards", "70"), ("From", self.from_), ("To", self.to),
                  ("Call-ID", self.call_id), ("CSeq", f"{self.cseq} {self.method}")]
        fields += [("Route", r) for r in self.routes]
        fields += self.headers + [("User-Agent", USER_AGENT)]
        if self.body:
            fields.append(("Content-Type", "application/sdp"))
        return render(f"{self.method} {self.uri} SIP/2.0", fields, self.body)


class ClientTransaction:
    """RFC 3261 17.1 over UDP: retransmit until answered; ACK non-2xx finals of an INVITE."""

    def __init__(self, ua: "UserAgent", request: Request, addr: Addr, timeout: float = 64 * T1) -> None:
        self.ua, self.request, self.addr = ua, request, addr
        self.key = (request.branch, request.method)
        self.data = request.render()
        self.responses: asyncio.Queue[SipMessage | None] = asyncio.Queue()
        self.final: SipMessage | None = None
        self.provisional = False
        self._ack: bytes | None = None
        loop = asyncio.get_running_loop()
        ua._client_tx[self.key] = self
        ua.send(self.data, addr)
        self._retransmit_at = loop.call_later(T1, self._retransmit, T1)
        self._timeout = loop.call_later(timeout, self._expire)

    def _retransmit(self, interval: float) -> None:
        if self.final is not None or (self.provisional and self.request.method == "INVITE"):
            return
        self.ua.send(self.data, self.addr)
        nxt = interval * 2 if self.request.method == "INVITE" else min(interval * 2, T2)
        if self.provisional:
            nxt = T2
        self._retransmit_at = asyncio.get_running_loop().call_later(nxt, self._retransmit, nxt)

    def _expire(self) -> None:
        if self.final is None:
            self._done()
            self.responses.put_nowait(None)

    def _done(self, linger: float = 0.0) -> None:
        self._retransmit_at.cancel()
        self._timeout.cancel()
        if linger:
            asyncio.get_running_loop().call_later(linger, self.ua._client_tx.pop, self.key, None)
        else:
            self.ua._client_tx.pop(self.key, None)

    def on_response(self, msg: SipMessage) -> None:
        if self.final is not None:
            if self._ack is not None:
                self.ua.send(self._ack, self.addr)     # a retransmitted non-2xx final
            return
        if msg.code < 200:
            self.provisional = True
            self.responses.put_nowait(msg)
            return
        self.final = msg
        if self.request.method == "INVITE" and msg.code >= 300:
            r = self.request
            ack = Request("ACK", r.uri, r.via, r.from_, msg.first("To") or r.to, r.call_id, r.cseq, r.routes)
            self._ack = ack.render()
            self.ua.send(self._ack, self.addr)
            self._done(linger=32.0)
        else:
            self._done()
        self.responses.put_nowait(msg)

    async def next(self) -> SipMessage | None:
        """The next response (provisional or final); None when the transaction timed out."""
        return await self.responses.get()

    def cancel_timers(self) -> None:
        self._done()


@dataclass
class ServerTransaction:
    """The last response to a request, resent when the request is retransmitted."""

    key: tuple[str, str]
    addr: Addr
    last: bytes | None = None
    retransmit: asyncio.Task | None = None
    acked: asyncio.Event = field(default_factory=asyncio.Event)


# --- dialogs and calls --------------------------------------------------------------------

@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str          # the name-addr we put in From (UAC) or To (UAS)
    remote_uri: str
    remote_target: str      # the peer's Contact URI
    route_set: list[str]
    local_seq: int
    next_hop: Addr

    def request(self, ua: "UserAgent", method: str, body: str = "",
                headers: list[tuple[str, str]] | None = None) -> Request:
        self.local_seq += 1
        return Request(method, self.remote_target, ua.via(), f"{self.local_uri};tag={self.local_tag}",
                       f"{self.remote_uri};tag={self.remote_tag}", self.call_id, self.local_seq,
                       list(self.route_set), headers or [], body)


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
        self.codec = ""
        self.on_hold_now = False
        self._session = sdp.SessionVersion()
        self._remote_sdp: sdp.Audio | None = None

    # media -----------------------------------------------------------------------------

    def _local_sdp(self, codecs: list[tuple[str, int]], telephone_event: int | None,
                   direction: str = "sendrecv") -> str:
        host, port = self.media.local_address
        return sdp.build(self.ua.cfg.contact_host, port, codecs, session=self._session,
                         telephone_event=telephone_event, direction=direction)

    def _apply_remote_sdp(self, audio: sdp.Audio, codec: tuple[str, int] | None = None) -> None:
        if codec is not None:
            self.codec = codec[0]
            self.media.set_codec(codec[0], codec[1], audio.telephone_event)
        hold = audio.on_hold
        if audio.address not in ("0.0.0.0", "::") and audio.port:
            self.media.set_remote((audio.address, audio.port))
        self.media.set_direction({"sendonly": "recvonly", "recvonly": "sendonly",
                                  "inactive": "inactive"}.get(audio.direction, "sendrecv"))
        if hold != self.on_hold_now:
            self.on_hold_now = hold
            log.info("call %s: %s by the remote party", self.call_id, "held" if hold else "resumed")
            if self.on_hold is not None:
                self.on_hold(hold)
        self._remote_sdp = audio

    def _answer_direction(self, offer: sdp.Audio) -> str:
        return {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}.get(
            offer.direction, "sendrecv")

    # ending ----------------------------------------------------------------------------

    def _finish(self, end: CallEnd) -> None:
        if self.ended.done():
            return
        self.state = "ended"
        log.info("call %s (%s): ended %s", self.call_id, self.direction, end)
        if not self.answered.done():
            self.answered.set_exception(CallFailed(end))
            self.answered.exception()  # retrieved: nobody has to await it
        self.ended.set_result(end)
        self.media.close()
        self.ua._forget(self)

    async def _bye(self) -> None:
        assert self.dialog is not None
        tx = ClientTransaction(self.ua, self.dialog.request(self.ua, "BYE"), self.dialog.next_hop)
        self._finish(CallEnd(SipResult.NORMAL, 0, "local"))
        reply = await tx.next()
        if reply is None:
            log.warning("call %s: BYE not answered", self.call_id)

    def _on_request(self, msg: SipMessage, addr: Addr) -> None:
        """A request inside this call's dialog."""
        ua = self.ua
        if msg.method == "BYE":
            ua.respond(msg, addr, 200)
            self._finish(CallEnd(SipResult.NORMAL, 0, "remote"))
        elif msg.method in ("INVITE", "UPDATE"):
            self._reoffer(msg, addr)
        elif msg.method in ("OPTIONS", "INFO", "NOTIFY"):
            ua.respond(msg, addr, 200, headers=[("Allow", ALLOW)])
        elif msg.method == "ACK":
            pass
        else:
            ua.respond(msg, addr, 405 if msg.method in METHODS else 501, headers=[("Allow", ALLOW)])

    def _reoffer(self, msg: SipMessage, addr: Addr) -> None:
        """re-INVITE / UPDATE: hold, resume, new address or session refresh; same RTP socket."""
        codecs = [(self.codec, self.media.payload_type)]
        te = self.media.dtmf_payload_type
        direction = "sendrecv"
        if msg.body_bytes:
            try:
                offer = sdp.parse(msg.body_bytes)
                sdp.choose(offer, (self.codec,))
            except sdp.SdpError as exc:
                self.ua.respond(msg, addr, 488, reason=str(exc)[:60])
                return
            self._apply_remote_sdp(offer)
            direction = self._answer_direction(offer)
        body = self._local_sdp(codecs, te, direction)
        self.ua.respond(msg, addr, 200, to_tag=None, body=body, headers=self.ua.contact_headers(),
                        retransmit=msg.method == "INVITE")

    async def hangup(self) -> None:
        """End the call from our side: BYE if answered, else CANCEL (outgoing) / 480 (incoming)."""
        raise NotImplementedError


class CallFailed(Exception):
    def __init__(self, end: CallEnd) -> None:
        super().__init__(str(end))
        self.end = end


class OutgoingCall(SipCall):
    """A call we place: INVITE, ringing, answer or a result."""

    direction = "outgoing"

    def __init__(self, ua: "UserAgent", media: RtpEndpoint, target: str, caller: str,
                 display_name: str | None, ring_timeout: float) -> None:
        super().__init__(ua, media, new_call_id(ua.cfg.contact_host))
        self.target = target
        self.caller = caller
        self.display_name = display_name
        self.ring_timeout = ring_timeout
        self._invite: Request | None = None
        self._tx: ClientTransaction | None = None
        self._cancel_reason: SipResult | None = None
        self._ack: bytes | None = None

    async def run(self) -> None:
        ua, cfg = self.ua, self.ua.cfg
        uri = self.target if self.target.startswith(("sip:", "sips:")) else f"sip:{self.target}@{cfg.domain}"
        # The From user is our account (PBXs authenticate it); the caller id is shown as the
        # display name and asserted in P-Asserted-Identity (RFC 3325).
        shown = (self.display_name or self.caller or "").replace('"', "")
        local_uri = (f'"{shown}" ' if shown else "") + f"<sip:{cfg.username}@{cfg.domain}>"
        identity = [("P-Asserted-Identity", f"{local_uri.split('<')[0]}<sip:{self.caller}@{cfg.domain}>")] \
            if self.caller and self.caller != cfg.username else []
        codecs = [(c, sdp.STATIC_PT[c]) for c in cfg.codecs]
        tag = new_tag()
        cseq = 1
        invite = Request("INVITE", uri, ua.via(), f"{local_uri};tag={tag}", f"<{uri}>", self.call_id, cseq,
                         headers=ua.contact_headers() + identity,
                         body=self._local_sdp(codecs, 101))
        timer = asyncio.get_running_loop().call_later(self.ring_timeout, self._ring_timeout)
        authorized = False
        try:
            while True:
                self._invite = invite
                self._tx = tx = ClientTransaction(ua, invite, ua.proxy)
                if self._cancel_reason is not None and tx.provisional:
                    self._send_cancel()
                reply = await self._await_final(tx)
                if reply is None:
                    self._finish(CallEnd(self._cancel_reason or SipResult.UNAVAILABLE, 408, "remote"))
                    return
                if reply.code in (401, 407) and not authorized and self._cancel_reason is None:
                    authorized = True
                    header = "Authorization" if reply.code == 401 else "Proxy-Authorization"
                    try:
                        creds = digest(reply.challenge, "INVITE", uri, cfg.auth_username, cfg.password, header)
                    except SipParseError:
                        self._finish(CallEnd(SipResult.AUTH_FAILED, reply.code, "remote"))
                        return
                    cseq += 1
                    invite = Request("INVITE", uri, ua.via(), invite.from_, invite.to, self.call_id, cseq,
                                     headers=ua.contact_headers() + identity + [creds], body=invite.body)
                    continue
                if 200 <= reply.code < 300:
                    self._confirm(reply, local_uri, tag)
                    return
                result = result_of(reply.code)
                if reply.code == 487 and self._cancel_reason is not None:
                    result = self._cancel_reason
                self._finish(CallEnd(result, reply.code, "local" if result in (
                    SipResult.NO_ANSWER, SipResult.CANCELLED) else "remote"))
                return
        finally:
            timer.cancel()

    async def _await_final(self, tx: ClientTransaction) -> SipMessage | None:
        while True:
            reply = await tx.next()
            if reply is None or reply.code >= 200:
                return reply
            if reply.code > 100:
                self._provisional(reply)
            if self._cancel_reason is not None:
                self._send_cancel()

    def _provisional(self, reply: SipMessage) -> None:
        early = False
        if reply.body_bytes:
            try:
                audio = sdp.parse(reply.body_bytes)
                self._apply_remote_sdp(audio, sdp.choose(audio, self.ua.cfg.codecs))
                early = True
            except sdp.SdpError as exc:
                log.info("call %s: early media SDP unusable: %s", self.call_id, exc)
        if self.state == "new" or early:
            self.state = "ringing"
            log.info("call %s: ringing (%d%s)", self.call_id, reply.code, ", early media" if early else "")
            if self.on_ringing is not None:
                self.on_ringing(early)

    def _confirm(self, reply: SipMessage, local_uri: str, tag: str) -> None:
        """2xx: build the dialog, ACK it, start media."""
        assert self._invite is not None
        target = reply.contact_uri or uri_of(self._invite.uri)
        routes = list(reversed(reply.all("Record-Route")))
        next_hop = host_port_of(routes[0]) if routes else host_port_of(target)
        self.dialog = Dialog(self.call_id, tag, reply.to_tag, local_uri, uri_of_header(reply.first("To")),
                             target, routes, self._invite.cseq, next_hop)
        ack = Request("ACK", target, self.ua.via(), self._invite.from_, reply.first("To") or "",
                      self.call_id, self._invite.cseq, routes)
        self._ack = ack.render()
        self.ua.send(self._ack, next_hop)
        self.ua._acks[self.call_id] = (self._invite.cseq, self._ack, next_hop)
        try:
            audio = sdp.parse(reply.body_bytes)
            self._apply_remote_sdp(audio, sdp.choose(audio, self.ua.cfg.codecs))
        except sdp.SdpError as exc:
            log.warning("call %s: answer SDP unusable (%s); hanging up", self.call_id, exc)
            self.ua.spawn(self._bye())
            return
        if self._cancel_reason is not None:       # answered while we were cancelling
            self.ua.spawn(self._bye())
            return
        self.state = "answered"
        log.info("call %s: answered (%s)", self.call_id, self.codec)
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
        # no provisional yet: CANCEL is sent when one arrives (RFC 3261 9.1); if none ever
        # comes, the INVITE transaction times out and the call ends with `reason`.

    def _send_cancel(self) -> None:
        tx, invite = self._tx, self._invite
        if tx is None or invite is None or getattr(tx, "cancelled", False):
            return
        tx.cancelled = True  # type: ignore[attr-defined]
        cancel = Request("CANCEL", invite.uri, invite.via, invite.from_, invite.to, invite.call_id,
                         invite.cseq, invite.routes)
        ClientTransaction(self.ua, cancel, self.ua.proxy)

    async def hangup(self) -> None:
        if self.state == "answered":
            await self._bye()
        elif self.state in ("new", "ringing"):
            self.cancel(SipResult.CANCELLED)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.ended), 64 * T1)


def uri_of_header(value: str | None) -> str:
    """A From/To header without its tag parameter."""
    value = value or ""
    return value.split(";tag=")[0]


class IncomingCall(SipCall):
    """A call the PBX sends us: dialed number, caller, and answer/reject."""

    direction = "incoming"

    def __init__(self, ua: "UserAgent", media: RtpEndpoint, invite: SipMessage, addr: Addr,
                 offer: sdp.Audio, codec: tuple[str, int]) -> None:
        super().__init__(ua, media, invite.call_id)
        self.invite = invite
        self.addr = addr
        self.offer = offer
        self.chosen = codec
        from_header = invite.first("From") or ""
        self.caller = Party(user_of(from_header), display_name_of(from_header), uri_of(from_header))
        self.dialed = user_of(invite.first("To") or "") or user_of(invite.uri) or ""
        tag = new_tag()
        routes = invite.all("Record-Route")
        target = invite.contact_uri or uri_of(from_header)
        self.dialog = Dialog(invite.call_id, tag, invite.from_tag, uri_of_header(invite.first("To")),
                             uri_of_header(from_header), target, routes, 0,
                             host_port_of(routes[0]) if routes else addr)

    async def ringing(self) -> None:
        if self.state == "new":
            self.state = "ringing"
            self.ua.respond(self.invite, self.addr, 180, to_tag=self.dialog.local_tag,
                            headers=self.ua.contact_headers())

    async def answer(self, timeout: float = 64 * T1) -> None:
        """200 OK with our SDP; returns when the caller's ACK arrives (raises CallFailed if not)."""
        if self.state not in ("new", "ringing"):
            raise CallFailed(self.ended.result() if self.ended.done() else
                             CallEnd(SipResult.FAILED, 0, "local"))
        self._apply_remote_sdp(self.offer, self.chosen)
        body = self._local_sdp([self.chosen], self.offer.telephone_event, self._answer_direction(self.offer))
        self.state = "answered"
        tx = self.ua.respond(self.invite, self.addr, 200, to_tag=self.dialog.local_tag, body=body,
                             headers=self.ua.contact_headers(), retransmit=True)
        try:
            await asyncio.wait_for(tx.acked.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("call %s: no ACK for our 200 OK; hanging up", self.call_id)
            await self._bye()
            raise CallFailed(CallEnd(SipResult.FAILED, 0, "remote")) from None
        log.info("call %s: answered (%s)", self.call_id, self.codec)
        if not self.answered.done():
            self.answered.set_result(None)

    async def reject(self, code: int = 486) -> None:
        if self.state in ("new", "ringing"):
            self.ua.respond(self.invite, self.addr, code, to_tag=self.dialog.local_tag, retransmit=True)
            self._finish(CallEnd(result_of(code), code, "local"))

    async def hangup(self) -> None:
        if self.state == "answered":
            await self._bye()
        else:
            await self.reject(480)

    def _remote_cancel(self) -> None:
        if self.state in ("new", "ringing"):
            self.ua.respond(self.invite, self.addr, 487, to_tag=self.dialog.local_tag, retransmit=True)
            self._finish(CallEnd(SipResult.CANCELLED, 487, "remote"))


# --- the user agent -------------------------------------------------------------------------

class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, ua: "UserAgent") -> None:
        self.ua = ua

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.ua._on_datagram(data, addr[:2])

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket: %s", exc)


IncomingHandler = Callable[[IncomingCall], Awaitable[None]]


class UserAgent:
    """bridge's SIP account: registers, places calls, receives calls."""

    def __init__(self, cfg: SipConfig, on_incoming: IncomingHandler | None = None) -> None:
        self.cfg = cfg
        self.on_incoming = on_incoming
        self.registration = Registration(state="disabled" if not cfg.register else "unregistered")
        self.ports = PortPool(cfg.rtp_low, cfg.rtp_high, cfg.rtp_host)
        self.proxy: Addr = (cfg.registrar_host, cfg.registrar_port)
        self.calls: dict[str, SipCall] = {}
        self._client_tx: dict[tuple[str, str], ClientTransaction] = {}
        self._server_tx: dict[tuple[str, str], ServerTransaction] = {}
        self._acks: dict[str, tuple[int, bytes, Addr]] = {}   # call-id -> our ACK of its 2xx
        self._pending_2xx: dict[tuple[str, int], ServerTransaction] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task] = set()
        self._register_cseq = 0
        self._register_call_id = ""
        self.local: Addr = ("", 0)

    # life ------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.cfg.bind_host, self.cfg.bind_port))
        self.local = self._transport.get_extra_info("sockname")[:2]
        self._register_call_id = new_call_id(self.cfg.contact_host)
        log.info("SIP on udp %s:%d, registrar %s:%d", *self.local, *self.proxy)
        if self.cfg.register:
            self.spawn(self._registration_loop())

    async def stop(self) -> None:
        for call in list(self.calls.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call.hangup(), 2)
        if self.cfg.register and self.registration.state == "registered":
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._register(expires=0), 2)
        for task in list(self._tasks):
            task.cancel()
        for tx in list(self._client_tx.values()):
            tx.cancel_timers()
        if self._transport is not None:
            self._transport.close()

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("SIP task failed", exc_info=task.exception())

    # helpers ---------------------------------------------------------------------------

    def send(self, data: bytes, addr: Addr) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, addr)

    def via(self) -> str:
        return f"SIP/2.0/UDP {self.cfg.contact_host}:{self.local[1]};branch={new_branch()};rport"

    def contact_headers(self) -> list[tuple[str, str]]:
        return [("Contact", f"<sip:{self.cfg.username}@{self.cfg.contact_host}:{self.local[1]}>"),
                ("Allow", ALLOW)]

    def respond(self, request: SipMessage, addr: Addr, code: int, *, to_tag: str | None = None,
                headers: list[tuple[str, str]] | None = None, body: str = "",
                reason: str | None = None, retransmit: bool = False) -> ServerTransaction:
        data = response(request, code, to_tag=to_tag, body=body, reason=reason,
                        headers=(headers or []) + [("Server", USER_AGENT)]
                        + ([("Content-Type", "application/sdp")] if body else []))
        key = (request.branch, request.method)
        tx = self._server_tx.get(key)
        if tx is None:
            tx = self._server_tx[key] = ServerTransaction(key, addr)
            asyncio.get_running_loop().call_later(64 * T1 + 5, self._server_tx.pop, key, None)
        tx.last = data
        self.send(data, addr)
        if retransmit and code >= 200:
            if tx.retransmit is not None:
                tx.retransmit.cancel()
            tx.retransmit = self.spawn(self._retransmit_response(tx, request, code))
        return tx

    async def _retransmit_response(self, tx: ServerTransaction, request: SipMessage, code: int) -> None:
        """Resend a final response to INVITE until its ACK (RFC 3261 13.3.1.4, 17.2.1)."""
        interval = T1
        deadline = time.monotonic() + 64 * T1
        if 200 <= code < 300:
            self._pending_2xx[(request.call_id, request.cseq[0])] = tx
        try:
            while not tx.acked.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(tx.acked.wait(), interval)
                if not tx.acked.is_set() and tx.last:
                    self.send(tx.last, tx.addr)
                interval = min(interval * 2, T2)
        finally:
            self._pending_2xx.pop((request.call_id, request.cseq[0]), None)

    def _forget(self, call: SipCall) -> None:
        self.calls.pop(call.call_id, None)
        if call.call_id in self._acks:   # keep re-ACKing retransmitted 2xx for a while
            asyncio.get_running_loop().call_later(64 * T1, self._acks.pop, call.call_id, None)

    # receiving -------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: Addr) -> None:
        if not data.strip():
            return  # CRLF keep-alive
        try:
            msg = SipMessage(data)
        except SipParseError as exc:
            log.info("dropped a bad SIP datagram from %s:%d: %s", *addr, exc)
            return
        try:
            if msg.is_request:
                self._on_request(msg, addr)
            else:
                self._on_response(msg)
        except Exception:
            log.exception("error handling SIP %s from %s:%d", msg.method or msg.code, *addr)

    def _on_response(self, msg: SipMessage) -> None:
        number, method = msg.cseq
        tx = self._client_tx.get((msg.branch, method))
        if tx is not None:
            tx.on_response(msg)
        elif method == "INVITE" and 200 <= msg.code < 300:
            ack = self._acks.get(msg.call_id)   # a retransmitted 2xx: ACK it again
            if ack is not None and ack[0] == number:
                self.send(ack[1], ack[2])

    def _on_request(self, msg: SipMessage, addr: Addr) -> None:
        method = msg.method
        if method == "ACK":
            self._on_ack(msg)
            return
        if method == "CANCEL":
            invite_tx = self._server_tx.get((msg.branch, "INVITE"))
            call = self.calls.get(msg.call_id)
            if invite_tx is None or not isinstance(call, IncomingCall):
                self.respond(msg, addr, 481)
                return
            self.respond(msg, addr, 200)
            call._remote_cancel()
            return
        tx = self._server_tx.get((msg.branch, method))
        if tx is not None:                      # a retransmission
            if tx.last is not None:
                self.send(tx.last, addr)
            return
        if msg.to_tag:                          # inside a dialog
            call = self.calls.get(msg.call_id)
            if call is None or call.dialog is None or call.dialog.local_tag != msg.to_tag:
                self.respond(msg, addr, 481)
                return
            call._on_request(msg, addr)
            return
        if method == "INVITE":
            self._on_invite(msg, addr)
        elif method == "OPTIONS":
            self.respond(msg, addr, 200, to_tag=new_tag(), headers=[("Allow", ALLOW),
                                                                   ("Accept", "application/sdp")])
        elif method == "BYE":
            self.respond(msg, addr, 481)
        else:
            self.respond(msg, addr, 405 if method in METHODS else 501, to_tag=new_tag(),
                         headers=[("Allow", ALLOW)])

    def _on_ack(self, msg: SipMessage) -> None:
        tx = self._server_tx.get((msg.branch, "INVITE"))        # ACK to a non-2xx final
        if tx is None:
            tx = self._pending_2xx.get((msg.call_id, msg.cseq[0]))  # ACK to a 2xx
        if tx is not None:
            tx.acked.set()

    def _on_invite(self, msg: SipMessage, addr: Addr) -> None:
        self.respond(msg, addr, 100)
        if msg.call_id in self.calls:           # a forked copy or a looped request
            self.respond(msg, addr, 482)
            return
        try:
            offer = sdp.parse(msg.body_bytes)
            codec = sdp.choose(offer, self.cfg.codecs)
        except sdp.SdpError as exc:
            log.info("incoming INVITE refused: %s", exc)
            self.respond(msg, addr, 488, to_tag=new_tag(), reason="Not Acceptable Here", retransmit=True)
            return
        if self.on_incoming is None:
            self.respond(msg, addr, 480, to_tag=new_tag(), retransmit=True)
            return
        self.spawn(self._incoming(msg, addr, offer, codec))

    async def _incoming(self, msg: SipMessage, addr: Addr, offer: sdp.Audio, codec: tuple[str, int]) -> None:
        try:
            media = await self._media()
        except Exception as exc:
            log.error("no RTP port for an incoming call: %s", exc)
            self.respond(msg, addr, 503, to_tag=new_tag(), retransmit=True)
            return
        call = IncomingCall(self, media, msg, addr, offer, codec)
        self.calls[call.call_id] = call
        log.info("call %s: incoming from %s (%s) to %s", call.call_id, call.caller.number,
                 call.caller.display_name or "-", call.dialed)
        assert self.on_incoming is not None
        try:
            await self.on_incoming(call)
        except Exception:
            log.exception("incoming call handler failed")
            await call.reject(500)

    async def _media(self) -> RtpEndpoint:
        jitter = JitterBuffer(target_ms=round(self.cfg.jitter_target * 1000))
        return await RtpEndpoint.create(self.cfg.rtp_host, port_pool=self.ports, jitter=jitter)

    # calling ---------------------------------------------------------------------------

    async def call(self, target: str, *, caller: str | None = None, display_name: str | None = None,
                   ring_timeout: float | None = None) -> OutgoingCall:
        """Place a call to an extension or SIP URI; watch `answered` and `ended`."""
        media = await self._media()
        call = OutgoingCall(self, media, target, caller or self.cfg.username, display_name,
                            ring_timeout or self.cfg.ring_timeout)
        self.calls[call.call_id] = call
        log.info("call %s: calling %s", call.call_id, target)
        task = self.spawn(call.run())
        task.add_done_callback(lambda t: call._finish(CallEnd(SipResult.FAILED, 0, "local"))
                               if t.cancelled() or t.exception() else None)
        return call

    # registration ------------------------------------------------------------------------

    async def _register(self, expires: int) -> tuple[int, int]:
        """One REGISTER (with digest on 401/407); returns (final status, granted expires)."""
        cfg = self.cfg
        uri = f"sip:{cfg.domain}"
        aor = f"<sip:{cfg.username}@{cfg.domain}>"
        tag = new_tag()
        extra: list[tuple[str, str]] = []
        for attempt in range(3):
            self._register_cseq += 1
            request = Request("REGISTER", uri, self.via(), f"{aor};tag={tag}", aor, self._register_call_id,
                              self._register_cseq, headers=[
                                  ("Contact", f"<sip:{cfg.username}@{cfg.contact_host}:{self.local[1]}>"),
                                  ("Expires", str(expires)), ("Allow", ALLOW)] + extra)
            reply = await ClientTransaction(self, request, self.proxy, timeout=cfg.transaction_timeout).next()
            if reply is None:
                return 408, 0
            if reply.code in (401, 407) and attempt == 0:
                header = "Authorization" if reply.code == 401 else "Proxy-Authorization"
                try:
                    extra = [digest(reply.challenge, "REGISTER", uri, cfg.auth_username, cfg.password, header)]
                except SipParseError:
                    return reply.code, 0
                continue
            if reply.code == 423 and (reply.first("Min-Expires") or "").isdigit():
                expires = int(reply.first("Min-Expires") or expires)
                continue
            if 200 <= reply.code < 300:
                return reply.code, self._granted(reply, expires)
            return reply.code, 0
        return 401, 0

    def _granted(self, reply: SipMessage, asked: int) -> int:
        mine = f"{self.cfg.contact_host}:{self.local[1]}"
        for contact in reply.all("Contact"):
            if mine in contact and "expires=" in contact:
                value = contact.split("expires=")[1].split(";")[0].split(",")[0].strip()
                if value.isdigit():
                    return int(value)
        expires = reply.first("Expires")
        return int(expires) if expires and expires.isdigit() else asked

    async def _options_ok(self) -> bool:
        cfg = self.cfg
        uri = f"sip:{cfg.domain}"
        request = Request("OPTIONS", uri, self.via(), f"<sip:{cfg.username}@{cfg.domain}>;tag={new_tag()}",
                          f"<{uri}>", new_call_id(cfg.contact_host), 1)
        reply = await ClientTransaction(self, request, self.proxy, timeout=cfg.transaction_timeout).next()
        return reply is not None

    async def _registration_loop(self) -> None:
        backoff = 1.0
        reg = self.registration
        while True:
            reg.set("registering" if reg.state != "failed" else "failed", reg.detail)
            code, granted = await self._register(self.cfg.register_expires)
            if 200 <= code < 300 and granted > 0:
                reg.count += 1
                reg.expires = time.time() + granted
                reg.set("registered", f"for {granted} s")
                backoff = 1.0
                refresh_at = time.monotonic() + max(granted * 0.8, granted - 30, 1)
                while time.monotonic() < refresh_at:
                    await asyncio.sleep(max(min(self.cfg.keepalive, refresh_at - time.monotonic()), 0.01))
                    if time.monotonic() < refresh_at and not await self._options_ok():
                        reg.set("failed", "registrar not answering keep-alives")
                        break
            else:
                reg.set("failed", f"registrar answered {code}" if code != 408 else "registrar not answering")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.cfg.max_backoff)
