"""A CPU hog for `bridge loadtest --cpu-hog F`: repeatable contention beside the bridge.

`CpuHog(F)` starts a child process (`python -m bridge.cpuhog F`) that spins on one core until it
has used F of the wall time since it started (in CPU seconds, checked every ~1 ms) and sleeps
otherwise, so it takes F of a core whenever the scheduler lets it. Starved for a while, it catches
up at most `MAX_DEBT` seconds, so it never turns into a burst of a whole core. What it really got
is measured from /proc/<pid>/stat (`share()`), and that is the figure a report states: on a busy
machine it can be below F.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

MAX_DEBT = 0.05          # seconds of CPU a starved hog may catch up at once
SLICE = 0.001            # how often it checks its account while spinning or sleeping

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def spin(fraction: float, until: float | None = None) -> None:
    """Use `fraction` of one core until `until` (time.monotonic()) or forever."""
    start_wall, start_cpu = time.monotonic(), time.thread_time()
    while until is None or time.monotonic() < until:
        wall = time.monotonic() - start_wall
        used = time.thread_time() - start_cpu
        owed = fraction * wall - used
        if owed > MAX_DEBT:                 # starved: forgive what it cannot fairly catch up
            start_cpu -= owed - MAX_DEBT
        if owed > 0:
            deadline = time.thread_time() + min(owed, SLICE)
            while time.thread_time() < deadline:
                pass
        else:
            time.sleep(min(-owed / fraction if fraction else SLICE, SLICE * 10))


def cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of a process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK


class CpuHog:
    """The hog as a child process; `share()` is the fraction of one core it used since start()."""

    def __init__(self, fraction: float) -> None:
        if not 0 < fraction <= 1:
            raise ValueError("the CPU hog's fraction must be in (0, 1]")
        self.fraction = fraction
        self.proc: subprocess.Popen | None = None
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._last: tuple[float, float] | None = None      # (wall, cpu) of the last sample

    def start(self) -> "CpuHog":
        self.proc = subprocess.Popen([sys.executable, "-m", "bridge.cpuhog", str(self.fraction)],
                                     stdin=subprocess.DEVNULL)
        self._t0 = time.monotonic()
        self._cpu0 = cpu_seconds(self.proc.pid) or 0.0
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def cpu(self) -> float | None:
        """CPU seconds used since start(), None once it has been stopped."""
        if self.proc is None:
            return None
        c = cpu_seconds(self.proc.pid)
        if c is None:
            return None
        self._last = (time.monotonic(), c)
        return c - self._cpu0

    def share(self) -> float | None:
        """Fraction of one core used from start() to now (or to the last sample before stop())."""
        if self.proc is not None and self.proc.poll() is None:
            self.cpu()
        if self._last is None or self._last[0] <= self._t0:
            return None
        return (self._last[1] - self._cpu0) / (self._last[0] - self._t0)

    def stop(self) -> dict:
        """End the hog; what it asked for and what it got."""
        share = self.share()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return {"fraction": self.fraction, "pid": self.pid,
                "seconds": round(self._last[0] - self._t0, 2) if self._last else None,
                "cpu_pct": round(100 * share, 1) if share is not None else None}


def main() -> None:
    spin(float(sys.argv[1]))


if __name__ == "__main__":
    main()
