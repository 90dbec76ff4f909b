"""A cluster for end-to-end tests: Redis, Kamailio with the dispatcher, one platform process
(`bridge platform`) and N bridge nodes (`bridge run`, `platform.embedded: false`), each with
its own SIP port, RTP slice, notification listener, journal and node id; the platform pushes
to all nodes (a `push_url` list). Everything on 127.0.0.1, on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import yaml
from aiohttp import web

from bridge import callbacks

from conftest import free_port
from stack import BRIDGE_PW, BRIDGE_USER, ROOT, Daemon
from testbed import DEFAULT_USERS

LEASE, HEARTBEAT = 2.0, 0.5          # seconds: a dead node's calls end within LEASE + HEARTBEAT (+ a BYE)


def base_config(platform_port: int, notify_ports: list[int], kamailio_port: int) -> dict:
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["log_level"] = "debug"
    data["platform"]["listen"] = f"127.0.0.1:{platform_port}"
    data["platform"]["public_url"] = f"http://127.0.0.1:{platform_port}"
    data["platform"]["services"]["demo-desk"]["push_url"] = [
        f"http://127.0.0.1:{p}/v1/notifications" for p in notify_ports]
    data["sip"].update({"registrar": f"127.0.0.1:{kamailio_port}", "keepalive": "1s",
                        "register_expires": "10s"})
    data["bridge"]["drain_timeout"] = "3s"
    return data


def node_config(data: dict, i: int, sip_port: int, notify_port: int, redis_url: str, workdir: Path,
                register: bool = False) -> dict:
    """Node i's config: `data` (a `cluster:` section in it keeps its other keys) with its own
    ports, RTP slice, journal, Redis and node id."""
    node = yaml.safe_load(yaml.safe_dump(data))
    node["platform"]["embedded"] = False
    node["bridge"]["trusted_platforms"] = [node["platform"]["public_url"].replace("http", "ws", 1) + "/v1/ws"]
    node["notifications"]["listen"] = f"127.0.0.1:{notify_port}"
    low = 33000 + 330 * i                             # each node its own slice: 165 calls, 3 in 33000-33989
    node["sip"].update({"listen": f"127.0.0.1:{sip_port}", "register": register,
                        "rtp_ports": f"{low}-{low + 329}", "journal": str(workdir / "sip-dialogs.jsonl")})
    node["cluster"] = {**(data.get("cluster") or {}), "redis_url": redis_url, "node_id": f"node{i}",
                       "lease": f"{LEASE}s", "heartbeat": f"{HEARTBEAT}s", "redis_timeout": "400ms"}
    return node


class PlatformProcess(Daemon):
    """`bridge platform -c FILE`: ready once its HTTP answers."""

    def start(self, wrapper: list[str] | None = None) -> "PlatformProcess":
        exe = shutil.which("bridge") or pytest.fail("the `bridge` command is not installed: run tests/run")
        self.proc = subprocess.Popen([exe, "platform", "-c", str(self.path)], stdout=open(self.log_path, "w"),
                                     stderr=subprocess.STDOUT)
        return self

    async def ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"bridge platform exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.get(self.platform_url + "/dialer/config.json") as r:
                        if r.status == 200:
                            return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the platform did not come up within {timeout} s\n{self.log()[-3000:]}")
            await asyncio.sleep(0.1)

    async def health(self) -> tuple[int, dict]:
        """GET /healthz on the platform listener (a `bridge platform` has no other)."""
        async with aiohttp.ClientSession() as http:
            async with http.get(self.platform_url + "/healthz") as r:
                return r.status, await r.json()

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as http:
            async with http.get(self.platform_url + "/metrics") as r:
                return await r.text()


class Node(Daemon):
    """One bridge node: `bridge run` with a `cluster:` section."""

    def __init__(self, cfg_path: Path, sip_port: int) -> None:
        super().__init__(cfg_path)
        self.sip_port = sip_port
        assert self.cfg.cluster is not None
        self.id = self.cfg.cluster.node_id

    def kill(self) -> None:
        """kill -9: no drain, no BYE, no goodbye to Redis."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def calls_taken(self) -> int:
        """Calls this node started (push or INVITE taken), from its log."""
        text = self.log()
        return len(re.findall(r"notification: call \S+ from", text)) + len(re.findall(r"SIP call \S+ from \S+ to \S+: route", text))


class Cluster:
    def __init__(self, tmp_path: Path, kamailio_factory, redis_url: str, nodes: int = 3,
                 edit: Callable[[dict], None] | None = None, register: bool = False, platforms: int = 1) -> None:
        """`register`: each node registers its own contact as the "bridge" user (Kamailio
        forks a desk call to all of them) instead of being a dispatcher target. `platforms`: so
        many platform nodes (one Redis); bridge node i uses platform i % platforms."""
        self.tmp = tmp_path
        self.redis_url = redis_url
        self.sip_ports = [free_port() for _ in range(nodes)]
        self.notify_ports = [free_port() for _ in range(nodes)]
        self.kamailio = kamailio_factory({**DEFAULT_USERS, BRIDGE_USER: BRIDGE_PW}, invite_auth=True,
                                         dispatcher=None if register else self.sip_ports)
        self.data = base_config(free_port(), self.notify_ports, self.kamailio.port)
        if edit is not None:
            edit(self.data)
        self.platforms: list[PlatformProcess] = []
        for i in range(platforms):
            pdir = tmp_path / f"platform{i}"
            pdir.mkdir()
            alone = {k: v for k, v in self.data.items() if k != "cluster"}     # one platform: no cluster
            pdata = platform_node_config(self.data, i, redis_url) if platforms > 1 else alone
            (pdir / "config.yaml").write_text(yaml.safe_dump(pdata, sort_keys=False))
            self.platforms.append(PlatformProcess(pdir / "config.yaml"))
        self.platform = self.platforms[0]
        ws_urls = [p.cfg.platform.ws_url for p in self.platforms]
        self.nodes: list[Node] = []
        for i, (sip, notify) in enumerate(zip(self.sip_ports, self.notify_ports)):
            ndir = tmp_path / f"node{i}"
            ndir.mkdir()
            path = ndir / "config.yaml"
            data = node_config(self.data, i, sip, notify, redis_url, ndir, register)
            data["platform"]["public_url"] = self.platforms[i % platforms].platform_url
            data["bridge"]["trusted_platforms"] = ws_urls
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            self.nodes.append(Node(path, sip))

    @property
    def url(self) -> str:
        return self.platform.platform_url

    def token(self, user: str, service: str = "demo-app") -> str:
        return self.platform.token(user, service)

    async def start(self) -> "Cluster":
        for p in self.platforms:
            p.start()
        for node in self.nodes:
            node.start()
        for p in self.platforms:
            await p.ready()
        for node in self.nodes:
            await node.ready()
        return self

    async def noticed(self, node: Node, state: str, timeout: float = 10) -> float:
        """Wait until Kamailio's dispatcher marks `node` down or up (its event routes log it);
        returns the seconds waited."""
        line = f"TESTBED dispatcher: bridge node sip:127.0.0.1:{node.sip_port} {state}"
        started = time.monotonic()
        await asyncio.to_thread(self.kamailio.wait_log, line, timeout)
        return time.monotonic() - started

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        for p in self.platforms:
            p.stop()

    def logs(self) -> str:
        parts = [f"===== {p.path.parent.name} =====\n{p.log()[-3000:]}" for p in self.platforms]
        parts += [f"===== {n.id} =====\n{n.log()[-4000:]}" for n in self.nodes]
        return "\n".join(parts)


@pytest.fixture
async def start_cluster(tmp_path, kamailio_factory, redis_server):
    """start_cluster(nodes=3, edit=None, register=False, platforms=1) -> a started Cluster (stopped at teardown, logs printed)."""
    made: list[Cluster] = []

    async def start(nodes: int = 3, edit: Callable[[dict], None] | None = None, register: bool = False,
                    platforms: int = 1) -> Cluster:
        c = Cluster(tmp_path, kamailio_factory, redis_server.url, nodes, edit, register, platforms)
        made.append(c)
        return await c.start()
    yield start
    for c in made:
        c.stop()
        print(c.logs())


def platform_node_config(data: dict, i: int, redis_url: str) -> dict:
    """One of several platform nodes (`bridge platform`): its own port and public URL, the
    shared cc_param key, the cluster's Redis."""
    node = yaml.safe_load(yaml.safe_dump(data))
    port = free_port()
    node["platform"].update({"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}",
                             "cc_param_secret": "cluster-test-cc-param-secret-0123456789"})
    node["cluster"] = {"redis_url": redis_url, "node_id": f"p{i}", "lease": f"{LEASE}s",
                       "heartbeat": f"{HEARTBEAT}s", "redis_timeout": "400ms"}
    return node


@pytest.fixture
async def start_platforms(tmp_path, kamailio_factory, redis_server):
    """start_platforms(n=2) -> n started `bridge platform` nodes sharing one Redis."""
    made: list[PlatformProcess] = []

    async def start(n: int = 2) -> list[PlatformProcess]:
        data = base_config(free_port(), [free_port()], free_port())
        for i in range(n):
            pdir = tmp_path / f"platform{i}"
            pdir.mkdir()
            (pdir / "config.yaml").write_text(yaml.safe_dump(platform_node_config(data, i, redis_server.url)))
            made.append(PlatformProcess(pdir / "config.yaml").start())
        for p in made:
            await p.ready()
        return made
    yield start
    for p in made:
        p.stop()
        print(f"===== {p.path.parent.name} =====\n{p.log()[-4000:]}")


class PushRelay:
    """An HTTP server between the platform and the bridge nodes: the platform's pushes for desk
    users reach `handle(request)` instead of the nodes; `nodes` are the nodes' push URLs and
    `edit` the config edit that puts the relay in their place (pass it to start_cluster)."""

    def __init__(self, handle: Callable[[web.Request], Awaitable[web.Response]]) -> None:
        self.handle = handle
        self.nodes: list[str] = []
        self.port = free_port()

    def edit(self, d: dict) -> None:
        desk = d["platform"]["services"]["demo-desk"]
        self.nodes.extend(desk["push_url"])
        desk["push_url"] = f"http://127.0.0.1:{self.port}/push"

    @staticmethod
    async def signed(request: web.Request) -> tuple[bytes, dict[str, str]]:
        """The push as signed by the platform: its body and the headers that carry the signature."""
        keep = (callbacks.TIMESTAMP, callbacks.SIGNATURE, "Content-Type")
        return await request.read(), {k: request.headers[k] for k in keep}

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator["PushRelay"]:
        app = web.Application()
        app.router.add_post("/push", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await runner.cleanup()
