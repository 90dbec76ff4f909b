"""The platform's call: its parties, its state, and the error shapes its clients get."""

from __future__ import annotations

import asyncio
import enum
import json
import time
from dataclasses import dataclass, field

from aiohttp import web

from ..reasons import Disconnected


class State(enum.Enum):
    CALLING = "calling"      # made; the callee is being notified
    VERIFIED = "verified"    # the callee verified cc_param: ringing
    CONNECTED = "connected"
    ENDED = "ended"


@dataclass(frozen=True)
class User:
    service: str
    user: str

    def __str__(self) -> str:
        return f"{self.user}@{self.service}"


@dataclass(eq=False)
class PlatformCall:
    sid: str
    caller: User
    callee: User
    app_server_data: str | None
    offer: str
    cc_param: str = field(repr=False, default="")
    state: State = State.CALLING
    caller_ws: web.WebSocketResponse | None = None
    callee_ws: web.WebSocketResponse | None = None
    answered: bool = False
    setup_time: float = field(default_factory=time.time)
    start_time: float = 0.0
    end_time: float = 0.0
    ended: Disconnected | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    tracked: bool = True  # counts for BUSY (False for calls refused at once)

    def peer_ws(self, ws: web.WebSocketResponse) -> web.WebSocketResponse | None:
        return self.callee_ws if ws is self.caller_ws else self.caller_ws


def error(code: str, message: str) -> dict:
    return {"type": "error", "code": code, "message": message}


def json_error(cls: type[web.HTTPException], code: str, message: str) -> web.HTTPException:
    return cls(text=json.dumps({"error": code, "message": message}), content_type="application/json")
