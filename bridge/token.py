"""Access tokens: JWT HS256 {sub: service id, uid: user id, iss: API key, iat}.

The app server issues them with its service's API secret; the platform checks them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import jwt


class TokenError(Exception):
    """The token is refused; the message says why (never the token itself)."""


@dataclass(frozen=True)
class ServiceKey:
    service_id: str
    api_key: str
    api_secret: str


@dataclass(frozen=True)
class Identity:
    service_id: str
    user_id: str


def issue(key: ServiceKey, user_id: str, *, now: float | None = None) -> str:
    """Issue an access token for `user_id` of the key's service."""
    iat = int(time.time() if now is None else now)
    claims = {"sub": key.service_id, "uid": user_id, "iss": key.api_key, "iat": iat}
    return jwt.encode(claims, key.api_secret, algorithm="HS256", headers={"typ": "JWT"})


def verify(token: str, keys_by_api_key: Mapping[str, ServiceKey], *, max_age: float,
           skew: float = 30.0, now: float | None = None) -> Identity:
    """Check signature, API key, service and freshness; return who the token speaks for."""
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenError("token is not a JWT") from None
    if header.get("alg") != "HS256":
        raise TokenError("token must be signed with HS256")
    key = keys_by_api_key.get(str(unverified.get("iss")))
    if key is None:
        raise TokenError("unknown API key")
    try:
        claims = jwt.decode(token, key.api_secret, algorithms=["HS256"],
                            options={"require": ["sub", "uid", "iss", "iat"], "verify_iat": False})
    except jwt.InvalidSignatureError:
        raise TokenError("bad token signature") from None
    except jwt.PyJWTError as exc:
        raise TokenError(f"invalid token: {exc}") from None
    if claims["sub"] != key.service_id:
        raise TokenError("token's service does not match its API key")
    iat = claims["iat"]
    if not isinstance(iat, (int, float)) or isinstance(iat, bool):
        raise TokenError("token iat is not a number")
    now = time.time() if now is None else now
    if iat > now + skew:
        raise TokenError("token issued in the future")
    if now - iat > max_age:
        raise TokenError("token expired")
    if not isinstance(claims["uid"], str):
        raise TokenError("token uid is not a string")
    return Identity(claims["sub"], claims["uid"])
