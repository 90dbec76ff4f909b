"""The connection to Redis every cluster module shares, and the one way its failures surface.

Promise: no Redis command waits longer than `cluster.redis_timeout` (connect included), none is
retried behind the caller's back, and every failure (refused, timed out, a server error) is a
`RedisDown` naming the server without its credentials. Keys all start with `bridge:` so that
one Redis may serve other things. One Redis server (or a Sentinel-managed primary), not a
Redis Cluster: a few scripts touch keys they compute.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .config import ClusterConfig

log = logging.getLogger("bridge.cluster")

PREFIX = "bridge:"
T = TypeVar("T")


class RedisDown(Exception):
    """Redis did not answer, or answered an error: the cluster's shared state is out of reach."""


class Store:
    """One client (a connection pool) per process, with bounded waits."""

    def __init__(self, cfg: ClusterConfig) -> None:
        self.cfg = cfg
        self.where = cfg.redis_where
        self.client: redis.Redis = redis.Redis.from_url(
            cfg.redis_url, decode_responses=True, socket_timeout=cfg.redis_timeout,
            socket_connect_timeout=cfg.redis_timeout, retry=Retry(NoBackoff(), 0),
            client_name=f"bridge-{cfg.node_id}")

    @staticmethod
    def key(*parts: str) -> str:
        return PREFIX + ":".join(parts)

    async def run(self, what: Awaitable[T]) -> T:
        """Await one Redis command (or pipeline); RedisDown if it fails or is late."""
        try:
            async with asyncio.timeout(self.cfg.redis_timeout * 2):
                return await what
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisDown(f"Redis at {self.where}: {type(exc).__name__}: {str(exc)[:160]}") from None

    def script(self, source: str) -> Any:
        return self.client.register_script(source)

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except (RedisError, OSError):
            pass
