"""Session timers (RFC 4028): a dead peer or a lost dialog ends the call, not the 4 h limit.

Negotiation: as UAC the bridge offers `Supported: timer`, `Session-Expires` and `Min-SE` (a 422
raises the interval to the peer's Min-SE); as UAS it takes the INVITE's interval (422 if below
`sip.min_se`) and picks the refresher the UAC left open (the UAC if it supports timers, else
itself). The 2xx names the refresher. Then the refresher sends a session refresh at half the
interval: UPDATE without SDP when the peer allows UPDATE, else a re-INVITE with the current SDP;
a 2xx rearms, a 422 retries with the peer's Min-SE, 408/481 (the dialog is gone) ends the call.
The other side ends the call with BYE (`session_expired`) if no refresh arrives by
`interval - min(32, interval / 3)` (section 10).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from .message import SipMessage

if TYPE_CHECKING:
    from .call import SipCall

log = logging.getLogger("bridge.sip")

MIN_SE_FLOOR = 90        # RFC 4028 4: Min-SE is never below 90 s


def parse_expires(value: str | None) -> tuple[int, str | None] | None:
    """'1800;refresher=uac' -> (1800, 'uac'); None if absent or malformed."""
    if not value:
        return None
    head, *params = value.split(";")
    if not head.strip().isdigit():
        return None
    refresher = None
    for param in params:
        name, _, arg = param.partition("=")
        if name.strip().lower() == "refresher" and arg.strip().lower() in ("uac", "uas"):
            refresher = arg.strip().lower()
    return int(head.strip()), refresher


class SessionTimer:
    """One dialog's session timer. `refresher` parameters are relative to each transaction
    (RFC 4028 4): `uac` is whoever sent that request; we keep only whether we refresh."""

    def __init__(self, call: "SipCall", interval: int, we_refresh: bool, peer_supports: bool,
                 peer_allows_update: bool) -> None:
        self.call = call
        self.interval = interval
        self.we_refresh = we_refresh
        self.peer_supports = peer_supports
        self.peer_allows_update = peer_allows_update
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None

    @classmethod
    def negotiate(cls, call: "SipCall", msg: SipMessage, we_are: str, wanted: int, min_se: int) -> "SessionTimer | None":
        """From the peer's 2xx (we sent the INVITE: `uac`) or its INVITE (`uas`)."""
        if wanted <= 0:
            return None
        given = parse_expires(msg.first("Session-Expires"))
        allows_update = "UPDATE" in (msg.first("Allow") or "").upper()
        supports = "timer" in msg.tokens("Supported") or "timer" in msg.tokens("Require")
        if we_are == "uac":
            if given is None:
                return None                   # the UAS does not do session timers (7.2)
            return cls(call, given[0], given[1] != "uas", True, allows_update)
        if given is None:
            return cls(call, max(wanted, min_se), True, supports, allows_update)
        we_refresh = given[1] == "uas" or (given[1] is None and not supports)
        return cls(call, given[0], we_refresh, supports, allows_update)

    def response_headers(self) -> list[tuple[str, str]]:
        """Headers for our 2xx to a request that set up or refreshed the session (section 9)."""
        headers = [("Session-Expires", f"{self.interval};refresher={'uas' if self.we_refresh else 'uac'}")]
        if self.peer_supports:
            headers.append(("Require", "timer"))
        return headers

    def request_headers(self) -> list[tuple[str, str]]:
        """Headers of our own refresh request: we stay the refresher."""
        return [("Session-Expires", f"{self.interval};refresher=uac"), ("Supported", "timer")]

    def start(self) -> None:
        self.stop_timer()
        loop = asyncio.get_running_loop()
        if self.we_refresh:
            self._handle = loop.call_later(self.interval / 2, self._refresh)
        else:
            self._handle = loop.call_later(self.interval - min(32, self.interval / 3), self._expired)

    def stop_timer(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def stop(self) -> None:
        self.stop_timer()
        if self._task is not None and not self._task.done() and self._task is not asyncio.current_task():
            self._task.cancel()

    def refreshed_by_peer(self, msg: SipMessage) -> list[tuple[str, str]]:
        """The peer's re-INVITE/UPDATE refreshed the session: rearm; headers for our 2xx."""
        given = parse_expires(msg.first("Session-Expires"))
        if given is not None:
            self.interval = given[0]
            self.we_refresh = given[1] == "uas"
            self.peer_supports = True
        self.start()
        return self.response_headers() if given is not None else []

    def _expired(self) -> None:
        from .result import SipResult
        log.warning("call %s: the session was not refreshed within %d s", self.call.call_id, self.interval)
        self.call.end_locally(SipResult.SESSION_EXPIRED)

    def _refresh(self) -> None:
        self._task = self.call.ua.spawn(self._send_refresh())

    async def _send_refresh(self, attempts: int = 3) -> None:
        from .result import SipResult
        call = self.call
        for _ in range(attempts):
            if call.state != "answered" or call.dialog is None:
                return
            if self.peer_allows_update:
                code, reply = await call.request("UPDATE", self.request_headers())
            else:
                code, reply = await call.request("INVITE", self.request_headers(), offer=True)
            if 200 <= code < 300:
                given = parse_expires(reply.first("Session-Expires")) if reply is not None else None
                if given is not None:
                    self.interval, self.we_refresh = given[0], given[1] != "uas"
                self.start()
                return
            if code == 422 and reply is not None and (reply.first("Min-SE") or "").strip().isdigit():
                self.interval = max(int((reply.first("Min-SE") or "").strip()), MIN_SE_FLOOR)
                continue
            if code == 491:
                await asyncio.sleep(random.uniform(2.1, 4.0))   # RFC 3261 14.1: glare, try again
                continue
            if code in (0, 408, 481):
                log.warning("call %s: session refresh answered %s: the dialog is gone",
                            call.call_id, code or "nothing")
                call.end_locally(SipResult.SESSION_EXPIRED)
                return
            log.info("call %s: session refresh answered %d; keeping the call", call.call_id, code)
            self.start()
            return
        self.start()
