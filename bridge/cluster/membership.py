"""This process as a member of the cluster: the parts it uses, started and stopped in order.

`join` takes the node's lease (waiting out a killed predecessor's) and takes back the dialogs
that predecessor left in Redis; `serve` hands the user agent to the reaper (dead nodes' calls)
and the dialog mirror (this node's calls), and ends the predecessor's leftovers; `leave` flushes
the mirror and gives the lease back, so that a node stopped cleanly leaves nothing to reap.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from ..sip.journal import end_left_open
from ..sip.useragent import UserAgent
from . import dialogs
from .claim import Claims
from .config import ClusterConfig
from .dialogs import DialogMirror
from .limits import ClusterLimits
from .node import Node
from .reaper import Reaper
from .store import RedisDown, Store

log = logging.getLogger("bridge.cluster")


class Membership:
    def __init__(self, cfg: ClusterConfig) -> None:
        self.cfg = cfg
        self.store = Store(cfg)
        self.node = Node(cfg, self.store)
        self.claims = Claims(self.store, cfg.node_id, cfg.claim_ttl)
        self.limits = ClusterLimits(self.store, cfg.node_id)
        self.dialogs = DialogMirror(self.store, cfg.node_id)
        self.reaper: Reaper | None = None
        self.platform_link: Any = None       # a platform node's `signalling.Signalling`
        self._leftovers: list[dict[str, Any]] = []
        self.node.on_rejoined.append(self.limits.restore)
        self.node.on_rejoined.append(self.dialogs.restore)
        self.node.on_beat.append(self.limits.retry)
        self.node.on_beat.append(self._count)
        self.cluster_calls = 0              # bridged calls across the cluster, at the last heartbeat

    @property
    def id(self) -> str:
        return self.cfg.node_id

    async def join(self, info: dict[str, str]) -> None:
        """Lease and membership (NodeIdInUse if the id is taken by a live node)."""
        self.node.info = info
        await self.node.start()
        if self.node.healthy:
            try:
                self._leftovers = await dialogs.left_open(self.store, self.id)
                await dialogs.forget(self.store, self.id)
            except RedisDown as exc:
                log.warning("cluster: cannot read what a previous run left open: %s", exc)
        log.info("cluster: node %s %s (Redis %s, lease %gs, heartbeat %gs)", self.id,
                 "joined" if self.node.healthy else "starts without the cluster", self.store.where,
                 self.cfg.lease, self.cfg.heartbeat)

    def serve(self, ua: UserAgent, on_reaped: Callable[[], Awaitable[None]]) -> None:
        """Mirror `ua`'s dialogs, reap dead nodes through it, end the predecessor's leftovers."""
        self.reaper = Reaper(self.store, ua)
        self.node.on_dead["dialogs"] = self.reaper.reap
        self.node.on_reaped.append(on_reaped)
        ua.dialog_sinks.append(self.dialogs)
        self.dialogs.start()
        leftovers = [e for e in self._leftovers if e["call_id"] not in ua.left_open]
        self._leftovers = []
        if leftovers:
            log.warning("cluster: ending %d SIP call(s) a previous run of node %s left open", len(leftovers), self.id)
            ua.spawn(end_left_open(ua, leftovers))

    async def _count(self) -> None:
        from .limits import bridge_scope
        self.cluster_calls = await self.limits.total(bridge_scope())

    async def leave(self) -> None:
        if self.platform_link is not None:
            await self.platform_link.stop()
        await self.dialogs.stop()
        await self.node.stop()
        await self.store.close()

    def health(self) -> dict:
        return {**self.node.health(), "dialogs_mirror_failures": self.dialogs.failures,
                "dead_node_calls_ended": self.reaper.ended if self.reaper else 0}
