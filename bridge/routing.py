"""YAML routes in both directions: which desk phone an app call rings, which app user a desk
phone reaches. Deny by default: a call that matches no route is refused and nothing rings.

Matching uses full-match regular expressions with named groups; targets, caller ids and display
names are templates over those groups and the call's fields (`{ext}`, `{caller_user}`, ...).
Every rendered target is checked again before use, so a template can never produce a dial
string outside what the route's patterns allow.

Call limits (`max_calls`) are counted by a `CallCount` that each route owns and each call holds
(the decision hands out the route itself), never by the route's name. A reload (`Router.replace`)
hands a route's count on to its new version, found by what the route takes: the same direction
and the same `match` patterns (renamed, retargeted or moved in the list, it is still that route),
or else the same name (its patterns edited). The count then enforces the new `max_calls` over
the calls of both versions. A route that was removed keeps its count for its calls still in
progress (and for calls between their routing decision and their start): they stay limited by
its last `max_calls` and release into it; it is forgotten with them.
"""

from __future__ import annotations

import dataclasses
import re
import string
from dataclasses import dataclass, field
from typing import Any, Union

from . import protocol

EXTENSION = re.compile(r"[0-9A-Za-z*#+._-]{1,64}")
SIP_URI = re.compile(r"sips?:[A-Za-z0-9*#+._~%-]{1,64}@[A-Za-z0-9.:\[\]-]{1,255}(;[A-Za-z0-9=._-]+)*")

TO_SIP_FIELDS = {"caller_user", "caller_service", "callee_user", "callee_service"}
TO_APP_FIELDS = {"dialed", "caller", "caller_name"}


class RouteError(ValueError):
    """A route definition problem (raised at config load, with the key)."""


class CallCount:
    """The calls in progress on one route and the route's limit (None: no limit).

    One object serves every version of a route across reloads; each call holds the one it was
    counted on and releases into it exactly once.
    """

    __slots__ = ("active", "limit")

    def __init__(self, limit: int | None = None) -> None:
        self.active = 0
        self.limit = limit

    def acquire(self) -> bool:
        """Count one more call; False (nothing counted) if the limit is reached."""
        if self.limit is not None and self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        """One call counted here ended (never below zero)."""
        self.active = max(0, self.active - 1)

    def __repr__(self) -> str:
        return f"CallCount({self.active}/{self.limit if self.limit is not None else '-'})"


@dataclass(frozen=True)
class _Counted:
    """A route's limit and its call count: its own from the start, or its previous version's
    (Router.replace)."""

    max_calls: int | None = field(default=None, kw_only=True)
    calls: CallCount = field(default=None, compare=False, repr=False, kw_only=True)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.calls is None:
            object.__setattr__(self, "calls", CallCount(self.max_calls))


@dataclass(frozen=True)
class SipRoute(_Counted):
    """app -> desk phone."""

    name: str
    service: re.Pattern | None
    user: re.Pattern | None
    caller_service: re.Pattern | None
    caller_user: re.Pattern | None
    target: str
    fallback: tuple[str, ...] = ()
    caller_id: str = "{caller_user}"
    display_name: str | None = None
    ring_timeout: float | None = None
    ringback: str | None = None       # bridge.ringback for this route's calls (None: the default)

    @property
    def match(self) -> tuple:
        """What calls this route takes: its identity across reloads."""
        return ("to_sip",) + tuple(p.pattern if p else None for p in
                                   (self.service, self.user, self.caller_service, self.caller_user))


@dataclass(frozen=True)
class AppRoute(_Counted):
    """desk phone -> app."""

    name: str
    dialed: re.Pattern | None
    caller: re.Pattern | None
    service: str
    user: str
    caller_service: str
    caller_id: str = "{caller}"

    @property
    def match(self) -> tuple:
        """What calls this route takes: its identity across reloads."""
        return ("to_app",) + tuple(p.pattern if p else None for p in (self.dialed, self.caller))


Route = Union[SipRoute, AppRoute]


@dataclass(frozen=True)
class TransferRoute:
    """Where a desk phone may transfer the app party of a call (REFER): deny by default."""

    name: str
    target: re.Pattern                 # the Refer-To user part (an extension), full match
    by: re.Pattern | None = None       # the transferring phone's number
    ring_timeout: float | None = None


@dataclass(frozen=True)
class TransferDecision:
    route: TransferRoute
    target: str

    def __str__(self) -> str:
        return f"transfer route {self.route.name}: call {self.target}"


@dataclass(frozen=True)
class SipDecision:
    route: SipRoute
    targets: tuple[str, ...]
    caller_id: str
    display_name: str | None
    ring_timeout: float | None

    def __str__(self) -> str:
        fb = f" then {', '.join(self.targets[1:])}" if len(self.targets) > 1 else ""
        return (f"route {self.route.name}: ring {self.targets[0]}{fb}, caller id {self.caller_id!r}"
                + (f", display name {self.display_name!r}" if self.display_name else ""))


@dataclass(frozen=True)
class AppDecision:
    route: AppRoute
    service: str
    user: str
    caller_service: str
    caller_user: str

    def __str__(self) -> str:
        return f"route {self.route.name}: call {self.user}@{self.service} as {self.caller_user}@{self.caller_service}"


@dataclass(frozen=True)
class Denied:
    reason: str

    def __str__(self) -> str:
        return f"denied: {self.reason}"


def compile_pattern(text: Any) -> re.Pattern:
    if not isinstance(text, str):
        raise RouteError("must be a regular expression string")
    try:
        return re.compile(text)
    except re.error as exc:
        raise RouteError(f"bad regular expression: {exc}") from None


def template_fields(template: Any) -> set[str]:
    if not isinstance(template, str):
        raise RouteError("must be a template string")
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise RouteError(f"bad template: {exc}") from None


def check_template(template: Any, allowed: set[str]) -> str:
    unknown = template_fields(template) - allowed
    if "" in unknown:
        raise RouteError("positional {} is not allowed; name the field")
    if unknown:
        raise RouteError(f"unknown template field(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(allowed))})")
    return template


def groups(*patterns: re.Pattern | None) -> set[str]:
    return {name for p in patterns if p is not None for name in p.groupindex}


def _match(pattern: re.Pattern | None, value: str | None, values: dict[str, str]) -> bool:
    if pattern is None:
        return True
    m = pattern.fullmatch(value or "")
    if m is None:
        return False
    values.update({k: v for k, v in m.groupdict().items() if v is not None})
    return True


@dataclass
class Router:
    """The routing table; each route counts its own calls in progress (`route.calls`)."""

    to_sip: list[SipRoute] = field(default_factory=list)
    to_app: list[AppRoute] = field(default_factory=list)
    transfer: list[TransferRoute] = field(default_factory=list)

    def replace(self, other: "Router") -> None:
        """Take new routes (config reload), handing each old route's call count to its new
        version: the route with the same match, else the one with the same name."""
        old: list[Route] = [*self.to_sip, *self.to_app]
        new: list[Route] = [*other.to_sip, *other.to_app]
        by_match = {r.match: r for r in reversed(old)}     # the first of equal matches wins
        by_name = {(r.match[0], r.name): r for r in old}
        taken: set[int] = set()
        # matches first for every route, then names: a new route named like an old one never
        # takes the count of an old route that is still there under another name
        for i, route in enumerate(new):
            new[i] = self._carry(route, by_match.get(route.match), taken)
        for i, route in enumerate(new):
            new[i] = self._carry(route, by_name.get((route.match[0], route.name)), taken)
        self.to_sip = [r for r in new if isinstance(r, SipRoute)]
        self.to_app = [r for r in new if isinstance(r, AppRoute)]
        self.transfer = list(other.transfer)

    @staticmethod
    def _carry(route: Route, previous: Route | None, taken: set[int]) -> Route:
        """`route` counting on `previous`'s count, unless it has one already or that was taken."""
        if previous is None or id(previous.calls) in taken or id(route.calls) in taken:
            return route
        taken.add(id(previous.calls))
        previous.calls.limit = route.max_calls
        return dataclasses.replace(route, calls=previous.calls)

    def route_to_sip(self, caller_service: str, caller_user: str, callee_service: str,
                     callee_user: str) -> SipDecision | Denied:
        for r in self.to_sip:
            values = {"caller_user": caller_user, "caller_service": caller_service,
                      "callee_user": callee_user, "callee_service": callee_service}
            if not (_match(r.service, callee_service, values) and _match(r.user, callee_user, values)
                    and _match(r.caller_service, caller_service, values)
                    and _match(r.caller_user, caller_user, values)):
                continue
            targets = tuple(t.format_map(values) for t in (r.target, *r.fallback))
            bad = [t for t in targets if not (EXTENSION.fullmatch(t) or SIP_URI.fullmatch(t))]
            if bad:
                return Denied(f"route {r.name} produced an invalid target {bad[0]!r}")
            caller_id = r.caller_id.format_map(values)
            if not EXTENSION.fullmatch(caller_id):
                caller_id = "anonymous"
            display = r.display_name.format_map(values) if r.display_name else None
            return SipDecision(r, targets, caller_id, display, r.ring_timeout)
        return Denied(f"no route from {caller_user}@{caller_service} to {callee_user}@{callee_service}")

    def route_to_app(self, dialed: str, caller: str | None, caller_name: str | None = None) -> AppDecision | Denied:
        for r in self.to_app:
            values = {"dialed": dialed, "caller": caller or "anonymous", "caller_name": caller_name or ""}
            if not (_match(r.dialed, dialed, values) and _match(r.caller, caller, values)):
                continue
            user = r.user.format_map(values)
            caller_user = r.caller_id.format_map(values)
            if not protocol.USER_ID.fullmatch(user):
                return Denied(f"route {r.name} produced an invalid app user {user!r}")
            if not protocol.USER_ID.fullmatch(caller_user):
                caller_user = "anonymous"
            return AppDecision(r, r.service, user, r.caller_service, caller_user)
        return Denied(f"no route for {dialed!r} from {caller or 'anonymous'}")

    def route_transfer(self, target: str, by: str | None) -> TransferDecision | Denied:
        """May phone `by` transfer its app party to extension `target`?"""
        for r in self.transfer:
            if _match(r.target, target, {}) and _match(r.by, by, {}):
                if not EXTENSION.fullmatch(target):
                    return Denied(f"transfer target {target[:40]!r} is not an extension")
                return TransferDecision(r, target)
        return Denied(f"no transfer route to {target[:40]!r} from {by or 'anonymous'}")
