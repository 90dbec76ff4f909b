"""STUN and TURN servers for app legs, with TURN credentials minted per call.

The platform hands the servers of `webrtc.ice_servers` to every app leg (browser SDK, Python SDK,
the bridge's own legs) with each call, in the W3C `RTCIceServer` shape:
`{"urls": [...], "username": ..., "credential": ...}`. A TURN server's credentials are either
static (`username`, `credential`) or minted per call by the TURN REST scheme
(draft-uberti-behave-turn-rest; coturn's `use-auth-secret` + `static-auth-secret`):

    username   = "<expiry, unix seconds>:<user>@<service>"
    credential = base64(HMAC-SHA1(auth_secret, username))

The TURN server recomputes the credential from its copy of the secret and refuses a username
whose expiry has passed, so a leaked credential is worth `ttl` at most, and names its user.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field

# RFC 7064 / RFC 7065 URIs, as browsers take them (the host is a name, an IPv4 or a [IPv6]).
URL = re.compile(r"(?P<scheme>stuns?|turns?):(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)"
                 r"(?::(?P<port>[0-9]{1,5}))?(?:\?transport=(?P<transport>udp|tcp))?")


@dataclass(frozen=True)
class IceServer:
    """One entry of `webrtc.ice_servers`."""

    urls: tuple[str, ...]
    username: str | None = None                             # static TURN credentials
    credential: str | None = field(default=None, repr=False)
    auth_secret: str | None = field(default=None, repr=False)   # TURN REST: minted per call
    ttl: float = 3600.0                                     # lifetime of a minted credential

    @property
    def is_turn(self) -> bool:
        return any(u.startswith("turn") for u in self.urls)

    def for_user(self, user: str, now: float | None = None) -> dict:
        """This server as an RTCIceServer dict for one app user (fresh credentials if minted)."""
        entry: dict = {"urls": list(self.urls)}
        if self.auth_secret is not None:
            expiry = int((time.time() if now is None else now) + self.ttl)
            entry["username"], entry["credential"] = rest_credential(self.auth_secret, user, expiry)
        elif self.username is not None:
            entry["username"], entry["credential"] = self.username, self.credential
        return entry


def rest_credential(secret: str, user: str, expiry: int) -> tuple[str, str]:
    """TURN REST (coturn `use-auth-secret`): (username, credential) valid until `expiry`."""
    username = f"{expiry}:{user}"
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(mac).decode()


def for_user(servers: tuple[IceServer, ...], user: str, now: float | None = None) -> list[dict]:
    """Every configured server for one app user (`user@service`), in order."""
    return [s.for_user(user, now) for s in servers]


def check_url(value: str) -> str:
    """A stun:, stuns:, turn: or turns: URL; ValueError naming what is wrong."""
    match = URL.fullmatch(value)
    if not match:
        raise ValueError(f"{value!r} is not a stun:, stuns:, turn: or turns: URL "
                         "(e.g. turn:turn.example.com:3478?transport=udp)")
    if match["scheme"].startswith("stun") and match["transport"]:
        raise ValueError(f"{value!r}: a STUN URL takes no transport")
    if match["port"] and not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{value!r}: port out of range")
    return value
