"""The collector's policy (bridge/collector.py) with CPython's own collector: full collections
wait until no call is up, or until the old generation grew by more than a budget per call up
(a leak), and are timed."""

from __future__ import annotations

import gc
import weakref

from prometheus_client import CollectorRegistry, Histogram

from bridge.collector import NEVER, Collector


class Node:
    """A reference cycle of one."""

    def __init__(self) -> None:
        self.me = self


def old_garbage(n: int) -> list[weakref.ref]:
    """`n` cycles that lived long enough to reach the old generation, then became garbage."""
    nodes = [Node() for _ in range(n)]
    gc.collect(1)                     # survivors of the young generations move to the old one
    return [weakref.ref(node) for node in nodes]


def full_collections(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("pause_count", {"generation": "2"}) or 0


async def test_full_collections_wait_for_a_quiet_moment_or_garbage_beyond_a_budget_per_call():
    registry = CollectorRegistry()
    pause = Histogram("pause", "", ["generation"], registry=registry)
    calls_up = 3
    collector = Collector(pause, lambda: calls_up, period=3600, per_call=500)
    collector.start()
    try:
        assert gc.get_threshold()[2] == NEVER                 # CPython starts none by itself
        refs = old_garbage(100)
        gc.collect(1)
        assert all(ref() is not None for ref in refs)        # only a full collection frees them
        assert collector.step() is None                      # calls are up, and no leak to speak of
        assert all(ref() is not None for ref in refs)
        calls_up = 0
        assert collector.step() == "quiet"
        assert all(ref() is None for ref in refs)
        assert full_collections(registry) == 1
        assert collector.step() is None                      # nothing new since
        calls_up = 3
        live = [Node() for _ in range(1500)]                 # calls' objects, alive
        gc.collect(1)
        assert collector.step() is None                      # within 500 a call up (and one)
        refs = old_garbage(1000)                             # and garbage: beyond 2,000
        assert collector.step() == "growth"                  # memory stays bounded, calls or not
        assert all(ref() is None for ref in refs) and len(live) == 1500
        assert full_collections(registry) == 2
    finally:
        await collector.stop()
        gc.unfreeze()
    assert gc.get_threshold()[2] != NEVER
