"""The `cluster:` section of the config: where Redis is, who this node is, how long a lease lasts.

    cluster:
      redis_url_env: BRIDGE_REDIS_URL   # or redis_url / redis_url_file (a secret: it may hold a password)
      node_id: host-a-5080              # default: the host name and the SIP port
      lease: 5s                         # a node silent this long is dead; its calls are ended
      heartbeat: 1s                     # how often a node renews its lease and looks for dead ones
      claim_ttl: 5m                     # how long a call's claim keeps other nodes from taking it
      redis_timeout: 1s                 # a Redis command slower than this fails the call

No `cluster:` section: `None`, and the daemon runs alone with its state in memory.
This module reads and checks; it imports no part of the cluster (no Redis here).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ..config.reader import Map, Reader

NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class ClusterConfig:
    redis_url: str = field(repr=False)     # may carry a password: never logged
    node_id: str
    lease: float = 5.0
    heartbeat: float = 1.0
    claim_ttl: float = 300.0
    redis_timeout: float = 1.0

    @property
    def redis_where(self) -> str:
        """The Redis server without credentials, for logs and /healthz."""
        parts = urlsplit(self.redis_url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path or ''}"


def redis_url(value: Any) -> str:
    text = str(value)
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    try:
        parts.port
    except ValueError:
        raise ValueError("has a port out of range") from None
    return text


def node_id(value: Any) -> str:
    text = str(value)
    if not NODE_ID.fullmatch(text):
        raise ValueError("must be 1-64 of A-Z a-z 0-9 _ . -")
    return text


def default_node_id(sip_port: int | None) -> str:
    """The host name and the SIP port: unique per node on a host, stable across restarts."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:50] or "node"
    return f"{host}-{sip_port}" if sip_port else host


def _given(c: "Map") -> str:
    """The key the URL came from (where an error about it points)."""
    for key in ("redis_url_env", "redis_url_file", "redis_url"):
        if key in c and (key != "redis_url_env" or "redis_url" not in c):
            return key
    return "redis_url"


def _record_secret(r: "Reader", c: "Map", url: str) -> None:
    from ..config import SecretOrigin
    env_name = c.get("redis_url_env")
    source = ("file" if "redis_url_file" in c else
              "env" if isinstance(env_name, str) and r.env.get(env_name) else "inline")
    key = {"file": "redis_url_file", "env": "redis_url_env", "inline": "redis_url"}[source]
    r.secrets.append(SecretOrigin("cluster.redis_url", c.lines.get(key, c.line), source,
                                  env_name if isinstance(env_name, str) else None, url))


def read(r: "Reader", root: "Map", sip_port: int | None) -> ClusterConfig | None:
    """The `cluster:` section (None when absent); errors go to `r` with file, line and key."""
    from ..config import duration
    if root.get("cluster") is None:
        return None
    c = r.section(root, "cluster", "cluster", {"redis_url", "redis_url_env", "node_id", "lease", "heartbeat",
                                               "claim_ttl", "redis_timeout"})
    url = r.secret(c, "redis_url", "cluster.redis_url", sensitive=False)
    if url is not None:
        try:
            url = redis_url(url)
        except ValueError as exc:
            r.error(c, _given(c), "cluster.redis_url", str(exc))
            url = None
    if url is not None and urlsplit(url).password:     # only a URL with a password is a secret
        _record_secret(r, c, url)
    if sip_port == 0:
        sip_port = None                    # a port picked at start: not stable, so not in the id
    ident = r.get(c, "node_id", "cluster.node_id", node_id, None) or default_node_id(sip_port)
    lease = r.get(c, "lease", "cluster.lease", duration, 5.0)
    heartbeat = r.get(c, "heartbeat", "cluster.heartbeat", duration, 1.0)
    if heartbeat * 2 > lease:
        r.error(c, "heartbeat", "cluster.heartbeat",
                f"must be at most half of cluster.lease ({lease:g}s): a lease must survive a missed heartbeat")
    timeout = r.get(c, "redis_timeout", "cluster.redis_timeout", duration, 1.0)
    if timeout >= lease:
        r.error(c, "redis_timeout", "cluster.redis_timeout", f"must be shorter than cluster.lease ({lease:g}s)")
    if url is None:
        return None
    return ClusterConfig(redis_url=url, node_id=ident, lease=lease, heartbeat=heartbeat,
                         claim_ttl=r.get(c, "claim_ttl", "cluster.claim_ttl", duration, 300.0),
                         redis_timeout=timeout)
