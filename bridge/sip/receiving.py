"""What arrives at the user agent. It is checked in this order, and whatever fails a check is
answered (or dropped) before it can take anything:
1. parsing (`bridge.sip.message`): unparsable requests from trusted peers get a stateless 400,
   anything else unparsable is dropped and counted;
2. transactions (`bridge.sip.transaction`): retransmissions are absorbed, responses go to the
   transaction that sent their request, and only if they come from where it went;
3. dialogs: a request with a To-tag must match a dialog and come from that dialog's peers (481
   or dropped otherwise); an ACK for a 2xx and a CANCEL must match what they refer to;
4. trust (`bridge.sip.trust`): out-of-dialog requests only from the PBX or `sip.trusted_peers`;
   `Require` with an option we do not support gets 420;
5. an INVITE is validated whole (headers, SDP, media policy, SRTP, session interval) before an
   RTP port is taken, and every failure after that gives the port back.
"""

from __future__ import annotations

import contextlib
import logging

from ..inet import Addr
from ..logsafe import safe
from ..ports import PortPoolExhausted
from . import sdp
from .call import SipCall
from .incoming import IncomingCall
from .message import METHODS, SipMessage, SipParseError, bad_request, new_tag, response
from .sessiontimer import parse_expires
from .servertransaction import ServerTransaction
from .transfer import Replaces
from .uri import hostport

log = logging.getLogger("bridge.sip")       # the user agent's, as its log lines always said


class Receiving:
    """What arrives: each message through the checks above, then to its transaction, call or
    handler (a part of `UserAgent`)."""

    def _on_message(self, data: bytes, addr: Addr) -> None:
        try:
            msg = SipMessage(data)
        except SipParseError as exc:
            self.counters["malformed"] += 1
            if self.policy.trusted(addr[0]):
                answer = bad_request(data, str(exc))
                if answer is not None:
                    self.transport.send(answer, addr)
            if self.policy.should_log(addr[0]):
                log.info("dropped a bad SIP message from %s: %s", hostport(*addr), safe(exc))
            return
        try:
            if msg.is_request and msg.request_uri.scheme == "sips" and self.cfg.transport != "tls":
                self.counters["refused_sips"] += 1         # sips: end to end over TLS, or not at all
                if msg.method != "ACK" and (self.policy.trusted(addr[0]) or self.policy.action == "reject"):
                    self.reply_stateless(msg, addr, 416, reason="Unsupported URI Scheme (sips: needs TLS)")
            elif msg.is_request:
                self._on_request(msg, addr)
            else:
                self._on_response(msg, addr)
        except Exception:
            self.counters["errors"] += 1
            log.exception("error handling SIP %s from %s", msg.method or msg.code, hostport(*addr))

    def _on_response(self, msg: SipMessage, addr: Addr) -> None:
        if self.layer.on_response(msg, addr) is None:
            self.counters["stray_responses"] += 1

    def _dialog_call(self, msg: SipMessage) -> SipCall | None:
        call = self.calls.get(msg.call_id)
        d = call.dialog if call is not None else None
        if d is None or d.local_tag != msg.to_tag or (d.remote_tag and d.remote_tag != msg.from_tag):
            return None
        return call

    def _from_peer(self, call: SipCall, addr: Addr) -> bool:
        assert call.dialog is not None
        host = addr[0]
        return host in call.dialog.peers or host == call.signalling_peer or self.policy.trusted(host)

    def _on_request(self, msg: SipMessage, addr: Addr) -> None:
        method = msg.method
        tx = self.layer.find_server(msg)
        if tx is not None:
            if tx.addr[0] != addr[0]:
                self.counters["foreign_source"] += 1
            elif method == "ACK":
                tx.ack()                                # ACK for a non-2xx final, same branch
            elif method != "ACK":
                tx.retransmission()
            return
        if method == "ACK":                             # ACK for a 2xx: a transaction of its own
            call = self._dialog_call(msg)
            if call is not None and self._from_peer(call, addr):
                call.on_ack(msg)
            return
        if method == "CANCEL":
            self._on_cancel(msg, addr)
            return
        if msg.to_tag:                                  # inside a dialog
            call = self._dialog_call(msg)
            if call is None:
                if self.policy.trusted(addr[0]):
                    self.reply_stateless(msg, addr, 481)
                return
            if not self._from_peer(call, addr):
                self.counters["foreign_source"] += 1
                self.policy.refused(addr[0], f"in-dialog {method}")
                return
            stx = self._server_transaction(msg, addr)
            if stx is not None:
                call.on_request(msg, stx)
            return
        if not self.policy.trusted(addr[0]):
            self.counters["untrusted"] += 1
            self.policy.refused(addr[0], method)
            if self.policy.action == "reject":
                self.reply_stateless(msg, addr, 403, reason="Forbidden (not a trusted peer)")
            return
        unsupported = msg.tokens("Require") - set(self.supported)
        if unsupported:
            self.reply_stateless(msg, addr, 420, headers=[("Unsupported", ", ".join(sorted(unsupported)))])
            return
        if method == "INVITE":
            self._on_invite(msg, addr)
        elif method == "OPTIONS":                      # a probe (Kamailio's dispatcher): draining is 503
            if self.draining:
                self.reply_stateless(msg, addr, 503, reason="Draining", headers=[("Retry-After", "30")])
            else:
                self.reply_stateless(msg, addr, 200, headers=self.capabilities())
        elif method in ("BYE", "PRACK", "UPDATE", "INFO"):
            self.reply_stateless(msg, addr, 481)
        else:
            self.reply_stateless(msg, addr, 405 if method in METHODS else 501, headers=[("Allow", self.allow)])

    def _server_transaction(self, msg: SipMessage, addr: Addr) -> ServerTransaction | None:
        if self.layer.full:
            self.counters["transaction_limit"] += 1
            self.reply_stateless(msg, addr, 503, headers=[("Retry-After", "5")])
            return None
        return self.layer.new_server(msg, addr)

    def _on_cancel(self, msg: SipMessage, addr: Addr) -> None:
        invite_tx = self.layer.find_server(msg, "INVITE")
        if invite_tx is None or invite_tx.addr[0] != addr[0]:
            self.reply_stateless(msg, addr, 481)
            return
        stx = self._server_transaction(msg, addr)
        if stx is None:
            return
        self.reply(stx, 200)
        call = self.calls.get(msg.call_id)
        if isinstance(call, IncomingCall) and call.tx is invite_tx:
            call.remote_cancel()
        elif invite_tx.state == "proceeding":          # cancelled before the call was set up
            invite_tx.respond(response(invite_tx.request, 487, to_tag=new_tag()), 487)

    def _on_invite(self, msg: SipMessage, addr: Addr) -> None:
        if self.layer.full:
            self.counters["transaction_limit"] += 1
            self.reply_stateless(msg, addr, 503, headers=[("Retry-After", "5")])
            return
        if msg.call_id in self.calls:                  # a forked copy or a looped request
            self.reply_stateless(msg, addr, 482)
            return
        refused = self._check_invite(msg)
        replacing: SipCall | None = None
        if refused is None and msg.first("Replaces") is not None:
            replacing = self._replaced(msg)
            if replacing is None:
                refused = 481, "Call Does Not Exist (Replaces)", []
        offer = codec = None
        if refused is None and msg.body_bytes:
            try:
                if replacing is not None and replacing.codec:   # keep the replaced leg's codec if
                    with contextlib.suppress(sdp.SdpError):      # offered: the app leg relays it
                        offer, codec = self.usable_sdp(msg.body_bytes, (replacing.codec,), addr[0])
                if offer is None:
                    offer, codec = self.usable_sdp(msg.body_bytes, self.cfg.codecs, addr[0])
            except sdp.SdpError as exc:
                refused = 488, str(exc), []
        if refused is not None:
            code, reason, headers = refused
            self.counters["refused_invites"] += 1
            log.info("incoming INVITE from %s refused %d: %s", hostport(*addr), code, safe(reason))
            self.reply_stateless(msg, addr, code, reason=reason, headers=headers)
            return
        tx = self.layer.new_server(msg, addr)
        self.reply(tx, 100)
        self.spawn(self._incoming(msg, tx, offer, codec, replacing))

    def _replaced(self, msg: SipMessage) -> SipCall | None:
        """The answered call an INVITE's Replaces names (None: none, or nobody takes replacements)."""
        try:
            replaces = Replaces.parse(msg.first("Replaces") or "")
        except SipParseError:
            return None
        call = self.calls.get(replaces.call_id)
        if (call is None or call.dialog is None or call.state != "answered" or self.on_replaces is None
                or replaces.early_only or not replaces.names(call.dialog)):
            return None
        return call

    def _check_invite(self, msg: SipMessage) -> tuple[int, str, list[tuple[str, str]]] | None:
        """Why an INVITE is refused before its SDP is read: (code, reason, headers), or None."""
        if self.on_incoming is None:
            return 480, "Temporarily Unavailable", []
        if msg.body_bytes and msg.content_type != "application/sdp":
            return 415, "Unsupported Media Type", [("Accept", "application/sdp")]
        given = parse_expires(msg.first("Session-Expires"))
        if given is not None and self.cfg.session_expires and given[0] < self.cfg.min_se:
            return 422, "Session Interval Too Small", [("Min-SE", str(self.cfg.min_se))]
        return None

    async def _incoming(self, msg: SipMessage, tx, offer: sdp.Audio | None, codec: tuple[str, int] | None,
                        replacing: SipCall | None = None) -> None:
        try:
            media = await self._media()
        except (PortPoolExhausted, OSError) as exc:
            log.error("no RTP port for an incoming call: %s", exc)
            self.reply(tx, 503, to_tag=new_tag(), headers=[("Retry-After", "5")])
            return
        if tx.state != "proceeding":                   # cancelled while we took the port
            media.close()
            return
        try:
            call = IncomingCall(self, media, msg, tx, offer, codec)
        except Exception:
            media.close()
            self.reply(tx, 500, to_tag=new_tag())
            raise
        self.calls[call.call_id] = call
        self.add_peers(call.dialog)  # type: ignore[arg-type]
        log.info("call %s: incoming from %s (%s) to %s%s", safe(call.call_id), safe(call.caller.number),
                 safe(call.caller.display_name or "-"), safe(call.dialed),
                 f", replacing {safe(replacing.call_id)}" if replacing is not None else "")
        try:
            if replacing is not None and self.on_replaces is not None:
                await self.on_replaces(call, replacing)
                return
            assert self.on_incoming is not None
            await self.on_incoming(call)
        except Exception:
            log.exception("incoming call handler failed")
            await call.reject(500)
