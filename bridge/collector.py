"""Python's cycle collector, kept from stalling calls.

A full collection walks every object the process tracks with the event loop stopped, so it
stalls every call that is up while it runs: ~0.35 us an object, 75 ms with 60 calls up
(docs/performance.md, "Churn"). CPython starts one whenever the objects that survived the young
collections grew by a quarter of the old generation, and under call churn every new call's
objects do: one every ~25 s, each a stall of every call.

A call's objects are freed by reference counting as it ends: the reference cycles a call makes
(SIP transactions and their timers, the SIP leg's callbacks, the app leg's peer connection and
its transports, the signalling WebSockets at both ends) are cut when it ends, and tests hold that
(`test_an_ended_call_is_freed_as_it_ends_not_by_the_collector`). Full collections then have next
to nothing to free, and here they run only:

- when no call is up (the bridge's or the platform's), if the old generation grew since the
  last one: nobody is stalled;
- when the old generation grew since the last full collection by more than `per_call` objects
  for every call up (and one): a live call keeps ~1,500 tracked, so that is garbage piling up
  in cycles somewhere, and memory must stay bounded (logged). A busy bridge's live calls alone
  never trigger it, however many there are.

Young collections (a few ms) run as CPython decides. Every collection is timed
(`bridge_gc_pause_seconds`, by generation).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Callable

from prometheus_client import Histogram

log = logging.getLogger(__name__)

NEVER = 2**31 - 1          # a threshold CPython never reaches: no automatic full collection


class Collector:
    """Owns the process's collector while the daemon runs: `start`, then `stop`."""

    def __init__(self, pause: Histogram, calls_up: Callable[[], int], period: float = 5.0,
                 per_call: int = 5000) -> None:
        self.pause = pause
        self.calls_up = calls_up
        self.period = period
        self.per_call = per_call
        self.after = 0                   # objects in the old generation after the last full one
        self._threshold = gc.get_threshold()
        self._started: float | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """First move everything alive after start-up (modules, aiortc, numpy: ~70k objects) out
        of the collector's view for good (measured: full pauses 177 -> 149 ms under churn), then
        take full collections over."""
        gc.collect()
        gc.freeze()
        young, middle, _ = self._threshold
        gc.set_threshold(young, middle, NEVER)
        gc.callbacks.append(self._timed)
        self.after = len(gc.get_objects(2))
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)
        gc.set_threshold(*self._threshold)

    def step(self) -> str | None:
        """Run a full collection if one is due now; why it ran, or None."""
        old = len(gc.get_objects(2))
        up = self.calls_up()
        if old > self.after and up == 0:
            reason = "quiet"
        elif old - self.after > self.per_call * (up + 1):
            reason = "growth"
            log.warning("collector: the old generation grew from %d to %d objects with %d calls up; "
                        "a full collection now stalls them (something leaves reference cycles)",
                        self.after, old, up)
        else:
            return None
        gc.collect()
        self.after = len(gc.get_objects(2))
        return reason

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            self.step()

    def _timed(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.pause.labels(str(info["generation"])).observe(time.perf_counter() - self._started)
