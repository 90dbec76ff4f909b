"""Route call limits across reloads: counts follow the route (its match, else its name), never
its name alone; a removed route keeps limiting and releasing the calls that hold it."""

from __future__ import annotations

import yaml

from bridge import config
from bridge.routing import AppDecision, Denied, Router, SipDecision

ROOT_YAML = {
    "platform": {"listen": "127.0.0.1:8080", "services": {
        "demo-app": {"api_key": "k1", "api_secret": "a" * 40},
        "demo-desk": {"api_key": "k2", "api_secret": "b" * 40}}},
}
DESK = {"service": "demo-desk", "user": "desk-(?P<ext>\\d{4})"}
SALES = {"service": "demo-desk", "user": "sales"}


def router(to_sip: list[dict], to_app: list[dict] | None = None) -> Router:
    """A routing table as `bridge run` loads it from YAML."""
    data = {**ROOT_YAML, "routes": {"to_sip": to_sip, "to_app": to_app or []}}
    return config.loads(yaml.safe_dump(data), "routes.yaml").router


def desk(name: str | None = "desk", max_calls: int | None = 2, match: dict = DESK, target: str = "{ext}") -> dict:
    route: dict = {"match": match, "target": target}
    if name:
        route["name"] = name
    if max_calls is not None:
        route["max_calls"] = max_calls
    return route


def to_desk(r: Router, user: str = "desk-2001") -> SipDecision:
    decision = r.route_to_sip("demo-app", "alice", "demo-desk", user)
    assert isinstance(decision, SipDecision), decision
    return decision


def test_a_route_counts_its_calls_up_to_max_calls():
    r = router([desk(max_calls=2)])
    held = [to_desk(r).route for _ in range(2)]
    assert all(route.calls.acquire() for route in held)
    assert not to_desk(r).route.calls.acquire()               # the third is refused...
    assert r.to_sip[0].calls.active == 2                      # ...and not counted
    held[0].calls.release()
    assert to_desk(r).route.calls.acquire()


def test_a_renamed_route_keeps_counting_its_live_calls():
    r = router([desk("desk", max_calls=2)])
    live = [to_desk(r).route for _ in range(2)]
    assert all(route.calls.acquire() for route in live)
    r.replace(router([desk("phones", max_calls=2)]))          # SIGHUP: same match, new name
    renamed = to_desk(r)
    assert renamed.route.name == "phones"
    assert not renamed.route.calls.acquire()                  # still 2 live calls: at the limit
    live[0].calls.release()                                   # a call of the old version ends
    assert renamed.route.calls.acquire()
    assert r.to_sip[0].calls.active == 2


def test_unnamed_routes_renumbered_by_an_insert_keep_their_counts():
    r = router([desk(None, max_calls=1)])                      # named to_sip-1
    assert to_desk(r).route.calls.acquire()
    r.replace(router([desk(None, match=SALES, target="2000"), desk(None, max_calls=1)]))
    moved = to_desk(r).route
    assert moved.name == "to_sip-2" and moved.calls.active == 1
    assert not moved.calls.acquire()
    sales = r.route_to_sip("demo-app", "alice", "demo-desk", "sales")
    assert isinstance(sales, SipDecision) and sales.route.name == "to_sip-1" and sales.route.calls.active == 0


def test_an_edited_match_keeps_the_count_by_name_and_a_lower_limit_applies_at_once():
    r = router([desk("desk", max_calls=3)])
    for _ in range(2):
        assert to_desk(r).route.calls.acquire()
    wider = {"service": "demo-desk", "user": "desk-(?P<ext>\\d{3,4})"}
    r.replace(router([desk("desk", max_calls=2, match=wider)]))
    assert not to_desk(r, "desk-123").route.calls.acquire()   # 2 live calls, new limit 2
    r.replace(router([desk("desk", max_calls=5, match=wider)]))
    assert to_desk(r, "desk-123").route.calls.acquire()       # raised: room again
    assert r.to_sip[0].calls.active == 3


def test_a_count_goes_to_one_new_route_only():
    r = router([desk("desk", max_calls=1)])
    assert to_desk(r).route.calls.acquire()
    # the new file has the same match twice: the first takes the count, the copy starts at zero
    r.replace(router([desk("a", max_calls=1), desk("b", max_calls=1)]))
    assert [route.calls.active for route in r.to_sip] == [1, 0]
    assert r.to_sip[0].calls is not r.to_sip[1].calls


def test_a_route_removed_mid_setup_still_limits_the_call_that_matched_it():
    r = router([desk("desk", max_calls=1)])
    first = to_desk(r).route
    assert first.calls.acquire()
    in_setup = to_desk(r)                                     # routed, not yet counted (verifying)
    r.replace(router([desk("sales", match=SALES, target="2000", max_calls=1)]))   # "desk" removed
    assert not in_setup.route.calls.acquire()                 # its route's limit still holds
    assert isinstance(r.route_to_sip("demo-app", "alice", "demo-desk", "desk-2001"), Denied)
    first.calls.release()
    assert in_setup.route.calls.acquire()                     # the removed route's calls go on
    in_setup.route.calls.release()
    assert first.calls.active == 0
    assert r.to_sip[0].calls.active == 0                      # nothing leaked into the new route


def test_releases_never_go_below_zero_nor_into_a_new_route():
    r = router([desk("desk", max_calls=2)])
    old = to_desk(r).route
    assert old.calls.acquire()
    r.replace(router([desk("desk2", max_calls=2, match=SALES, target="2000")]))   # name and match new
    new = r.route_to_sip("demo-app", "alice", "demo-desk", "sales")
    assert isinstance(new, SipDecision) and new.route.calls.acquire()
    old.calls.release()
    old.calls.release()                                       # a stray second release
    assert old.calls.active == 0 and new.route.calls.active == 1


def test_desk_to_app_routes_carry_their_counts_too():
    agents = {"name": "agents", "match": {"dialed": "7(?P<n>\\d{3})"}, "caller_service": "demo-desk",
              "target": {"service": "demo-app", "user": "agent-{n}"}, "max_calls": 1}
    r = router([desk()], [agents])
    decision = r.route_to_app("7001", "2001")
    assert isinstance(decision, AppDecision) and decision.route.calls.acquire()
    r.replace(router([desk()], [{**agents, "name": "support"}]))
    again = r.route_to_app("7002", "2002")
    assert isinstance(again, AppDecision) and again.route.name == "support"
    assert not again.route.calls.acquire()
    assert to_desk(r).route.calls.active == 0                 # directions never share a count
