"""The platform's callbacks under app servers that hang or answer garbage (issue 16, items 6 and 18).

Real sockets throughout: a platform, an app server, a Call Event URL that accepts connections
and never answers (or answers garbage), raw WebSocket clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp

from bridge.callbacks import Clients
from conftest import free_port
from stack import kamailio, start_bridge  # noqa: F401  (fixtures)
from testbed.fixtures import kamailio_factory  # noqa: F401


class SilentServer:
    """Accepts TCP connections, reads nothing, answers nothing (or `reply`, then closes)."""

    def __init__(self, reply: bytes | None = None) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> "SilentServer":
        port = free_port()
        self.server = await asyncio.start_server(self._accepted, "127.0.0.1", port, backlog=1024)
        self.url = f"http://127.0.0.1:{port}/event"
        return self

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.reply is None:
            self.writers.append(writer)          # held open, never answered
            return
        self.requests.append(await reader.read(65536))
        writer.write(self.reply)
        writer.close()

    async def __aexit__(self, *exc) -> None:
        for w in self.writers:
            w.close()
        assert self.server is not None
        self.server.close()


def make_call(caller: str, callee: str, token: str) -> str:
    return json.dumps({"type": "make_call", "token": token, "my_id": caller, "my_service_id": "demo-app",
                       "peer_id": callee, "peer_service_id": "demo-app", "media_type": "audio", "sdp": "v=0"})


async def refused_call(session: aiohttp.ClientSession, url: str, n: int) -> str:
    """A makeCall with a bad token: the platform ends it at once and sends its Call Event."""
    async with session.ws_connect(url) as ws:
        await ws.send_str(make_call(f"mallory{n}", "bob", "not-a-token"))
        made = json.loads((await ws.receive(timeout=5)).data)
        ended = json.loads((await ws.receive(timeout=5)).data)
        assert ended["type"] == "disconnected" and ended["code"] == 1501, ended    # SERVICE_ACCESS_TOKEN_ERROR
        return made["sid"]


async def test_a_hanging_call_event_url_does_not_delay_pushes(start_platform, app_server):
    async with SilentServer() as hanging:
        p = await start_platform(notify_url=app_server.url + "/notify", event_url=hanging.url)
        ws_url = p.url.replace("http", "ws") + "/v1/ws"
        async with aiohttp.ClientSession() as session:
            # 150 calls end at once: their Call Events hang on the silent server
            gate = asyncio.Semaphore(50)

            async def one(n: int) -> str:
                async with gate:
                    return await refused_call(session, ws_url, n)
            await asyncio.gather(*(one(n) for n in range(150)))
            await asyncio.sleep(0.5)
            assert hanging.connections >= Clients.LIMITS["events"]
            # 12 calls in a row still get their pushes at once, and wait for the callee
            delays = []
            for n in range(12):
                async with session.ws_connect(ws_url) as ws:
                    started = time.monotonic()
                    await ws.send_str(make_call(f"alice{n}", f"bob{n}", p.token(f"alice{n}")))
                    push = await app_server.next_push(timeout=10)
                    delays.append(time.monotonic() - started)
                    assert push["app_callee_uid"] == f"bob{n}"
                    kinds = [json.loads((await ws.receive(timeout=5)).data)["type"] for _ in range(2)]
                    assert kinds == ["call_made", "wait_connected"], kinds
                    await ws.send_str('{"type": "end_call"}')
    print(f"{hanging.connections} Call Event connections hanging; push delays "
          f"{min(delays) * 1000:.0f}-{max(delays) * 1000:.0f} ms")
    assert max(delays) < 1.0, delays


async def test_a_lost_call_event_is_logged_with_its_sid_and_counted(start_bridge):
    async with SilentServer(reply=b"garbage, not HTTP\r\n\r\n") as garbage:
        def edit(data: dict) -> None:
            data["platform"]["services"]["demo-app"]["call_event_cb_url"] = garbage.url
            data["platform"]["callback_timeout"] = "1s"
        d = await start_bridge(edit)
        async with aiohttp.ClientSession() as session:
            sid = await refused_call(session, d.platform_url.replace("http", "ws") + "/v1/ws", 0)
        deadline = time.monotonic() + 10
        while f"call {sid}: Call Event to demo-app lost after 3 tries" not in d.log():
            assert time.monotonic() < deadline, d.log()[-3000:]
            await asyncio.sleep(0.1)
        assert garbage.connections == 3
        assert all(b"\r\nUser-Agent: bridge\r\n" in r for r in garbage.requests), garbage.requests[0]
        line = next(x for x in d.log().splitlines() if "lost after 3 tries" in x)
        assert " ERROR bridge.platform: " in line, line
        assert 'bridge_platform_callback_failures_total{kind="call_event"} 1.0' in await d.metrics()


async def test_a_failing_background_task_is_logged_with_its_sid(start_platform, caplog):
    p = await start_platform()

    async def deliver() -> None:
        raise RuntimeError("app server said no\r\nFORGED")

    with caplog.at_level(logging.ERROR, logger="bridge.platform"):
        p.platform._spawn(deliver(), "sid-123")
        await asyncio.sleep(0.1)
    [record] = [r for r in caplog.records if "sid-123" in r.getMessage()]
    message = record.getMessage()
    assert message.startswith("call sid-123: background task deliver failed: RuntimeError at "
                              "test_platform_callbacks.py:"), message
    assert "\n" not in message and "\\x0d\\x0aFORGED" in message and record.exc_info is None
