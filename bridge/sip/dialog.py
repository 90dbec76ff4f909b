"""SIP dialogs (RFC 3261 section 12): the state two user agents share for one call.

A dialog knows its identifiers (Call-ID, tags), both CSeq spaces, the remote target and the
route set, and builds in-dialog requests from them (12.2.1.1: loose routing, and strict
routing for an old proxy whose Record-Route lacks `;lr`). Target refresh requests (re-INVITE,
UPDATE) move the remote target (12.2); a request whose CSeq is lower than the last one seen is
out of order (500). `peers` are the addresses allowed to send requests inside the dialog:
its next hop and its remote target, as resolved when it was set up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .message import Request
from .uri import NameAddr, SipParseError, SipUri


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str           # the name-addr we put in From (UAC) or To (UAS), without the tag
    remote_uri: str
    remote_target: str       # the peer's Contact URI
    route_set: list[str]     # Route header values for our requests, in order
    local_seq: int
    remote_seq: int | None = None
    peers: set[str] = field(default_factory=set)
    credentials: list[tuple[str, str]] = field(default_factory=list)   # proxy credentials to reuse

    @property
    def id(self) -> tuple[str, str, str]:
        return self.call_id, self.local_tag, self.remote_tag

    def request(self, method: str, via: str, headers: list[tuple[str, str]] | None = None,
                body: str = "", content_type: str = "application/sdp", cseq: int | None = None) -> Request:
        """A request inside the dialog; a new local CSeq unless `cseq` is given (ACK, CANCEL)."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        uri, routes = self.remote_target, list(self.route_set)
        if routes and not self._loose(routes[0]):
            uri = NameAddr.parse(routes[0]).uri_text          # strict routing (12.2.1.1)
            routes = routes[1:] + [f"<{self.remote_target}>"]
        return Request(method, uri, via, f"{self.local_uri};tag={self.local_tag}",
                       f"{self.remote_uri};tag={self.remote_tag}", self.call_id, cseq, routes,
                       list(headers or []), body, content_type)

    @staticmethod
    def _loose(route: str) -> bool:
        try:
            return NameAddr.parse(route).uri.loose_route
        except SipParseError:
            return True

    def next_hop(self) -> SipUri:
        """Where in-dialog requests are sent: the first route, else the remote target."""
        return NameAddr.parse(self.route_set[0]).uri if self.route_set else SipUri.parse(self.remote_target)

    def accept_remote_seq(self, cseq: int, method: str) -> bool:
        """False if the request is out of order (lower CSeq than seen before): answer 500."""
        if method in ("ACK", "CANCEL"):
            return True
        if self.remote_seq is not None and cseq < self.remote_seq:
            return False
        self.remote_seq = cseq
        return True

    def refresh_target(self, contact: NameAddr | None) -> bool:
        """A target refresh (re-INVITE, UPDATE, their 2xx): True if the target moved."""
        if contact is None or contact.uri_text == self.remote_target:
            return False
        self.remote_target = contact.uri_text
        return True
