"""`bridge cluster status -c FILE`: the nodes, their leases and calls, and the cluster's counts.

Read-only: it asks Redis what the nodes published (`node`), how long each lease has left, and
what each limit's hash counts per node (`limits`); it changes nothing. A node listed with no
lease is dead and not yet reaped (a survivor ends its calls within a heartbeat). Exit status
0, or 1 when Redis cannot be reached or the config has no `cluster:` section.
"""

from __future__ import annotations

from ..config import Config
from .store import RedisDown, Store


async def run(cfg: Config) -> int:
    if cfg.cluster is None:
        print(f"{cfg.path}: no cluster: section (this bridge runs alone, its state in memory)")
        return 1
    store = Store(cfg.cluster)
    try:
        print(await report(store, cfg))
        return 0
    except RedisDown as exc:
        print(f"bridge cluster status: {exc}")
        return 1
    finally:
        await store.close()


async def report(store: Store, cfg: Config) -> str:
    client = store.client
    members = sorted(await store.run(client.smembers(store.key("nodes"))))
    rows = []
    for node in members:
        ttl = await store.run(client.pttl(store.key("lease", node)))
        info = await store.run(client.hgetall(store.key("node", node)))
        rows.append((node, "live" if ttl > 0 else "dead", f"{ttl / 1000:.1f}s" if ttl > 0 else "-",
                     info.get("calls", "-"), info.get("sip", "-"), info.get("notifications", "-"),
                     info.get("pid", "-"), "yes" if info.get("draining") == "1" else "no"))
    limits = []
    async for key in client.scan_iter(match=store.key("calls", "*")):
        counts = await store.run(client.hgetall(key))
        live = {n: int(c) for n, c in counts.items() if any(r[0] == n and r[1] == "live" for r in rows)}
        scope = key[len(store.key("calls", "")):]
        limit = _limit(cfg, scope)
        per_node = ", ".join(f"{n} {c}" for n, c in sorted(live.items())) or "none"
        limits.append(f"  {scope}: {sum(live.values())}{'/' + str(limit) if limit else ''} ({per_node})")
    live_count = sum(1 for r in rows if r[1] == "live")
    lines = [f"Redis {store.where}: {live_count} live node(s), {len(rows) - live_count} dead awaiting reaping"]
    header = ("node", "state", "lease left", "calls", "SIP", "notifications", "pid", "draining")
    table = [header, *rows]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in table]
    lines.append("calls counted against limits (live nodes):")
    lines += sorted(limits) or ["  none"]
    return "\n".join(lines)


def _limit(cfg: Config, scope: str) -> int | None:
    if scope == "bridge":
        return cfg.bridge.max_calls if cfg.bridge else None
    _, direction, name = (scope.split(":", 2) + ["", ""])[:3]
    routes = cfg.router.to_sip if direction == "to_sip" else cfg.router.to_app
    return next((r.max_calls for r in routes if r.name == name), None)
