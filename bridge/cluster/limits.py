"""Cluster-wide call limits: `bridge.max_calls` and each route's `max_calls` over all nodes.

Each limit is a scope (`bridge`, `route:to_sip:<name>`, `route:to_app:<name>`) and a Redis
hash `bridge:calls:<scope>` of node id -> calls that node holds there. Taking a call is one Lua
script over all the scopes a call needs: it sums the counts of the nodes whose lease
(`bridge:lease:<node>`) is alive, drops the fields of nodes whose lease is gone (a dead node's
calls are released the moment its lease expires, by whoever counts next), and only if every
scope is under its limit counts the call in each (all or nothing). Giving back decrements.

The node keeps its own counts (`held`) too: a release Redis did not take is retried on the next
heartbeat, and a node that lost its lease (Redis was unreachable longer than the lease) writes
its counts back when it takes the lease again (`restore`). The local `routing.CallCount` stays
the single-node counter; with a cluster both are kept (the local one for reloads and /metrics).
"""

from __future__ import annotations

import collections
import logging

from .store import RedisDown, Store

log = logging.getLogger("bridge.cluster")

_TAKE = """
-- KEYS: the scopes' hashes; ARGV: node id, lease key prefix, then one limit per key (-1: none)
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[i + 2])
  if limit >= 0 then
    local total = 0
    local counts = redis.call('HGETALL', key)
    for j = 1, #counts, 2 do
      if redis.call('EXISTS', ARGV[2] .. counts[j]) == 1 then
        total = total + tonumber(counts[j + 1])
      else
        redis.call('HDEL', key, counts[j])
      end
    end
    if total >= limit then return i end
  end
end
for _, key in ipairs(KEYS) do redis.call('HINCRBY', key, ARGV[1], 1) end
return 0
"""

_GIVE = """
for _, key in ipairs(KEYS) do
  if redis.call('HINCRBY', key, ARGV[1], -1) <= 0 then redis.call('HDEL', key, ARGV[1]) end
end
return 0
"""

_TOTAL = """
local total = 0
local counts = redis.call('HGETALL', KEYS[1])
for j = 1, #counts, 2 do
  if redis.call('EXISTS', ARGV[1] .. counts[j]) == 1 then total = total + tonumber(counts[j + 1]) end
end
return total
"""


def bridge_scope() -> str:
    return "bridge"


def route_scope(direction: str, name: str) -> str:
    return f"route:{direction}:{name}"


class ClusterLimits:
    def __init__(self, store: Store, node_id: str) -> None:
        self.store = store
        self.node_id = node_id
        self.held: collections.Counter[str] = collections.Counter()   # this node's calls per scope
        self._unreleased: collections.Counter[str] = collections.Counter()
        self._take = store.script(_TAKE)
        self._give = store.script(_GIVE)
        self._total = store.script(_TOTAL)

    def _key(self, scope: str) -> str:
        return self.store.key("calls", scope)

    async def take(self, scopes: list[tuple[str, int | None]]) -> str | None:
        """Count one call in every scope if all are under their limits: None; else the full
        scope (nothing counted). RedisDown if Redis cannot say."""
        keys = [self._key(s) for s, _ in scopes]
        limits = [-1 if limit is None else limit for _, limit in scopes]
        full = await self.store.run(self._take(keys=keys, args=[self.node_id, self.store.key("lease", ""), *limits]))
        if full:
            return scopes[int(full) - 1][0]
        for scope, _ in scopes:
            self.held[scope] += 1
        return None

    async def give_back(self, scopes: list[str]) -> None:
        """One call counted in these scopes ended. Never raises: what Redis misses is retried."""
        for scope in scopes:
            self.held[scope] -= 1
            if self.held[scope] <= 0:
                del self.held[scope]
        try:
            await self.store.run(self._give(keys=[self._key(s) for s in scopes], args=[self.node_id]))
        except RedisDown as exc:
            log.warning("cluster: a call's count stays in Redis until the next heartbeat: %s", exc)
            self._unreleased.update(scopes)

    async def retry(self) -> None:
        """Give back what Redis missed (the heartbeat calls this)."""
        if not self._unreleased:
            return
        pending, self._unreleased = self._unreleased, collections.Counter()
        for scope in list(pending):
            while pending[scope] > 0:
                try:
                    await self.store.run(self._give(keys=[self._key(scope)], args=[self.node_id]))
                except RedisDown:
                    self._unreleased.update(+pending)
                    raise
                pending[scope] -= 1

    async def restore(self) -> None:
        """Write this node's counts again (its lease had expired, and counters forgot it)."""
        pipe = self.store.client.pipeline(transaction=True)
        for scope, n in self.held.items():
            pipe.hset(self._key(scope), self.node_id, n)
        self._unreleased.clear()
        await self.store.run(pipe.execute())

    async def total(self, scope: str) -> int:
        """Calls in `scope` across the live nodes."""
        return int(await self.store.run(self._total(keys=[self._key(scope)], args=[self.store.key("lease", "")])))

    async def per_node(self, scope: str) -> dict[str, int]:
        counts = await self.store.run(self.store.client.hgetall(self._key(scope)))
        return {node: int(n) for node, n in counts.items()}
