"""Exactly-once claims: a call is taken by one node of the cluster, whichever copy reaches it.

A claim is one Redis key, `bridge:claim:<kind>:<id>`, set with SET NX and an expiry
(`cluster.claim_ttl`) and holding the node id. Kinds: `push` (a notification, by call sid) and
`invite` (a desk -> app INVITE, by Call-ID). The first node to set the key takes the call; any
other gets False and answers as a duplicate (202 `duplicate` for a push, 482 for an INVITE). A
node that takes a claim and then refuses the call before anyone rang gives it back
(`give_back`, deleting the key only if it still holds it), so that a failover to another node
can take the call. A claim expires by itself: nothing to clean after a crash. A caller may hold
a claim longer than `claim_ttl` (`take(..., ttl=)`): a push's claim lasts as long as its signed
request could still be accepted (`notifications.replay_window` either side of its timestamp),
so that a signed push replayed to any node of the cluster is a duplicate, never a new call.
"""

from __future__ import annotations

from .store import Store

_GIVE_BACK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Claims:
    def __init__(self, store: Store, node_id: str, ttl: float) -> None:
        self.store = store
        self.node_id = node_id
        self.ttl_ms = max(1, int(ttl * 1000))
        self._give_back = store.script(_GIVE_BACK)

    def _key(self, kind: str, ident: str) -> str:
        return self.store.key("claim", kind, ident)

    async def take(self, kind: str, ident: str, ttl: float | None = None) -> bool:
        """True if this node now holds the call; False if another node (or this one) took it.
        `ttl`: hold it at least this long (seconds), if longer than `claim_ttl`. RedisDown."""
        px = max(self.ttl_ms, int((ttl or 0) * 1000))
        taken = await self.store.run(self.store.client.set(self._key(kind, ident), self.node_id, nx=True, px=px))
        return bool(taken)

    async def holder(self, kind: str, ident: str) -> str | None:
        return await self.store.run(self.store.client.get(self._key(kind, ident)))

    async def give_back(self, kind: str, ident: str) -> None:
        """Release a claim this node holds (a refused call); RedisDown (it then expires by itself)."""
        await self.store.run(self._give_back(keys=[self._key(kind, ident)], args=[self.node_id]))
