"""Signed HTTP between the platform and app servers.

The platform signs each callback it makes (Notify, Call Event) with the service's API secret,
and an app server signs its requests to the platform's REST API the same way:

  X-Bridge-Timestamp: <unix seconds>
  X-Bridge-Signature: v1=<hex HMAC-SHA256(api_secret, "<timestamp>.<payload>")>

where payload is the request's path and query string as sent (for GET/DELETE) or its body
(for POST). Receivers refuse signatures older than a replay window, and any timestamp that is
not 1-12 ASCII digits or signature that is not ASCII is "bad", never an exception.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from typing import Mapping

import aiohttp
import yarl

TIMESTAMP = "X-Bridge-Timestamp"
SIGNATURE = "X-Bridge-Signature"
API_KEY = "X-Bridge-Api-Key"
REPLAY_WINDOW = 300.0

_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class CallbackError(Exception):
    """The callback could not be delivered or the app server answered a failure."""


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
                raise CallbackError(f"{url} answered {response.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CallbackError(f"{url} unreachable: {type(exc).__name__}") from None
