"""Registration (RFC 3261 section 10) that tracks what the registrar really holds.

- REGISTER with digest (the last challenge is reused, so a refresh is one round trip; a stale
  nonce costs one retry); 423 raises the interval to Min-Expires.
- Refresh at 80 % of the granted time (at most 30 s early).
- Between refreshes, every `sip.keepalive`: a binding query (REGISTER without Contact, 10.2.3)
  whose 200 lists the registrar's bindings. Our contact missing means the registrar lost it
  (a restart, a failover): register again at once. No answer means the registrar is down.
- While the registrar does not answer, REGISTER is sent again and again with a short
  transaction timeout (a send at least every 0.5 s), so the registration returns within a
  second of the registrar coming back. Refusals (401, 403, 404...) back off up to
  `sip.max_backoff` and are logged as errors with their reason: a wrong password is loud.
- Any other sign of trouble (an INVITE to the proxy that got no answer) checks at once.
`state` is what /healthz reports: unregistered, registering, registered, failed, disabled.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..logsafe import safe
from .message import Request, SipMessage, SipParseError, new_call_id, new_tag
from .resolver import ResolveError
from .uri import NameAddr

if TYPE_CHECKING:
    from .useragent import UserAgent

log = logging.getLogger("bridge.sip")

UNREACHABLE = 408


def _ip(host: str) -> str:
    """An IP address in one spelling (a registrar may expand an IPv6 address), else the host."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()

UNRESOLVED = 0
PROBE_TIMEOUT = 1.0
RETRY_INTERVAL = 0.5


@dataclass
class RegistrationState:
    """The registration as the daemon shows it."""

    state: str = "unregistered"    # unregistered, registering, registered, failed, disabled
    detail: str = ""
    since: float = field(default_factory=time.time)
    expires: float = 0.0
    count: int = 0                 # successful registrations so far

    def set(self, state: str, detail: str = "", level: int = logging.INFO) -> None:
        if (state, detail) != (self.state, self.detail):
            log.log(level, "registration: %s %s", state, detail)
            self.state, self.detail, self.since = state, detail, time.time()


class Registration:
    def __init__(self, ua: "UserAgent") -> None:
        self.ua = ua
        self.cfg = ua.cfg
        self.state = RegistrationState(state="disabled" if not ua.cfg.register else "unregistered")
        self.call_id = new_call_id(ua.cfg.contact_host)
        self.tag = new_tag()
        self.cseq = 0
        self._challenge: tuple[int, dict[str, str]] | None = None
        self._wake = asyncio.Event()
        self.resolve_error = ""
        self.answer = ""               # the registrar's last status line, as logged

    @property
    def registered(self) -> bool:
        return self.state.state == "registered"

    def check_now(self) -> None:
        """Something suggests the registrar lost us (or went away): check at once."""
        self._wake.set()

    # one request -----------------------------------------------------------------------

    async def _send(self, expires: int | None, timeout: float) -> SipMessage | None:
        """REGISTER (a query when `expires` is None), answering one challenge."""
        cfg, ua = self.cfg, self.ua
        self.resolve_error = ""
        uri = f"sip:{ua.domain}"
        aor = f"<sip:{cfg.username}@{ua.domain}>"
        headers: list[tuple[str, str]] = []
        if expires is not None:
            headers = [("Contact", ua.contact_header()), ("Expires", str(expires)),
                       ("Allow", ua.allow)]
        reply: SipMessage | None = None
        for attempt in range(2):
            creds = self._credentials(uri)
            self.cseq += 1
            request = Request("REGISTER", uri, ua.via(), f"{aor};tag={self.tag}", aor, self.call_id,
                              self.cseq, headers=headers + creds)
            try:
                dests = await ua.proxy_addresses()
            except ResolveError as exc:
                self.resolve_error = str(exc)
                return None
            reply = await ua.layer.request(request, dests[0], timeout=timeout).next()
            if reply is None:
                ua.proxy_failed(dests[0])
                return None
            self.answer = f"{reply.code} {safe(reply.reason, 80)}".strip()
            if reply.code in (401, 407) and attempt == 0:
                self._challenge = (reply.code, reply.challenge)   # new, or our reused nonce was stale
                continue
            return reply
        return reply

    def _credentials(self, uri: str) -> list[tuple[str, str]]:
        if self._challenge is None:
            return []
        code, challenge = self._challenge
        header = "Authorization" if code == 401 else "Proxy-Authorization"
        try:
            return [self.ua.digest(challenge, "REGISTER", uri, header)]
        except SipParseError:
            return []

    def _mine(self, reply: SipMessage) -> int | None:
        """Expires of our binding in a 200 (None: not listed)."""
        ours = self.ua.contact_uri()
        for value in reply.all("Contact"):
            try:
                contact = NameAddr.parse(value)
            except SipParseError:
                continue
            u = contact.uri
            if (u.user, _ip(u.host), u.port or 5060) == (ours.user, _ip(ours.host), ours.port or 5060):
                expires = contact.params.get("expires")
                if expires and expires.isdigit():
                    return int(expires)
                header = reply.first("Expires")
                return int(header) if header and header.isdigit() else self.cfg.register_expires
        return None

    async def register(self, expires: int, timeout: float | None = None) -> tuple[int, int]:
        """(final status, granted seconds); status 408 when the registrar did not answer."""
        for _ in range(2):
            reply = await self._send(expires, timeout or self.cfg.transaction_timeout)
            if reply is None:
                return (UNRESOLVED if self.resolve_error else UNREACHABLE), 0
            if reply.code == 423 and (reply.first("Min-Expires") or "").isdigit():
                expires = int(reply.first("Min-Expires") or expires)
                continue
            if 200 <= reply.code < 300:
                granted = self._mine(reply) if expires else 0
                return reply.code, granted if granted is not None else expires
            return reply.code, 0
        return 423, 0

    async def query(self) -> bool | None:
        """Does the registrar still hold our binding? None: it did not answer."""
        reply = await self._send(None, self.cfg.transaction_timeout)
        if reply is None:
            return None if not self.resolve_error else True
        if not 200 <= reply.code < 300:
            return True                          # cannot tell; the next refresh will
        return self._mine(reply) is not None

    # the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        reg = self.state
        backoff = 1.0
        unreachable = False
        while True:
            if reg.state not in ("failed", "registered"):      # a refresh stays "registered"
                reg.set("registering")
            attempt = time.monotonic()
            code, granted = await self.register(self.cfg.register_expires,
                                                PROBE_TIMEOUT if unreachable else None)
            if 200 <= code < 300 and granted > 0:
                reg.count += 1
                reg.expires = time.time() + granted
                reg.set("registered", f"for {granted} s")
                backoff, unreachable = 1.0, False
                await self._hold(granted)
                continue
            if code == UNREACHABLE:
                if not unreachable:
                    reg.set("failed", "registrar not answering", logging.WARNING)
                unreachable = True
                # again at once to notice its return quickly, but not faster than every 0.5 s (a
                # refused TCP connection or certificate fails at once)
                pause = RETRY_INTERVAL - (time.monotonic() - attempt)
                if pause > 0:
                    await self._sleep(pause)
                continue
            unreachable = False
            if code == UNRESOLVED:
                reg.set("failed", self.resolve_error, logging.ERROR)
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.cfg.max_backoff)
                continue
            why = {401: "check sip.username, sip.auth_username and sip.password",
                   407: "check sip.username, sip.auth_username and sip.password",
                   403: "the registrar forbids this account"}.get(code, "")
            reg.set("failed", f"registrar answered {self.answer or code}" + (f" ({why})" if why else ""),
                    logging.ERROR)
            await self._sleep(backoff)
            backoff = min(backoff * 2, self.cfg.max_backoff)

    async def _hold(self, granted: int) -> None:
        """While registered: query every keepalive, until the refresh is due or something is wrong."""
        refresh_at = time.monotonic() + max(granted * 0.8, granted - 30, 1)
        while True:
            now = time.monotonic()
            if now >= refresh_at:
                return
            await self._sleep(min(self.cfg.keepalive, refresh_at - now))
            if time.monotonic() >= refresh_at:
                return
            present = await self.query()
            if present is None:
                self.state.set("failed", "registrar not answering", logging.WARNING)
                return
            if not present:
                log.warning("registration: the registrar lost our binding (restarted?); registering again")
                self.state.set("registering", "binding lost")
                return

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def unregister(self) -> None:
        if self.registered:
            code, _ = await self.register(0, 2.0)
            log.info("registration: removed (%d)", code)
            self.state.set("unregistered")
