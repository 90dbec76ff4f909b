"""The platform's embedded push: a user's call notifications over a WebSocket."""

from __future__ import annotations

import asyncio
import json
import ssl as _ssl
from dataclasses import dataclass

import aiohttp

from ..reasons import Disconnected
from .call import _http_to_ws
from .params import _validate_ids


@dataclass(frozen=True)
class Push:
    """A call notification as the embedded push delivers it."""

    cc_param: str
    app_callee_uid: str
    app_callee_sid: str
    app_call_type: str
    app_svr_data: str | None
    caller_id: str | None = None
    caller_service_id: str | None = None


class ListenError(Exception):
    def __init__(self, param: Disconnected) -> None:
        super().__init__(f"listen refused: {param}")
        self.param = param


class PushListener:
    """The platform's embedded push: receive call notifications for one user.

        async with PushListener(url, "bob", "demo-app", token) as pushes:
            push = await pushes.next()
    """

    def __init__(self, platform_url: str, my_id: str, my_service_id: str, access_token: str, *,
                 ssl: _ssl.SSLContext | None = None) -> None:
        _validate_ids(my_id, my_service_id, "audio")
        self.url = _http_to_ws(platform_url)
        self.ssl = ssl
        self._hello = {"type": "listen", "token": access_token, "my_id": my_id, "my_service_id": my_service_id}
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> "PushListener":
        self._session = aiohttp.ClientSession()
        try:
            self._ws = await self._session.ws_connect(self.url, heartbeat=30.0,
                                                      ssl=self.ssl if self.ssl is not None else True)
            await self._ws.send_str(json.dumps(self._hello))
            reply = await self._ws.receive_json(timeout=10)
        except BaseException:
            await self.close()
            raise
        if reply.get("type") != "listening":
            await self.close()
            raise ListenError(Disconnected.from_json(reply))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def next(self, timeout: float | None = None) -> Push:
        """The next push; raises ConnectionError if the platform closed the session."""
        assert self._ws is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self._ws.receive()
                if raw.type != aiohttp.WSMsgType.TEXT:
                    raise ConnectionError("the platform closed the push session")
                m = json.loads(raw.data)
                if m.get("type") == "push":
                    return Push(m["cc_param"], m["app_callee_uid"], m["app_callee_sid"], m["app_call_type"],
                                m.get("app_svr_data"), m.get("caller_id"), m.get("caller_service_id"))

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
