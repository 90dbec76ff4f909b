"""Absolute media pacing clock for asyncio.

Tick ``n`` is due at ``start + n * period`` on the event loop's monotonic clock, so sleeping
never accumulates drift (pyVoIP paced with ``sleep(period)`` and ran at 49.5 packets/s).
A consumer that is occasionally slow but still within one period keeps the schedule; a tick
that fires later than ``late_threshold`` is reported as late; when the loop fell more than
``max_catchup`` ticks behind, the missed ticks are skipped (counted), never the schedule moved.

    async for tick in FrameClock(0.020):
        endpoint.write_frame(next_frame())
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tick:
    """One clock tick: its index, when it was due, when it fired (loop time, seconds)."""

    index: int
    due: float
    now: float
    skipped: int = 0  # ticks skipped just before this one (loop stalled)

    @property
    def lateness(self) -> float:
        return self.now - self.due


class FrameClock:
    """Async iterator of :class:`Tick` s at ``start + n * period``."""

    def __init__(
        self,
        period: float = 0.020,
        *,
        start: float | None = None,
        max_catchup: int = 5,
        late_threshold: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if period <= 0:
            raise ValueError("period must be > 0")
        self.period = period
        self.max_catchup = max_catchup
        self.late_threshold = period / 4 if late_threshold is None else late_threshold
        self._loop = loop
        self._start = start
        self._index = 0
        self.late_ticks = 0      # ticks that fired more than late_threshold after being due
        self.skipped_ticks = 0   # ticks dropped because the loop was > max_catchup behind
        self.max_lateness = 0.0

    @property
    def start(self) -> float | None:
        return self._start

    def due(self, index: int) -> float:
        """Loop time at which tick ``index`` is due."""
        assert self._start is not None
        return self._start + index * self.period

    def __aiter__(self) -> FrameClock:
        return self

    async def __anext__(self) -> Tick:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        if self._start is None:
            self._start = loop.time()
        index = self._index
        due = self._start + index * self.period
        now = loop.time()
        skipped = 0
        behind = int((now - due) / self.period)
        if behind > self.max_catchup:
            skipped = behind
            index += skipped
            due = self._start + index * self.period
            self.skipped_ticks += skipped
        if now < due:
            waiter = loop.create_future()
            handle = loop.call_at(due, _wake, waiter)
            try:
                await waiter
            finally:
                handle.cancel()
            now = loop.time()
        self._index = index + 1
        lateness = now - due
        if lateness > self.late_threshold:
            self.late_ticks += 1
        if lateness > self.max_lateness:
            self.max_lateness = lateness
        return Tick(index, due, now, skipped)


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)
