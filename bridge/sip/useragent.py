"""The SIP user agent: bridge's account at the PBX. It registers, places calls, takes calls.

Everything runs on the asyncio loop, nothing blocks. What arrives passes the checks of
`bridge.sip.receiving`, in order, before it can take anything; where requests go is
`bridge.sip.sending`. A crash journal (`bridge.sip.journal`) lets the next start end what
this process left open.

One transport carries it all (`sip.transport`): UDP (`bridge.sip.transport`), TCP or TLS
(`bridge.sip.stream`); Via, Contact (`;transport=tcp|tls`) and the SRV lookup follow it. A
`sips:` Request-URI (RFC 3261 19.1.2) is taken only over TLS (else 416), and a call with one
has `sips:` in its Contact (8.1.1.8, 12.1.1); the registration's Contact stays `sip:` with
`;transport=tls`, as PBXs expect. Over TCP and TLS, a connection of ours to the PBX that drops
makes the registration check at once (which connects again); one that cannot be opened ends the
requests waiting on it at once. IPv4 and IPv6 alike, and both on `::` (see `bridge.inet`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
from typing import Awaitable, Callable, Protocol

from .. import inet
from ..config import SipConfig
from ..jitter import JitterBuffer
from ..logsafe import safe
from ..ports import PortPool
from ..rtp import RtpEndpoint
from . import sdp
from .call import SipCall
from .incoming import IncomingCall
from .journal import Journal, down_entry, end_left_open, invite_entry, ringing_entry, up_entry
from .message import Request, SipMessage, SipParseError, digest, new_branch, new_tag, response
from .outgoing import OutgoingCall
from .receiving import Receiving
from .registration import Registration, RegistrationState
from .resolver import ResolveError, Resolver
from .result import CallEnd, SipResult
from .sending import Sending
from .sdes import redact
from .servertransaction import ServerTransaction
from .stream import StreamTransport, tls_contexts
from .timers import Timers
from .transaction import TransactionLayer
from .transport import UdpTransport
from .trust import TrustPolicy, networks
from .uri import SipUri, hostport, is_ip

log = logging.getLogger("bridge.sip")

Addr = tuple[str, int]
IncomingHandler = Callable[[IncomingCall], Awaitable[None]]


class DialogSink(Protocol):
    """Keeps the crash journal's entries (`bridge.sip.journal`): a file, or a mirror in Redis."""

    def write(self, entry: dict) -> None: ...
ACCEPT = "application/sdp, application/dtmf-relay, application/dtmf"


class UserAgent(Receiving, Sending):
    """bridge's SIP account: registers, places calls, receives calls."""

    allow = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, REFER, PRACK"

    def __init__(self, cfg: SipConfig, on_incoming: IncomingHandler | None = None,
                 journal: str | None = None) -> None:
        self.cfg = cfg
        self.on_incoming = on_incoming
        self.supported = ("timer", "replaces") + (("100rel",) if cfg.reliable_provisionals != "off" else ())
        # an INVITE with Replaces naming one of our calls (RFC 3891): (the new call, the old one)
        self.on_replaces: Callable[[IncomingCall, SipCall], Awaitable[None]] | None = None
        self.timers = Timers(cfg.t1, cfg.t2, cfg.t4)
        self.counters: collections.Counter[str] = collections.Counter()
        media = networks(cfg.media_networks) if cfg.media_networks is not None else None
        self.policy = TrustPolicy(networks(cfg.trusted_peers), media, cfg.untrusted)
        self.transport: UdpTransport | StreamTransport
        if cfg.transport == "udp":
            self.transport = UdpTransport(self._on_message, trace=cfg.trace, hep=cfg.hep)
        else:
            contexts = tls_contexts(cfg.tls, cfg.registrar_host) if cfg.transport == "tls" else None
            self.transport = StreamTransport(self._on_message, cfg.connections, tls=contexts, trace=cfg.trace,
                                             hep=cfg.hep, counters=self.counters, trusted=self.policy.trusted,
                                             source_host=cfg.contact_host)
            self.transport.on_closed = self._connection_closed
            self.transport.on_failed = self._connection_failed
        self.layer = TransactionLayer(self.transport, self.timers, cfg.max_transactions)
        family = socket.AF_UNSPEC if inet.dual_stack(cfg.bind_host) else inet.family(cfg.bind_host)
        self.resolver = Resolver(family, cfg.dns_servers)
        self.domain = hostport(cfg.domain)          # as a URI writes it (an IPv6 address in brackets)
        self.registrar = Registration(self)
        self.ports = PortPool(cfg.rtp_low, cfg.rtp_high, cfg.rtp_host)
        self.calls: dict[str, SipCall] = {}
        self.journal = Journal(journal) if journal else None
        # where each dialog event is written: the journal, and a cluster node's mirror in Redis
        self.dialog_sinks: list[DialogSink] = [self.journal] if self.journal is not None else []
        self.left_open: set[str] = set()            # Call-IDs the journal found open at start
        self.draining = False                       # OPTIONS answer 503: probes take this node out of the set
        self.recovered = 0
        self._tasks: set[asyncio.Task] = set()
        self._proxy: list[Addr] = []
        self._silence: dict[str, tuple[int, float]] = {}
        self.local: Addr = ("", 0)

    @property
    def registration(self) -> RegistrationState:
        return self.registrar.state

    # life ------------------------------------------------------------------------------

    async def start(self) -> None:
        recover: list[dict] = []
        if self.journal is not None:
            recover = self.journal.open()              # raises JournalError: refuse to start
            self.left_open = {entry["call_id"] for entry in recover}
        await self.transport.open(self.cfg.bind_host, self.cfg.bind_port)
        self.local = self.transport.local
        with contextlib.suppress(ResolveError):
            await self.proxy_addresses()
        log.info("SIP on %s %s, registrar %s%s", self.cfg.transport, hostport(*self.local),
                 hostport(self.cfg.registrar_host, self.cfg.registrar_port),
                 " (TLS: connections the bridge opens only, no sip.tls.cert)"
                 if isinstance(self.transport, StreamTransport) and not self.transport.listening else "")
        if recover:
            self.spawn(end_left_open(self, recover))
        if self.cfg.register:
            self.spawn(self.registrar.run())
        if self.cfg.media_timeout:
            self.spawn(self._watch_media())

    async def stop(self) -> None:
        """Hang up every call (BYE/CANCEL/480), unregister, then close: bounded to a few seconds."""
        hangups = [asyncio.ensure_future(call.hangup()) for call in list(self.calls.values())]
        if hangups:
            await asyncio.wait(hangups, timeout=3)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.registrar.unregister(), 2)
        deadline = time.monotonic() + 2        # let the BYEs and CANCELs be answered (or resent)
        while any(tx.state in ("calling", "trying", "proceeding") for tx in self.layer.client.values()) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1)
        self.layer.close()
        self.transport.close()
        for call in list(self.calls.values()):
            call.media.close()
        if self.journal is not None and not self.calls:
            self.journal.close()

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("SIP task failed", exc_info=task.exception())

    # what we are -----------------------------------------------------------------------

    def via(self) -> str:
        return (f"SIP/2.0/{self.transport.name} {hostport(self.cfg.contact_host, self.local[1])};"
                f"branch={new_branch()};rport")

    def contact_uri(self, secure: bool = False) -> SipUri:
        """Our Contact: `sips:` for a call with a sips: Request-URI, else `sip:` with the transport."""
        if secure:
            return SipUri("sips", self.cfg.username, self.cfg.contact_host, self.local[1])
        params: dict[str, str | None] = {"transport": self.cfg.transport} if self.cfg.transport != "udp" else {}
        return SipUri("sip", self.cfg.username, self.cfg.contact_host, self.local[1], params)

    def contact_header(self, secure: bool = False) -> str:
        return f"<{self.contact_uri(secure)}>"

    def contact_headers(self, secure: bool = False) -> list[tuple[str, str]]:
        return [("Contact", self.contact_header(secure)), ("Allow", self.allow),
                ("Supported", ", ".join(self.supported))]

    def capabilities(self) -> list[tuple[str, str]]:
        return [("Allow", self.allow), ("Accept", ACCEPT), ("Supported", ", ".join(self.supported))]

    def timer_headers(self, min_se: int | None = None) -> list[tuple[str, str]]:
        """Session-Expires and Min-SE for an INVITE (RFC 4028), if session timers are on."""
        if not self.cfg.session_expires:
            return []
        floor = max(min_se or 0, self.cfg.min_se)
        return [("Session-Expires", str(max(self.cfg.session_expires, floor))), ("Min-SE", str(floor))]

    def digest(self, challenge: dict[str, str], method: str, uri: str, header: str) -> tuple[str, str]:
        return digest(challenge, method, uri, self.cfg.auth_username, self.cfg.password, header)

    def credentials(self, reply: SipMessage, method: str, uri: str) -> list[tuple[str, str]]:
        """Credentials answering a 401/407 (empty if the challenge is unusable)."""
        header = "Authorization" if reply.code == 401 else "Proxy-Authorization"
        try:
            return [self.digest(reply.challenge, method, uri, header)]
        except SipParseError:
            return []

    # media -----------------------------------------------------------------------------

    def usable_sdp(self, body: bytes, codecs: tuple[str, ...], peer: str | None) -> tuple[sdp.Audio, tuple[str, int]]:
        """The audio stream of `body` and the codec to use; SdpError if unusable or against policy."""
        audio, codec = sdp.choose(sdp.parse(body), codecs, self.cfg.srtp)
        self.check_media_address(audio, peer)
        return audio, codec

    def check_media_address(self, audio: sdp.Audio, peer: str | None) -> None:
        """The media policy (DESIGN.md 8): RTP only to the signalling peer or `sip.media_networks`."""
        if audio.held_by_address:
            return
        if not is_ip(audio.address):
            self.counters["media_policy"] += 1
            raise sdp.SdpError(f"the SDP connection address {audio.address[:60]!r} is not an IP address")
        if not self.policy.media_allowed(audio.address, peer):
            self.counters["media_policy"] += 1
            raise sdp.SdpError(f"media to {audio.address} is not allowed (not the signalling peer, "
                               "not in sip.media_networks)")

    async def _media(self) -> RtpEndpoint:
        jitter = JitterBuffer(target_ms=round(self.cfg.jitter_target * 1000))
        return await RtpEndpoint.create(self.cfg.rtp_host, port_pool=self.ports, jitter=jitter,
                                        source_allowed=self.policy.media_allowed)

    # answering -------------------------------------------------------------------------

    def reply(self, tx: ServerTransaction, code: int, *, to_tag: str | None = None,
              headers: list[tuple[str, str]] | None = None, body: str = "", reason: str | None = None) -> None:
        tx.respond(response(tx.request, code, to_tag=to_tag, headers=headers, body=body, reason=reason), code)

    def reply_stateless(self, msg: SipMessage, addr: Addr, code: int, *, headers: list[tuple[str, str]] | None = None,
                        reason: str | None = None, to_tag: str = "") -> None:
        """A response that keeps no state (RFC 3261 8.2.7): a retransmitted request gets another."""
        self.transport.send(response(msg, code, to_tag=to_tag or new_tag(), headers=headers,
                                     reason=reason), addr)

    # calling ---------------------------------------------------------------------------

    async def call(self, target: str, *, caller: str | None = None, display_name: str | None = None,
                   ring_timeout: float | None = None, headers: list[tuple[str, str]] | None = None,
                   prefer: str | None = None) -> OutgoingCall:
        """Place a call to an extension or SIP URI; watch `answered` and `ended`. `headers` go
        into the INVITE (Replaces and Referred-By, for a transfer); `prefer`: a codec to offer
        first (see `sdp.offer_codecs`)."""
        media = await self._media()
        try:
            call = OutgoingCall(self, media, target, caller or self.cfg.username, display_name,
                                ring_timeout or self.cfg.ring_timeout, headers, prefer)
        except Exception:
            media.close()
            raise
        self.calls[call.call_id] = call
        log.info("call %s: calling %s", call.call_id, safe(target))
        task = self.spawn(call.run())
        task.add_done_callback(lambda t: call._finish(CallEnd(SipResult.FAILED, 0, "local"))
                               if t.cancelled() or t.exception() else None)
        return call

    def forget(self, call: SipCall) -> None:
        """The call ended: drop it, and close its journal entry."""
        if self.calls.get(call.call_id) is call:
            del self.calls[call.call_id]
        self.counters["rtp_foreign"] += call.media.stats.foreign
        if call.media.stats.srtp_failed:
            self.counters["srtp_auth_failed"] += call.media.stats.srtp_failed
            log.warning("call %s: %d SRTP packet(s) did not authenticate and were dropped", call.call_id,
                        call.media.stats.srtp_failed)
        self._silence.pop(call.call_id, None)
        self._journal(down_entry(call.call_id))

    # watching ----------------------------------------------------------------------------

    async def _watch_media(self) -> None:
        """End answered calls whose peer sent no RTP for `sip.media_timeout` (hold excepted)."""
        timeout = self.cfg.media_timeout
        period = min(1.0, timeout / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for call in list(self.calls.values()):
                if call.state != "answered":
                    continue
                received = call.media.stats.packets_received
                last = self._silence.get(call.call_id)
                if last is None or last[0] != received or not call.media.receiving or call.on_hold_now:
                    self._silence[call.call_id] = (received, now)
                elif now - last[1] >= timeout:
                    self.counters["media_timeouts"] += 1
                    self._silence.pop(call.call_id, None)
                    call.end_locally(SipResult.MEDIA_TIMEOUT)

    # the crash journal -------------------------------------------------------------------

    def _journal(self, entry: dict) -> None:
        for sink in self.dialog_sinks:
            sink.write(entry)

    def journal_invite(self, call: OutgoingCall, invite: Request, dest: Addr) -> None:
        if self.dialog_sinks:
            self._journal(invite_entry(call.call_id, redact(invite.render()), dest))

    def journal_ringing(self, call: IncomingCall) -> None:
        if self.dialog_sinks and call.dialog is not None:
            data = response(call.invite, 480, to_tag=call.dialog.local_tag)
            self._journal(ringing_entry(call.call_id, data, call.tx.addr))

    def journal_up(self, call: SipCall) -> None:
        if self.dialog_sinks and call.dialog is not None:
            self._journal(up_entry(call.dialog))
