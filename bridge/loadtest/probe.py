"""The bridge process under test (or Janus's): its health, metrics, CPU and memory."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from ..config import Config
from .summary import _r
from .program import LoadTestError

log = logging.getLogger("bridge.loadtest")

# --- the bridge process ------------------------------------------------------------------------

class BridgeProbe:
    """/healthz, /metrics and /proc/<pid> of the bridge under test: one daemon, or every live
    node of its cluster (`cluster:` in the config: the nodes' addresses from Redis, their CPU
    and memory summed, their metrics merged, and Redis's own cost of the run)."""

    def __init__(self, cfg: Config) -> None:
        n = cfg.notifications
        assert n is not None
        self.cfg = cfg
        self.base = f"http://{n.host}:{n.port}"
        self.bases = [self.base]
        self.headers = {"Authorization": f"Bearer {n.admin_token}"} if n.admin_token else {}
        self.pid: int | None = None
        self.pids: list[int] = []
        self._session: aiohttp.ClientSession | None = None
        self._store: Any = None
        self._redis_before: dict | None = None
        self._redis_before_t = 0.0

    async def __aenter__(self) -> "BridgeProbe":
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        if self.cfg.cluster is not None:
            from ..cluster.store import RedisDown, Store
            self._store = Store(self.cfg.cluster)
            try:
                self.bases = await self._nodes()
                self._redis_before = await self._redis_cost()
                self._redis_before_t = time.monotonic()
            except RedisDown as exc:
                await self.__aexit__()
                raise LoadTestError(f"the cluster's Redis: {exc}") from None
            if not self.bases:
                await self.__aexit__()
                raise LoadTestError("no live bridge node in the cluster (bridge cluster status)")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self._store is not None:
            await self._store.close()

    async def _nodes(self) -> list[str]:
        """The notification listeners of the cluster's live bridge nodes."""
        store = self._store
        bases = []
        for node in sorted(await store.run(store.client.smembers(store.key("nodes")))):
            info = await store.run(store.client.hgetall(store.key("node", node)))
            alive = await store.run(store.client.exists(store.key("lease", node)))
            if alive and info.get("notifications"):
                bases.append(f"http://{info['notifications']}")
        return bases

    async def _redis_cost(self) -> dict:
        """Redis's commands so far and its CPU seconds (INFO commandstats, INFO cpu)."""
        stats = await self._store.run(self._store.client.info("commandstats"))
        cpu = await self._store.run(self._store.client.info("cpu"))
        return {"calls": sum(int(v["calls"]) for v in stats.values()),
                "usec": sum(int(v["usec"]) for v in stats.values()),
                "cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])}

    async def redis_idle(self) -> None:
        """Mark the end of the idle baseline: the nodes' heartbeats alone cost Redis this much."""
        if self._redis_before is not None:
            self._redis_idle = (await self._redis_cost(), time.monotonic())
            self._redis_started = self._redis_before_t

    async def redis_delta(self) -> dict | None:
        """What the run cost Redis (commands, their time inside Redis, its CPU), and that less
        the heartbeats' share (the idle baseline's rate over the run): the calls' own cost."""
        if self._redis_before is None:
            return None
        after, t_after = await self._redis_cost(), time.monotonic()
        total = {k: after[k] - self._redis_before[k] for k in after}
        out = {k: round(v, 6) for k, v in total.items()} | {"nodes": len(self.bases)}
        idle, t_idle = getattr(self, "_redis_idle", (None, None))
        if idle is not None and t_idle > self._redis_before_t:
            rate = {k: (idle[k] - self._redis_before[k]) / (t_idle - self._redis_before_t) for k in idle}
            out["calls_only"] = {k: round(total[k] - rate[k] * (t_after - self._redis_before_t), 6) for k in total}
            out["heartbeat_per_s"] = {k: round(v, 6) for k, v in rate.items()}
        return out

    async def health(self) -> tuple[int, dict]:
        """The one daemon's /healthz; for a cluster, every node's, merged (the pids, calls summed)."""
        assert self._session is not None
        answers = []
        for base in self.bases:
            async with self._session.get(base + "/healthz", headers=self.headers) as r:
                answers.append((r.status, await r.json(content_type=None)))
        if len(answers) == 1:
            return answers[0]
        status = max(s for s, _ in answers)
        merged = dict(answers[0][1])
        merged["pids"] = [h.get("pid") for _, h in answers]
        merged["bridged_calls"] = sum(h.get("bridged_calls", 0) for _, h in answers)
        merged["nodes"] = len(answers)
        return status, merged

    async def metrics(self) -> dict:
        """The bridge's metrics (`parse_metrics`); a cluster's nodes' summed."""
        assert self._session is not None
        parsed = []
        for base in self.bases:
            async with self._session.get(base + "/metrics", headers=self.headers) as r:
                if r.status != 200:
                    raise LoadTestError(f"GET {base}/metrics answered {r.status}")
                parsed.append(parse_metrics(await r.text()))
        return merge_metrics(parsed)


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def procs_sample(pids: list[int]) -> tuple[float, float, int] | None:
    """`proc_sample` summed over the bridge's processes (the nodes of a cluster on this host)."""
    samples = [proc_sample(pid) for pid in pids]
    if any(s is None for s in samples):
        return None
    return (sum(s[0] for s in samples if s), sum(s[1] for s in samples if s), sum(s[2] for s in samples if s))


def proc_sample(pid: int) -> tuple[float, float, int] | None:
    """(CPU seconds used so far, RSS in MB, threads) of a process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2:].split()
    cpu = (int(rest[11]) + int(rest[12])) / _CLK_TCK
    rss = 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return cpu, rss, int(rest[17])


def parse_metrics(text: str) -> dict:
    """The bridge's setup histograms and frame counters, from Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families
    out: dict = {"setup": {}, "frames": {}, "calls": {}, "loop_lag": {}, "gc": {}}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "bridge_setup_seconds_bucket":
                out["setup"].setdefault(s.labels["step"], {}).setdefault("buckets", {})[s.labels["le"]] = s.value
            elif s.name in ("bridge_setup_seconds_sum", "bridge_setup_seconds_count"):
                key = s.name.rsplit("_", 1)[1]
                out["setup"].setdefault(s.labels["step"], {})[key] = s.value
            elif s.name == "bridge_loop_lag_seconds_bucket":
                out["loop_lag"].setdefault("buckets", {})[s.labels["le"]] = s.value
            elif s.name in ("bridge_loop_lag_seconds_sum", "bridge_loop_lag_seconds_count"):
                out["loop_lag"][s.name.rsplit("_", 1)[1]] = s.value
            elif s.name == "bridge_gc_pause_seconds_bucket":
                out["gc"].setdefault(s.labels["generation"], {}).setdefault("buckets", {})[s.labels["le"]] = s.value
            elif s.name in ("bridge_gc_pause_seconds_sum", "bridge_gc_pause_seconds_count"):
                out["gc"].setdefault(s.labels["generation"], {})[s.name.rsplit("_", 1)[1]] = s.value
            elif s.name == "bridge_frames_total":
                out["frames"].setdefault(s.labels["direction"], {})[s.labels["outcome"]] = s.value
            elif s.name == "bridge_calls_total":
                out["calls"][f'{s.labels["direction"]}/{s.labels["result"]}'] = s.value
    return out


def merge_metrics(parsed: list[dict]) -> dict:
    """Several nodes' `parse_metrics`, summed (histograms bucket by bucket)."""
    def add(into: dict, other: dict) -> None:
        for k, v in other.items():
            if isinstance(v, dict):
                add(into.setdefault(k, {}), v)
            else:
                into[k] = into.get(k, 0) + v
    out: dict = {"setup": {}, "frames": {}, "calls": {}, "loop_lag": {}, "gc": {}}
    for p in parsed:
        add(out, p)
    return out


def metrics_delta(before: dict, after: dict) -> dict:
    """What this run added: setup quantiles (from histogram buckets), frames, calls."""
    def histogram(a: dict, b: dict) -> dict:
        count = a.get("count", 0) - b.get("count", 0)
        total = a.get("sum", 0) - b.get("sum", 0)
        buckets = sorted(((float(le), v - b.get("buckets", {}).get(le, 0))
                          for le, v in a.get("buckets", {}).items()), key=lambda kv: kv[0])
        return {"count": int(count), "mean_ms": 1000 * total / count if count else None,
                "p50_ms": _hist_quantile(buckets, 0.5), "p99_ms": _hist_quantile(buckets, 0.99),
                "buckets": {("+Inf" if math.isinf(le) else f"{le:g}"): int(v) for le, v in buckets}}

    setup = {step: histogram(a, before["setup"].get(step, {})) for step, a in after["setup"].items()}
    loop_lag = histogram(after.get("loop_lag", {}), before.get("loop_lag", {}))
    gc_pauses = {gen: _pauses(histogram(a, before.get("gc", {}).get(gen, {})))
                 for gen, a in sorted(after.get("gc", {}).items())}
    frames = {}
    for direction, a in after["frames"].items():
        b = before["frames"].get(direction, {})
        frames[direction] = {k: int(v - b.get(k, 0)) for k, v in a.items()}
    calls = {k: int(v - before["calls"].get(k, 0)) for k, v in after["calls"].items()
             if v - before["calls"].get(k, 0)}
    return {"setup": setup, "frames": frames, "calls": calls, "loop_lag": loop_lag, "gc": gc_pauses}


def _pauses(h: dict) -> dict:
    """One generation's collections in the run: how many, their total and mean, how many took
    more than 20 ms, and the longest as the upper edge of its histogram bucket."""
    counts = [(float("inf") if le == "+Inf" else float(le), n) for le, n in h["buckets"].items()]
    over = h["count"] - max((n for le, n in counts if le <= 0.02), default=0)
    longest = next((le for le, n in counts if n >= h["count"]), None) if h["count"] else None
    return {"count": h["count"], "total_ms": _r(h["mean_ms"] * h["count"] if h["mean_ms"] else 0),
            "mean_ms": _r(h["mean_ms"]), "over_20ms": over,
            "longest_at_most_ms": None if longest is None else (None if math.isinf(longest) else 1000 * longest)}


def _hist_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus-style histogram_quantile (linear inside the bucket), in ms."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, prev = 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            if math.isinf(le):
                return 1000 * lower
            width = cum - prev
            return 1000 * (lower + (le - lower) * ((rank - prev) / width if width else 1.0))
        lower, prev = le, cum
    return 1000 * lower
