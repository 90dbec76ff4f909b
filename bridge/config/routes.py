"""The `routes:` section: `to_sip`, `to_app` and `transfer` (deny by default)."""

from __future__ import annotations

from typing import Any

from .. import routing
from ..routing import AppRoute, Router, SipRoute
from .model import PlatformConfig
from .reader import Map, Reader
from .values import duration, nonempty_str, positive_int


def read_routes(r: Reader, root: Map, platform: PlatformConfig) -> Router:
    node = r.section(root, "routes", "routes", {"to_sip", "to_app", "transfer"})
    router = Router()
    names: set[str] = set()
    for direction in ("to_sip", "to_app"):
        items = node.get(direction)
        if items is None:
            continue
        if not isinstance(items, list):
            r.error(node, direction, f"routes.{direction}", "must be a list of routes")
            continue
        for i, item in enumerate(items):
            keypath = f"routes.{direction}[{i}]"
            if not isinstance(item, Map):
                r.error(node, direction, keypath, "each route must be a mapping")
                continue
            build = _sip_route if direction == "to_sip" else _app_route
            route = build(r, item, keypath, i, platform)
            if route is None:
                continue
            if route.name in names:
                r.error(item, "name", f"{keypath}.name", f"route name {route.name!r} is used twice")
            names.add(route.name)
            (router.to_sip if direction == "to_sip" else router.to_app).append(route)  # type: ignore[arg-type]
    items = node.get("transfer")
    if items is not None and not isinstance(items, list):
        r.error(node, "transfer", "routes.transfer", "must be a list of transfer routes")
        items = []
    for i, item in enumerate(items or []):
        keypath = f"routes.transfer[{i}]"
        if not isinstance(item, Map):
            r.error(node, "transfer", keypath, "each transfer route must be a mapping")
            continue
        r.unknown(item, keypath, {"name", "match", "ring_timeout"})
        pats = _patterns(r, item, keypath, ("target", "by"))
        if pats and pats.get("target") is None:
            r.error(item, "match", f"{keypath}.match.target", "is required (the extensions calls may be transferred to)")
            continue
        if not pats:
            continue
        name = str(item.get("name") or f"transfer-{i + 1}")
        if name in names:
            r.error(item, "name", f"{keypath}.name", f"route name {name!r} is used twice")
        names.add(name)
        router.transfer.append(routing.TransferRoute(
            name, pats["target"], pats.get("by"),
            r.get(item, "ring_timeout", f"{keypath}.ring_timeout", duration)))
    return router


def _patterns(r: Reader, item: Map, keypath: str, keys: tuple[str, ...]) -> dict[str, Any]:
    match = item.get("match")
    if not isinstance(match, Map) or not match:
        r.error(item, "match", f"{keypath}.match", f"must be a mapping with some of: {', '.join(keys)}")
        return {}
    r.unknown(match, f"{keypath}.match", set(keys))
    return {k: r.get(match, k, f"{keypath}.match.{k}", routing.compile_pattern) for k in keys}


def _sip_route(r: Reader, item: Map, keypath: str, i: int, platform: PlatformConfig) -> SipRoute | None:
    r.unknown(item, keypath, {"name", "match", "target", "fallback", "caller_id", "display_name",
                              "max_calls", "ring_timeout", "ringback"})
    pats = _patterns(r, item, keypath, ("service", "user", "caller_service", "caller_user"))
    allowed = routing.TO_SIP_FIELDS | routing.groups(*pats.values())

    def template(value: Any) -> str:
        return routing.check_template(value, allowed)

    target = r.get(item, "target", f"{keypath}.target", template, required=True)
    fallback = r.get(item, "fallback", f"{keypath}.fallback",
                            lambda v: tuple(template(x) for x in (v if isinstance(v, list) else [v])), ())
    if not target:
        return None
    return SipRoute(
        name=str(item.get("name") or f"to_sip-{i + 1}"),
        service=pats.get("service"), user=pats.get("user"), caller_service=pats.get("caller_service"),
        caller_user=pats.get("caller_user"), target=target, fallback=fallback,
        caller_id=r.get(item, "caller_id", f"{keypath}.caller_id", template, "{caller_user}"),
        display_name=r.get(item, "display_name", f"{keypath}.display_name", template),
        max_calls=r.get(item, "max_calls", f"{keypath}.max_calls", positive_int),
        ring_timeout=r.get(item, "ring_timeout", f"{keypath}.ring_timeout", duration),
        ringback=r.get(item, "ringback", f"{keypath}.ringback", r.ringback),
    )


def _app_route(r: Reader, item: Map, keypath: str, i: int, platform: PlatformConfig) -> AppRoute | None:
    r.unknown(item, keypath, {"name", "match", "target", "caller_id", "caller_service", "max_calls"})
    pats = _patterns(r, item, keypath, ("dialed", "caller"))
    allowed = routing.TO_APP_FIELDS | routing.groups(*pats.values())
    target = item.get("target")
    if not isinstance(target, Map) or set(target) != {"service", "user"}:
        r.error(item, "target", f"{keypath}.target", "must be a mapping {service: ..., user: ...}")
        return None
    service = r.get(target, "service", f"{keypath}.target.service", nonempty_str)
    if service and service not in platform.services:
        r.error(target, "service", f"{keypath}.target.service", f"unknown service {service!r}")
    user = r.get(target, "user", f"{keypath}.target.user",
                        lambda v: routing.check_template(v, allowed))
    caller_service = r.get(item, "caller_service", f"{keypath}.caller_service", nonempty_str, required=True)
    if caller_service and caller_service not in platform.services:
        r.error(item, "caller_service", f"{keypath}.caller_service", f"unknown service {caller_service!r}")
    if not (service and user and caller_service):
        return None
    return AppRoute(
        name=str(item.get("name") or f"to_app-{i + 1}"),
        dialed=pats.get("dialed"), caller=pats.get("caller"), service=service, user=user,
        caller_service=caller_service,
        caller_id=r.get(item, "caller_id", f"{keypath}.caller_id",
                               lambda v: routing.check_template(v, allowed), "{caller}"),
        max_calls=r.get(item, "max_calls", f"{keypath}.max_calls", positive_int),
    )
