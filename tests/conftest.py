"""Shared fixtures: a platform on a free port, a small app server, SDK users."""

from __future__ import annotations

import asyncio
import socket
import textwrap
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from bridge import callbacks, config, ice, token
from bridge.platform import Platform

# Every WebRTC peer in the tests offers only loopback candidates.
ice.use_host_addresses(["127.0.0.1"])

APP_SECRET = "demo-app-test-secret-0123456789abcdef"
OTHER_SECRET = "other-app-test-secret-0123456789abcdef"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def platform_yaml(port: int, *, notify_url: str | None = None, event_url: str | None = None,
                  answer_timeout: str = "60s", max_call_time: str = "4h", one_call_per_user: bool = True) -> str:
    def url(u: str | None) -> str:
        return u if u else "null"
    return textwrap.dedent(f"""\
        log_level: debug
        platform:
          listen: 127.0.0.1:{port}
          answer_timeout: {answer_timeout}
          max_call_time: {max_call_time}
          services:
            demo-app:
              api_key: demo-app-key
              api_secret: {APP_SECRET}
              notify_cb_url: {url(notify_url)}
              call_event_cb_url: {url(event_url)}
              one_call_per_user: {str(one_call_per_user).lower()}
            other-app:
              api_key: other-app-key
              api_secret: {OTHER_SECRET}
        """)


@dataclass
class RunningPlatform:
    platform: Platform
    url: str
    cfg: config.Config

    def token(self, user: str, service: str = "demo-app", **kw) -> str:
        s = self.cfg.platform.services[service]
        return token.issue(token.ServiceKey(s.id, s.api_key, s.api_secret), user, **kw)


@pytest.fixture
async def start_platform():
    """start_platform(**platform_yaml kwargs) -> RunningPlatform on a free port."""
    runners: list[web.AppRunner] = []

    async def start(**kw) -> RunningPlatform:
        port = free_port()
        cfg = config.loads(platform_yaml(port, **kw), "test.yaml")
        platform = Platform(cfg.platform)
        app = web.Application()
        platform.add_routes(app)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return RunningPlatform(platform, f"http://127.0.0.1:{port}", cfg)

    yield start
    for runner in runners:
        await runner.cleanup()


@dataclass
class AppServer:
    """A test app server: receives Notify and Call Event callbacks, checks their signatures,
    and relays each push to whoever awaits `next_push`."""

    url: str
    secret: str
    pushes: asyncio.Queue = field(default_factory=asyncio.Queue)
    events: list[dict] = field(default_factory=list)
    event_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    bad_signatures: int = 0
    notify_status: int = 200

    async def next_push(self, timeout: float = 10) -> dict:
        return await asyncio.wait_for(self.pushes.get(), timeout)

    async def event_for(self, sid: str, timeout: float = 10) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                for e in self.events:
                    if e["sid"] == sid:
                        return e
                self.event_arrived.clear()
                await self.event_arrived.wait()


@pytest.fixture
async def app_server():
    port = free_port()
    server = AppServer(url=f"http://127.0.0.1:{port}", secret=APP_SECRET)

    def verify(request: web.Request) -> None:
        problem = callbacks.check(server.secret, request.headers, request.raw_path)
        if problem:
            server.bad_signatures += 1
            raise web.HTTPUnauthorized(text=problem)

    async def notify(request: web.Request) -> web.Response:
        verify(request)
        if server.notify_status != 200:
            return web.Response(status=server.notify_status)
        q = request.query
        # the app server pushes to the callee: these are the seed's push fields
        server.pushes.put_nowait({"cc_param": q["param"], "app_callee_uid": q["to_user_id"],
                                  "app_callee_sid": q["to_service_id"], "app_call_type": "audio",
                                  "sid": q["sid"], "from_user_id": q["from_user_id"],
                                  "app_svr_data": q.get("app_svr_data")})
        return web.Response(text="ok")

    async def event(request: web.Request) -> web.Response:
        verify(request)
        server.events.append(dict(request.query))
        server.event_arrived.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/notify", notify)
    app.router.add_get("/event", event)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield server
    await runner.cleanup()
