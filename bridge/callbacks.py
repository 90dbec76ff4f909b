"""Signed HTTP between the platform and app servers.

The platform signs each callback it makes (Notify, Call Event) with the service's API secret,
and an app server signs its requests to the platform's REST API the same way:

  X-Bridge-Timestamp: <unix seconds>
  X-Bridge-Signature: v1=<hex HMAC-SHA256(api_secret, "<timestamp>.<payload>")>

where payload is the request's path and query string as sent (for GET/DELETE) or its body
(for POST). Receivers refuse signatures older than a replay window, and any timestamp that is
not 1-12 ASCII digits or signature that is not ASCII is "bad", never an exception.

The platform sends its callbacks through `Clients`: https URLs verified against the system's
CAs or `platform.callback_ca`, one bounded connection pool per service and purpose, so that one app server that hangs cannot hold the connections of another, or
those call setup needs. Requests say `User-Agent: bridge`, without versions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import ssl
import time
from typing import Mapping

import aiohttp
import yarl

from . import tls

TIMESTAMP = "X-Bridge-Timestamp"
SIGNATURE = "X-Bridge-Signature"
API_KEY = "X-Bridge-Api-Key"
REPLAY_WINDOW = 300.0
USER_AGENT = "bridge"                       # no versions on the wire

_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class CallbackError(Exception):
    """The callback could not be delivered or the app server answered a failure.

    `elsewhere`: another node may take it (no connection, no answer in time, or a 503 with
    `Retry-After`: draining or full), as opposed to a refusal of the request itself."""

    def __init__(self, message: str, *, elsewhere: bool = False) -> None:
        super().__init__(message)
        self.elsewhere = elsewhere


def signature(secret: str, timestamp: str, payload: bytes | str) -> str:
    if isinstance(payload, str):
        payload = payload.encode()
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + payload, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def signed_headers(secret: str, payload: bytes | str, *, now: float | None = None) -> dict[str, str]:
    ts = str(int(time.time() if now is None else now))
    return {TIMESTAMP: ts, SIGNATURE: signature(secret, ts, payload)}


def check(secret: str, headers: Mapping[str, str], payload: bytes | str, *,
          window: float = REPLAY_WINDOW, now: float | None = None) -> str | None:
    """Return None if the request is signed and fresh, else why not."""
    ts, sig = headers.get(TIMESTAMP), headers.get(SIGNATURE)
    if not ts or not sig:
        return "request is not signed"
    if not _TIMESTAMP.fullmatch(ts):
        return "bad timestamp"
    if abs((time.time() if now is None else now) - int(ts)) > window:
        return "signature timestamp outside the replay window"
    if not sig.isascii() or not hmac.compare_digest(sig.encode(), signature(secret, ts, payload).encode()):
        return "bad signature"
    return None


class Clients:
    """HTTP client pools for callbacks, one per (service, purpose): "setup" (Notify callback,
    push POST: a call waits for it) and "events" (Call Events). Each pool holds a bounded
    number of connections, and its requests time out (waiting for a connection included)."""

    LIMITS = {"setup": 64, "events": 16}

    def __init__(self, ca: str | None = None) -> None:
        self._sessions: dict[tuple[str, str], aiohttp.ClientSession] = {}
        self.closed = False
        self._ssl: ssl.SSLContext | bool = tls.client_context(ca) if ca else True   # https: verified

    def session(self, service: str, purpose: str) -> aiohttp.ClientSession:
        if self.closed:
            raise CallbackError("the platform is shutting down")
        key = (service, purpose)
        session = self._sessions.get(key)
        if session is None:
            connector = aiohttp.TCPConnector(limit=self.LIMITS[purpose], ssl=self._ssl)
            session = self._sessions[key] = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": USER_AGENT})
        return session

    async def close(self) -> None:
        self.closed = True
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


async def get(session: aiohttp.ClientSession, url: str, params: Mapping[str, str], secret: str,
              timeout: float) -> None:
    """GET `url` with `params`, signed; raise CallbackError unless the answer is 2xx."""
    target = yarl.URL(url).update_query(params)
    headers = signed_headers(secret, target.raw_path_qs)
    try:
        async with session.get(target, headers=headers, allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if not 200 <= response.status < 300:
                raise CallbackError(f"{target.host}{target.path} answered {response.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CallbackError(f"{target.host}{target.path} unreachable: {type(exc).__name__}") from None


async def post_json(session: aiohttp.ClientSession, url: str, payload: Mapping, secret: str,
                    timeout: float) -> None:
    """POST `payload` as JSON, signed over the body; raise CallbackError unless 2xx."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", **signed_headers(secret, body)}
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if not 200 <= response.status < 300:
                busy = response.status == 503 and "Retry-After" in response.headers
                raise CallbackError(f"{url} answered {response.status}", elsewhere=busy)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CallbackError(f"{url} unreachable: {type(exc).__name__}", elsewhere=True) from None
