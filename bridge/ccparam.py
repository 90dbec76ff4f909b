"""cc_param: the opaque, signed, expiring call credential that the callee's push carries.

Layout: base64url(JSON payload || 32-byte HMAC-SHA256 over the payload). The payload names the
call, the callee it is for, the platform's URL and an expiry. Single use is enforced by the
platform (a call's callee slot is taken once); this module signs and checks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

_MAC = 32


class CcParamError(Exception):
    """A cc_param that cannot be used; `undecodable` tells a local decode failure apart."""

    def __init__(self, message: str, *, undecodable: bool = False) -> None:
        super().__init__(message)
        self.undecodable = undecodable


@dataclass(frozen=True)
class CcParam:
    sid: str
    callee_service: str
    callee_user: str
    caller_service: str
    caller_user: str
    platform_url: str
    expires: float


def mint(param: CcParam, secret: bytes) -> str:
    payload = json.dumps({
        "v": 1, "sid": param.sid, "to": [param.callee_service, param.callee_user],
        "from": [param.caller_service, param.caller_user], "url": param.platform_url,
        "exp": int(param.expires),
    }, separators=(",", ":")).encode()
    mac = hmac.new(secret, payload, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(payload + mac).decode().rstrip("=")


def decode(text: str) -> CcParam:
    """Decode without checking the signature (what an SDK can do locally)."""
    payload, _ = _split(text)
    return _parse(payload)


def verify(text: str, secret: bytes, *, now: float | None = None) -> CcParam:
    """Check signature and expiry; raise CcParamError if either fails."""
    payload, mac = _split(text)
    if not hmac.compare_digest(mac, hmac.new(secret, payload, hashlib.sha256).digest()):
        raise CcParamError("cc_param signature does not match")
    param = _parse(payload)
    if (time.time() if now is None else now) > param.expires:
        raise CcParamError("cc_param expired")
    return param


def _split(text: str) -> tuple[bytes, bytes]:
    if not isinstance(text, str) or not 0 < len(text) <= 4096:
        raise CcParamError("cc_param must be a non-empty string", undecodable=True)
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise CcParamError("cc_param is not base64", undecodable=True) from None
    if len(raw) <= _MAC:
        raise CcParamError("cc_param is too short", undecodable=True)
    return raw[:-_MAC], raw[-_MAC:]


def _parse(payload: bytes) -> CcParam:
    try:
        data = json.loads(payload)
        to_service, to_user = data["to"]
        from_service, from_user = data["from"]
        param = CcParam(str(data["sid"]), str(to_service), str(to_user), str(from_service),
                        str(from_user), str(data["url"]), float(data["exp"]))
    except (ValueError, KeyError, TypeError):
        raise CcParamError("cc_param content is malformed", undecodable=True) from None
    if data.get("v") != 1:
        raise CcParamError("cc_param version is not supported", undecodable=True)
    return param
