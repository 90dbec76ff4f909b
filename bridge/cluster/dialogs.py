"""Each node's open dialogs in Redis: the crash journal's entries, where a survivor can read them.

`bridge:dialogs:<node>` is a hash of Call-ID -> the call's latest journal entry
(`bridge.sip.journal`: `invite`, `ringing` or `up`; `down` deletes the field). A node writes its
own hash only, in the order the user agent journals (one writer task, pipelined), and never
waits for it on the call's path: a write Redis misses is retried, in order, until it lands. When
a node's lease expires, the node that claims its reaping (`reaper`) reads its hash with
`left_open`, ends each call (`bridge.sip.journal.end_left_open`: BYE, CANCEL or 480) and drops
the hash with `forget`. A node whose lease Redis forgot writes its open dialogs back (`restore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from .store import RedisDown, Store

log = logging.getLogger("bridge.cluster")


class DialogMirror:
    """This node's journal entries, kept in Redis (a `bridge.sip.useragent.DialogSink`)."""

    def __init__(self, store: Store, node_id: str) -> None:
        self.store = store
        self.key = store.key("dialogs", node_id)
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._writer: asyncio.Task | None = None
        self.failures = 0
        self.open: dict[str, dict[str, Any]] = {}     # what the hash should hold: to write back (`restore`)

    def start(self) -> None:
        self._writer = asyncio.ensure_future(self._write_all())

    async def stop(self) -> None:
        """Flush what is queued (bounded by one Redis timeout), then stop the writer."""
        if self._writer is not None:
            if not self._queue.empty():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.store.cfg.redis_timeout * 2):
                        await self._queue.join()
            while not self._writer.done():
                self._writer.cancel()       # again if a Redis timeout swallowed the first request
                await asyncio.wait([self._writer], timeout=self.store.cfg.heartbeat)
            self._writer = None

    def write(self, entry: dict[str, Any]) -> None:
        if entry["op"] == "down":
            self.open.pop(entry["call_id"], None)
        else:
            self.open[entry["call_id"]] = entry
        self._queue.put_nowait(entry)

    async def restore(self) -> None:
        """Write every open dialog again (Redis forgot them: restarted empty, or reaped us)."""
        if self.open:
            await self.store.run(self.store.client.hset(
                self.key, mapping={c: json.dumps(e, separators=(",", ":")) for c, e in self.open.items()}))

    async def _write_all(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 100:
                batch.append(self._queue.get_nowait())
            while True:
                pipe = self.store.client.pipeline(transaction=False)
                for entry in batch:
                    if entry["op"] == "down":
                        pipe.hdel(self.key, entry["call_id"])
                    else:
                        pipe.hset(self.key, entry["call_id"], json.dumps(entry, separators=(",", ":")))
                try:
                    await self.store.run(pipe.execute())
                    break
                except RedisDown as exc:
                    self.failures += 1
                    if self.failures == 1 or self.failures % 100 == 0:
                        log.warning("cluster: dialogs not mirrored yet (retrying): %s", exc)
                    await asyncio.sleep(self.store.cfg.heartbeat)
            for _ in batch:
                self._queue.task_done()

    async def clear(self) -> None:
        """A clean stop, or a fresh start: this node holds no dialogs."""
        await self.store.run(self.store.client.delete(self.key))


async def left_open(store: Store, node_id: str) -> list[dict[str, Any]]:
    """The dialogs `node_id` holds according to Redis."""
    raw = await store.run(store.client.hgetall(store.key("dialogs", node_id)))
    entries = []
    for value in raw.values():
        try:
            entry = json.loads(value)
            if isinstance(entry, dict) and "op" in entry and "call_id" in entry:
                entries.append(entry)
        except ValueError:
            continue
    return entries


async def forget(store: Store, node_id: str) -> None:
    await store.run(store.client.delete(store.key("dialogs", node_id)))
