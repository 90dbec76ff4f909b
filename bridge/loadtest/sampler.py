"""The run's samples, every second: the bridge's CPU, RSS and threads, this process's own CPU and
event-loop lag, the CPU hog's share; and the progress line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Callable

from ..clock import FrameClock
from .probe import BridgeProbe, proc_sample, procs_sample
from .record import CallRecord


class Sampler:
    """Samples the bridge's process(es) and this one into `samples` until stopped."""

    def __init__(self, samples: list[dict], records: dict[int, CallRecord], calls: int, quiet: bool,
                 hog_cpu: Callable[[], float | None]) -> None:
        self.samples = samples
        self.records = records
        self.calls = calls                  # calls of the run, for the progress line
        self.quiet = quiet
        self.hog_cpu = hog_cpu              # the CPU hog's CPU seconds so far; None: none, or stopped
        self._lag_max = 0.0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, probe: BridgeProbe, t_zero: float) -> None:
        """A sample a second (its "t": seconds since `t_zero`), until `stop()`."""
        loop = asyncio.get_running_loop()
        assert probe.pid is not None
        lag = asyncio.ensure_future(self._lag_monitor())
        tty = sys.stderr.isatty()
        pids = probe.pids or [probe.pid]
        prev = procs_sample(pids)
        me_prev = proc_sample(os.getpid())
        t_prev = loop.time()
        hog_prev: float | None = None
        last_line = 0.0
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)
            now = loop.time()
            cur, me = procs_sample(pids), proc_sample(os.getpid())
            dt = now - t_prev
            if cur is None or prev is None or me is None or me_prev is None or dt <= 0:
                break
            recs = list(self.records.values())
            sample = {
                "t": round(now - t_zero, 3),
                "active": sum(r.state == "connected" for r in recs),
                "calling": sum(r.state == "calling" for r in recs),
                "bridge_cpu_pct": round(100 * (cur[0] - prev[0]) / dt, 1),
                "bridge_rss_mb": round(cur[1], 1),
                "bridge_threads": cur[2],
                "loadtest_cpu_pct": round(100 * (me[0] - me_prev[0]) / dt, 1),
                "loadtest_loop_lag_ms": round(1000 * self._lag_max, 1),
            }
            self._lag_max = 0.0
            hog = self.hog_cpu()
            if hog is not None and hog_prev is not None:
                sample["hog_cpu_pct"] = round(100 * (hog - hog_prev) / dt, 1)
            hog_prev = hog
            self.samples.append(sample)
            prev, me_prev, t_prev = cur, me, now
            if not self.quiet and (tty or now - last_line >= 5):
                last_line = now
                done = sum(r.state == "done" for r in recs)
                failed = sum(r.state == "failed" for r in recs)
                line = (f"{sample['t']:6.1f}s calls {len(recs)}/{self.calls} started, "
                        f"{sample['active']} talking, {sample['calling']} setting up, {done} done, "
                        f"{failed} failed | bridge CPU {sample['bridge_cpu_pct']:5.1f}% "
                        f"RSS {sample['bridge_rss_mb']:6.1f} MB | loadtest CPU "
                        f"{sample['loadtest_cpu_pct']:5.1f}% lag {sample['loadtest_loop_lag_ms']:5.1f} ms")
                print(("\r" + line + "  ") if tty else line, end="" if tty else "\n",
                      file=sys.stderr, flush=True)
        lag.cancel()

    async def _lag_monitor(self) -> None:
        """How late this process's event loop runs a 10 ms timer (the load test's own health)."""
        async for tick in FrameClock(0.010, max_catchup=1_000_000):
            self._lag_max = max(self._lag_max, tick.lateness)
