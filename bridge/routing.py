"""YAML routes in both directions: which desk phone an app call rings, which app user a desk
phone reaches. Deny by default: a call that matches no route is refused and nothing rings.

Matching uses full-match regular expressions with named groups; targets, caller ids and display
names are templates over those groups and the call's fields (`{ext}`, `{caller_user}`, ...).
Every rendered target is checked again before use, so a template can never produce a dial
string outside what the route's patterns allow.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any

from . import protocol

EXTENSION = re.compile(r"[0-9A-Za-z*#+._-]{1,64}")
SIP_URI = re.compile(r"sips?:[A-Za-z0-9*#+._~%-]{1,64}@[A-Za-z0-9.:\[\]-]{1,255}(;[A-Za-z0-9=._-]+)*")

TO_SIP_FIELDS = {"caller_user", "caller_service", "callee_user", "callee_service"}
TO_APP_FIELDS = {"dialed", "caller", "caller_name"}


class RouteError(ValueError):
    """A route definition problem (raised at config load, with the key)."""


@dataclass(frozen=True)
class SipRoute:
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
    max_calls: int | None = None
    ring_timeout: float | None = None


@dataclass(frozen=True)
class AppRoute:
    """desk phone -> app."""

    name: str
    dialed: re.Pattern | None
    caller: re.Pattern | None
    service: str
    user: str
    caller_service: str
    caller_id: str = "{caller}"
    max_calls: int | None = None


@dataclass(frozen=True)
class SipDecision:
    route: str
    targets: tuple[str, ...]
    caller_id: str
    display_name: str | None
    ring_timeout: float | None

    def __str__(self) -> str:
        fb = f" then {', '.join(self.targets[1:])}" if len(self.targets) > 1 else ""
        return (f"route {self.route}: ring {self.targets[0]}{fb}, caller id {self.caller_id!r}"
                + (f", display name {self.display_name!r}" if self.display_name else ""))


@dataclass(frozen=True)
class AppDecision:
    route: str
    service: str
    user: str
    caller_service: str
    caller_user: str

    def __str__(self) -> str:
        return f"route {self.route}: call {self.user}@{self.service} as {self.caller_user}@{self.caller_service}"


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
    """The routing table plus per-route counters of active calls."""

    to_sip: list[SipRoute] = field(default_factory=list)
    to_app: list[AppRoute] = field(default_factory=list)
    active: dict[str, int] = field(default_factory=dict)

    def replace(self, other: "Router") -> None:
        """Take new routes (config reload), keeping the counters of calls in progress."""
        self.to_sip, self.to_app = other.to_sip, other.to_app

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
            return SipDecision(r.name, targets, caller_id, display, r.ring_timeout)
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
            return AppDecision(r.name, r.service, user, r.caller_service, caller_user)
        return Denied(f"no route for {dialed!r} from {caller or 'anonymous'}")

    def acquire(self, name: str, limit: int | None) -> bool:
        """Count a call on route `name`; False if the route's limit is reached."""
        current = self.active.get(name, 0)
        if limit is not None and current >= limit:
            return False
        self.active[name] = current + 1
        return True

    def release(self, name: str) -> None:
        if self.active.get(name, 0) > 0:
            self.active[name] -= 1

    def limit_of(self, name: str) -> int | None:
        for r in (*self.to_sip, *self.to_app):
            if r.name == name:
                return r.max_calls
        return None
