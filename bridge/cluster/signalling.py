"""Several platform nodes serving one service: their calls in Redis, signalling over pub/sub.

A call lives on its home node, the platform node its caller's WebSocket reached (its state
machine, timers and callbacks stay there, as with one node). What the other nodes need is in
Redis:
  pcall:<sid>      the call's home node, caller, callee and state, while the call is up
  pcalls:<node>    the sids a node is home to (dropped with them when the node dies)
  pbusy:<user>     the sids a user is in (`one_call_per_user` across nodes)
  plisten:<user>   node -> listen sockets the user holds there (embedded pushes)
and each node reads one pub/sub channel, `pnode:<node>`, of JSON messages:
  {"t": "attach", "leg", "from", "msg"}  a callee's verify_call reached `from`: the home node
                                         runs the callee's leg over the link (single use of
                                         cc_param is the home node's, as ever)
  {"t": "up", "leg", "msg"}              a message of that callee, relayed to the home node
  {"t": "down", "leg", "msg"}            a message of the platform to that callee
  {"t": "close", "leg"}                  either end closed the leg
  {"t": "push", "user", "push"}          an embedded push for a user listening on that node
  {"t": "rest", "req", "from", "sid",    an app server's REST request for a call homed there,
   "op", "service"}                      authenticated by the node it reached (`op`: get, delete)
  {"t": "rest_reply", "req", "status",   the home node's answer, relayed as the HTTP answer
   "body"}
So a caller and a callee on different nodes (a load balancer in front of the platform nodes)
talk as if on one. A home node that dies takes its calls with it (its callers' sockets were
there); the nodes relaying their callees say so (SERVICE_MAINTENANCE) when its lease expires.
The nodes must share `platform.cc_param_secret` (a cc_param minted on one is checked on another).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

from aiohttp import web

from ..logsafe import safe
from ..reasons import Disconnected, DisconnectReason as R, Source
from .node import Node
from .store import RedisDown, Store

log = logging.getLogger("bridge.cluster")

_MAINTENANCE = Disconnected(Source.CLOUD_SERVER, R.SERVICE_MAINTENANCE).to_json()
Attach = Callable[["LinkedSocket", dict], Awaitable[None]]
Deliver = Callable[[str, dict], Awaitable[bool]]
Answer = Callable[[str, str, str], Awaitable[tuple[int, dict]]]    # sid, op, service -> status, body


class LinkedSocket:
    """A callee's WebSocket on another node, as the home node's platform sees it: the part of
    aiohttp's WebSocketResponse the platform uses (`send_str`, `close`, `closed`)."""

    def __init__(self, link: "Signalling", leg: str, node: str) -> None:
        self.link = link
        self.leg = leg
        self.node = node
        self.inbox: asyncio.Queue[dict | None] = asyncio.Queue()
        self.closed = False

    async def send_str(self, text: str) -> None:
        if not self.closed:
            try:
                await self.link.publish(self.node, {"t": "down", "leg": self.leg, "msg": json.loads(text)})
            except RedisDown as exc:
                log.warning("cluster: a message to a relayed call leg is lost: %s", exc)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        if self.closed:
            return False
        self.closed = True
        self.inbox.put_nowait(None)
        with contextlib.suppress(RedisDown):
            await self.link.publish(self.node, {"t": "close", "leg": self.leg})
        self.link.linked.pop(self.leg, None)
        return True

    async def messages(self) -> AsyncIterator[dict]:
        while True:
            msg = await self.inbox.get()
            if msg is None:
                return
            yield msg


class Signalling:
    def __init__(self, store: Store, node: Node, answer_timeout: float, max_call_time: float) -> None:
        self.store = store
        self.node = node
        self.id = node.id
        self.ttl_ms = int((answer_timeout + max_call_time + 60) * 1000)   # a record outlives no call
        self.linked: dict[str, LinkedSocket] = {}                        # home side: relayed callees
        self.relayed: dict[str, tuple[web.WebSocketResponse, str]] = {}  # relay side: leg -> (ws, home)
        self.on_attach: Attach | None = None
        self.on_push: Deliver | None = None
        self.on_rest: Answer | None = None
        self._replies: dict[str, asyncio.Future] = {}                    # REST requests sent home
        self._pubsub: Any = None
        self._reader: asyncio.Task | None = None
        node.on_dead["platform"] = self._forget_node
        node.on_beat.append(self._drop_dead_homes)

    def _channel(self, node: str) -> str:
        return self.store.key("pnode", node)

    async def start(self) -> None:
        self._pubsub = self.store.client.pubsub(ignore_subscribe_messages=True)
        await self.store.run(self._pubsub.subscribe(self._channel(self.id)))
        self._reader = asyncio.ensure_future(self._read())

    async def stop(self) -> None:
        if self._reader is not None:
            while not self._reader.done():
                self._reader.cancel()
                await asyncio.wait([self._reader], timeout=1)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()

    async def publish(self, node: str, message: dict) -> None:
        await self.store.run(self.store.client.publish(self._channel(node), json.dumps(message)))

    async def _read(self) -> None:
        while True:
            try:
                raw = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:                 # Redis gone: try again, say so once
                log.warning("cluster: platform signalling channel: %s", safe(exc))
                await asyncio.sleep(self.node.cfg.heartbeat)
                with contextlib.suppress(Exception):
                    await self._pubsub.subscribe(self._channel(self.id))
                continue
            if raw is None:
                continue
            try:
                await self._handle(json.loads(raw["data"]))
            except Exception:
                log.exception("cluster: a platform signalling message failed")

    async def _handle(self, m: dict) -> None:
        kind, leg = m.get("t"), m.get("leg", "")
        if kind == "attach" and self.on_attach is not None:
            sock = self.linked[leg] = LinkedSocket(self, leg, m["from"])
            asyncio.ensure_future(self.on_attach(sock, m["msg"]))
        elif kind == "up" and leg in self.linked:
            self.linked[leg].inbox.put_nowait(m["msg"])
        elif kind == "close" and leg in self.linked:
            sock = self.linked.pop(leg)
            sock.closed = True
            sock.inbox.put_nowait(None)
        elif kind == "down" and leg in self.relayed:
            ws = self.relayed[leg][0]
            if not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_str(json.dumps(m["msg"]))
        elif kind == "close" and leg in self.relayed:
            ws = self.relayed.pop(leg)[0]
            await ws.close()
        elif kind == "push" and self.on_push is not None:
            await self.on_push(m["user"], m["push"])
        elif kind == "rest" and self.on_rest is not None:
            asyncio.ensure_future(self._answer(m))
        elif kind == "rest_reply" and m.get("req") in self._replies:
            future = self._replies.pop(m["req"])
            if not future.done():
                future.set_result((int(m["status"]), m["body"]))

    # REST for app servers: a call's requests answered by its home node -------------------------

    async def ask_home(self, home: str, sid: str, op: str, service: str) -> tuple[int, dict]:
        """The home node's answer to an app server's request for call `sid`. RedisDown; TimeoutError
        if the home node does not answer within two Redis timeouts (dead, or cut off)."""
        req = uuid.uuid4().hex
        future = self._replies[req] = asyncio.get_running_loop().create_future()
        try:
            await self.publish(home, {"t": "rest", "req": req, "from": self.id, "sid": sid, "op": op,
                                      "service": service})
            async with asyncio.timeout(self.store.cfg.redis_timeout * 2):
                return await future
        finally:
            self._replies.pop(req, None)

    async def _answer(self, m: dict) -> None:
        assert self.on_rest is not None
        try:
            status, body = await self.on_rest(m["sid"], m["op"], m["service"])
            await self.publish(m["from"], {"t": "rest_reply", "req": m["req"], "status": status, "body": body})
        except RedisDown as exc:
            log.warning("cluster: the answer to a REST request for call %s is lost: %s", safe(m.get("sid", "")), exc)
        except Exception:
            log.exception("cluster: a REST request relayed from %s failed", safe(m.get("from", "")))

    # the relay side: a callee whose call lives on another node ------------------------------

    async def relay(self, ws: web.WebSocketResponse, first: dict, messages: AsyncIterator[dict], home: str) -> None:
        """Carry a callee's leg to the call's home node until either end closes it."""
        leg = uuid.uuid4().hex
        self.relayed[leg] = (ws, home)
        try:
            await self.publish(home, {"t": "attach", "leg": leg, "from": self.id, "msg": first})
            async for m in messages:
                await self.publish(home, {"t": "up", "leg": leg, "msg": m})
        finally:
            if self.relayed.pop(leg, None) is not None:
                with contextlib.suppress(RedisDown):
                    await self.publish(home, {"t": "close", "leg": leg})

    async def _drop_dead_homes(self) -> None:
        """Every node, every heartbeat: the legs it relays to a home node that died end."""
        homes = sorted({home for _, home in self.relayed.values()})
        if not homes:
            return
        pipe = self.store.client.pipeline(transaction=False)
        for home in homes:
            pipe.exists(self.store.key("lease", home))
        dead = {home for home, ok in zip(homes, await self.store.run(pipe.execute())) if not ok}
        for leg, (ws, home) in list(self.relayed.items()):
            if home in dead:
                self.relayed.pop(leg, None)
                log.warning("cluster: platform node %s died: ending the call leg relayed to it", home)
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_str(json.dumps({"type": "disconnected", **_MAINTENANCE}))
                await ws.close()

    async def _forget_node(self, dead: str) -> None:
        """The reaper of a dead node: its calls' records go."""
        sids = await self.store.run(self.store.client.smembers(self.store.key("pcalls", dead)))
        pipe = self.store.client.pipeline(transaction=False)
        for sid in sids:
            pipe.delete(self.store.key("pcall", sid))
        pipe.delete(self.store.key("pcalls", dead))
        await self.store.run(pipe.execute())

    # calls ------------------------------------------------------------------------------------

    async def home_of(self, sid: str) -> str | None:
        return await self.store.run(self.store.client.hget(self.store.key("pcall", sid), "home"))

    async def call_made(self, sid: str, caller: str, callee: str, busy_users: list[str]) -> None:
        pipe = self.store.client.pipeline(transaction=True)
        key = self.store.key("pcall", sid)
        pipe.hset(key, mapping={"home": self.id, "caller": caller, "callee": callee, "state": "calling"})
        pipe.pexpire(key, self.ttl_ms)
        pipe.sadd(self.store.key("pcalls", self.id), sid)
        for user in busy_users:
            pipe.sadd(self.store.key("pbusy", user), sid)
        await self.store.run(pipe.execute())

    async def state(self, sid: str, state: str) -> None:
        await self.store.run(self.store.client.hset(self.store.key("pcall", sid), "state", state))

    async def call_ended(self, sid: str, users: list[str]) -> None:
        pipe = self.store.client.pipeline(transaction=True)
        pipe.delete(self.store.key("pcall", sid))
        pipe.srem(self.store.key("pcalls", self.id), sid)
        for user in users:
            pipe.srem(self.store.key("pbusy", user), sid)
        try:
            await self.store.run(pipe.execute())
        except RedisDown as exc:             # the record expires by itself; `busy` skips it then
            log.warning("cluster: call %s ended, but Redis did not hear it: %s", sid, exc)

    async def busy(self, user: str) -> bool:
        """In a call on any node (its sids whose record is still there)."""
        sids = await self.store.run(self.store.client.smembers(self.store.key("pbusy", user)))
        if not sids:
            return False
        pipe = self.store.client.pipeline(transaction=False)
        for sid in sids:
            pipe.exists(self.store.key("pcall", sid))
        alive = await self.store.run(pipe.execute())
        gone = [sid for sid, ok in zip(sids, alive) if not ok]
        if gone:
            await self.store.run(self.store.client.srem(self.store.key("pbusy", user), *gone))
        return any(alive)

    # listeners (embedded push) ----------------------------------------------------------------

    async def listening(self, user: str, delta: int) -> None:
        key = self.store.key("plisten", user)
        if await self.store.run(self.store.client.hincrby(key, self.id, delta)) <= 0:
            await self.store.run(self.store.client.hdel(key, self.id))

    async def push_elsewhere(self, user: str, push: dict) -> bool:
        """Hand a push to the other live nodes where `user` listens; False if there are none."""
        nodes = await self.store.run(self.store.client.hgetall(self.store.key("plisten", user)))
        listed = [n for n, count in nodes.items() if n != self.id and int(count) > 0]
        pipe = self.store.client.pipeline(transaction=False)
        for node in listed:
            pipe.exists(self.store.key("lease", node))
        leased = await self.store.run(pipe.execute()) if listed else []
        targets = [n for n, ok in zip(listed, leased) if ok]
        for node in targets:
            await self.publish(node, {"t": "push", "user": user, "push": push})
        return bool(targets)
