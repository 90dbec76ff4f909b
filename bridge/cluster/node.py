"""A node of the cluster: its lease, its heartbeat, and who else is alive.

Keys (all under `bridge:`):
  lease:<node>   the node's lease: its instance token, expiring after `cluster.lease`; renewed
                 every `cluster.heartbeat`. A node whose lease key is gone is dead.
  nodes          the set of node ids that joined and were not yet reaped
  node:<node>    what the node says about itself (SIP and HTTP addresses, pid, calls, state),
                 for `bridge cluster status`
  reap:<node>:<instance>:<part>
                 the claim of the one survivor that ends that part of a dead node's calls
                 (`dialogs` of a bridge: BYE; `platform`: its calls' records), then `done`
  reaped:<node>  the instance token a survivor reaped (so that a node cut off from Redis, not
                 dead, learns its calls were ended; a Redis that lost its data is not a reaping)

Promises: two live processes never hold one node id (a start waits out a predecessor's lease, up
to one lease, and refuses if the id stays held); each part of a dead node is reaped by one
survivor that can (a bridge node's dialogs by a bridge node, a platform node's calls by a
platform node), one at a time (a claim that expires, so a reaper that dies mid-way is replaced),
within one lease and one heartbeat of its last renewal; a dead node stays listed until every
part it left was ended (a bridge node that joins later ends what nobody could); a node that
finds it was reaped while cut off from Redis (its lease expired and a survivor ended its calls)
is told so (`on_reaped`) and joins again; one whose lease Redis forgot (restarted empty) joins
again and writes its state back (`on_rejoined`). Redis being unreachable never blocks the loop:
the node says so (`state`, `problem`) and keeps trying.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import Awaitable, Callable

from .config import ClusterConfig
from .store import RedisDown, Store

log = logging.getLogger("bridge.cluster")

# KEYS: lease, nodes, reaped; ARGV: token, lease ms, node id.
# 1: renewed; 2: taken (it had expired, or Redis forgot it: nobody reaped this instance);
# 3: taken again after a survivor reaped this instance; 0: held by another process
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if v then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if redis.call('GET', KEYS[3]) == ARGV[1] then return 3 end
return 2
"""
REAPED_TTL_MS = 3600 * 1000            # how long a reaped instance can still learn it was reaped
PARTS = {"bridge": "dialogs", "platform": "platform"}   # a dead node's role -> what a survivor ends
DONE = "done"

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
return 0
"""

Reap = Callable[[str], Awaitable[None]]


class NodeIdInUse(RuntimeError):
    """Another live process holds this node id."""


class Node:
    def __init__(self, cfg: ClusterConfig, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.id = cfg.node_id
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.state = "starting"            # up | unreachable | stopped
        self.problem: str | None = None
        self.info: dict[str, str] = {}     # published in node:<id>
        self.status: Callable[[], dict[str, str]] = lambda: {}   # refreshed on every heartbeat
        self.alive: list[str] = []         # live node ids at the last heartbeat
        self.on_dead: dict[str, Reap] = {}   # part (`PARTS`) -> how this node ends it for a dead node
        self.on_reaped: list[Callable[[], Awaitable[None]]] = []
        self.on_rejoined: list[Callable[[], Awaitable[None]]] = []
        self.on_beat: list[Callable[[], Awaitable[None]]] = []   # work that waits for Redis (retries)
        self.reaped = 0
        self._renew = store.script(_RENEW)
        self._release = store.script(_RELEASE)
        self._task: asyncio.Task | None = None
        self._last_renewal = 0.0
        self._joined = False               # the first renewal is a join, not a return
        self._stopping = False

    @property
    def lease_key(self) -> str:
        return self.store.key("lease", self.id)

    @property
    def nodes_key(self) -> str:
        return self.store.key("nodes")

    @property
    def _renew_keys(self) -> list[str]:
        return [self.lease_key, self.nodes_key, self.store.key("reaped", self.id)]

    # life ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the lease (NodeIdInUse if another live process holds it), join, start beating.
        With Redis unreachable: start anyway, unhealthy, and keep trying."""
        try:
            await self._take_lease()
            self._joined = True
            await self._publish()
            self._up()
            await self._find_dead()
        except RedisDown as exc:
            self._down(exc)
        self._task = asyncio.ensure_future(self._beat())

    async def _take_lease(self) -> None:
        deadline = time.monotonic() + self.cfg.lease + self.cfg.heartbeat
        waited = False
        while True:
            result = await self.store.run(self._renew(keys=self._renew_keys,
                                                      args=[self.token, self._lease_ms, self.id]))
            if result:
                self._last_renewal = time.monotonic()
                if waited:
                    log.info("cluster: node %s: the previous holder's lease expired; taken", self.id)
                return
            if time.monotonic() > deadline:
                raise NodeIdInUse(f"node id {self.id} is held by another live node (its lease keeps being "
                                  f"renewed): give each node its own cluster.node_id")
            if not waited:
                log.warning("cluster: node id %s is still leased (a previous run killed?); waiting up to %.0f s",
                            self.id, self.cfg.lease)
                waited = True
            await asyncio.sleep(min(0.25, self.cfg.heartbeat))

    async def stop(self) -> None:
        """Leave the cluster: the lease and membership go at once (nothing left to reap)."""
        self._stopping = True
        while self._task is not None and not self._task.done():
            self._task.cancel()             # again if a Redis timeout swallowed the first request
            await asyncio.wait([self._task], timeout=self.cfg.heartbeat)
        self._task = None
        try:
            await self.store.run(self._release(keys=[self.lease_key, self.nodes_key, self.store.key("node", self.id)],
                                               args=[self.token, self.id]))
        except RedisDown as exc:
            log.warning("cluster: could not leave cleanly (the lease expires by itself): %s", exc)
        self.state = "stopped"

    @property
    def _lease_ms(self) -> int:
        return int(self.cfg.lease * 1000)

    # the heartbeat ---------------------------------------------------------------------------

    async def _beat(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.cfg.heartbeat)
            try:
                await self.beat()
            except RedisDown as exc:
                self._down(exc)
            except Exception:
                log.exception("cluster: heartbeat failed")

    async def beat(self) -> None:
        """Renew the lease, publish this node's state, reap dead nodes. RedisDown."""
        result = await self.store.run(self._renew(keys=self._renew_keys,
                                                  args=[self.token, self._lease_ms, self.id]))
        self._last_renewal = time.monotonic()
        if result == 0:
            self.state, self.problem = "conflict", f"node id {self.id} is held by another process"
            log.error("cluster: %s", self.problem)
            return
        self._up()
        joined, self._joined = self._joined, True
        if result in (2, 3) and joined:
            log.warning("cluster: node %s: %s; joined again", self.id,
                        "the lease had expired (Redis out of reach too long) and a survivor ended this node's calls"
                        if result == 3 else "Redis had forgotten the lease (expired, or Redis restarted empty)")
            for rejoined in self.on_rejoined:
                await rejoined()
            if result == 3:
                for reaped in self.on_reaped:
                    await reaped()
        await self._publish()
        for work in self.on_beat:
            await work()
        await self._find_dead()

    async def _publish(self) -> None:
        info = {**self.info, **self.status(), "pid": str(os.getpid()), "token": self.token,
                "updated": f"{time.time():.3f}"}
        await self.store.run(self.store.client.hset(self.store.key("node", self.id), mapping=info))

    async def _find_dead(self) -> None:
        members = sorted(await self.store.run(self.store.client.smembers(self.nodes_key)))
        pipe = self.store.client.pipeline(transaction=False)
        for member in members:
            pipe.exists(self.store.key("lease", member))
        leased = await self.store.run(pipe.execute())
        self.alive = [m for m, ok in zip(members, leased) if ok]
        for dead in (m for m, ok in zip(members, leased) if not ok and m != self.id):
            await self._reap(dead)

    async def _reap(self, dead: str) -> None:
        """End what `dead` left, each part (`PARTS`) by one survivor that can end it; drop `dead`
        from the cluster once every part its role leaves has been ended."""
        pipe = self.store.client.pipeline(transaction=True)
        pipe.hgetall(self.store.key("node", dead))
        pipe.sismember(self.nodes_key, dead)
        info, member = await self.store.run(pipe.execute())
        if not member:
            return                           # another survivor reaped it since this node looked
        roles = [r for r in info.get("role", "").split("+") if r in PARTS]
        # a node that never said its role: whatever this node can end (at least its membership)
        needed = {PARTS[r] for r in roles} if roles else set(self.on_dead) or {"membership"}
        instance = info.get("token", "unknown")
        keys = {part: self.store.key("reap", dead, instance, part) for part in sorted(needed)}
        ends = {"membership": _nothing, **self.on_dead}
        ended = False
        for part in (p for p in keys if p in ends):
            if not await self.store.run(self.store.client.set(keys[part], self.id, nx=True,
                                                              px=self._lease_ms * 4)):
                continue                     # another survivor ends it (or did)
            if not ended:
                log.warning("cluster: node %s is dead (its lease expired): ending its calls", dead)
                if instance != "unknown":
                    await self.store.run(self.store.client.set(self.store.key("reaped", dead), instance,
                                                               px=REAPED_TTL_MS))
            ended = True
            try:
                await ends[part](dead)
            except RedisDown:
                raise
            except Exception:
                log.exception("cluster: reaping node %s (%s) failed", dead, part)
            await self.store.run(self.store.client.set(keys[part], DONE, px=REAPED_TTL_MS))
        if ended:
            self.reaped += 1
        states = await self.store.run(self.store.client.mget(list(keys.values()))) if keys else []
        if any(state != DONE for state in states):
            return                           # a part no live node can end yet (or one under way)
        pipe = self.store.client.pipeline(transaction=True)
        pipe.srem(self.nodes_key, dead)
        pipe.delete(self.store.key("node", dead), self.store.key("dialogs", dead))
        await self.store.run(pipe.execute())

    # what this node says --------------------------------------------------------------------

    def _up(self) -> None:
        if self.state != "up":
            if self.state == "unreachable":
                log.warning("cluster: Redis at %s answers again", self.store.where)
            self.state, self.problem = "up", None

    def _down(self, exc: RedisDown) -> None:
        if self.state != "unreachable":
            log.error("cluster: %s (calls that need the cluster are refused meanwhile)", exc)
        self.state, self.problem = "unreachable", str(exc)

    @property
    def healthy(self) -> bool:
        return self.state == "up"

    def health(self) -> dict:
        since = time.monotonic() - self._last_renewal if self._last_renewal else None
        return {"node_id": self.id, "redis": self.store.where, "state": self.state,
                **({"problem": self.problem} if self.problem else {}),
                "lease_seconds": self.cfg.lease,
                "lease_renewed_seconds_ago": round(since, 3) if since is not None else None,
                "live_nodes": self.alive, "reaped_nodes": self.reaped}


async def _nothing(dead: str) -> None:
    """A dead node that left nothing this node knows how to end: only its membership goes."""
