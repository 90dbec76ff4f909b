"""SRTP for the SIP leg (RFC 3711) with libsrtp (pylibsrtp): keys, suites, protect and unprotect.

What it promises:
- Two suites, the ones SDES offers everywhere (RFC 4568 6.2): AES_CM_128_HMAC_SHA1_80 and
  AES_CM_128_HMAC_SHA1_32; each key is 30 bytes (16 of master key, 14 of master salt), made by
  `secrets` (`new_key`), never logged (`SrtpKey` hides it from repr).
- `Srtp` is one call's state: what we send is protected with our key, what we receive is
  authenticated and decrypted with the peer's. A packet that fails (a bad tag, a replay, a
  packet too short to hold a tag) is refused: `unprotect` returns None and the caller counts and
  drops it. Each direction keeps its rollover counter and replay window for as long as its key
  stays the same: a re-INVITE that repeats the keys changes nothing, a new key starts afresh.
- RTCP is not protected here: the bridge neither sends RTCP nor reads it on the SIP leg.
- `protector` and `unprotector` are a pylibsrtp session's `protect` and `unprotect` at about 60 %
  of their cost (a relayed packet takes one or two): the same libsrtp calls on the session's own
  buffer, without pylibsrtp's per-call type checks, allocation and exception. This `Srtp` and
  the WebRTC leg's short path (`rtcdirect`, on aiortc's sessions) use them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Callable

import pylibsrtp
from pylibsrtp._binding import ffi, lib

SUITES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
KEY_LENGTH = 30
_MAX_TRAILER = 16 + 128   # what protecting may add to a packet (pylibsrtp's SRTP_MAX_TRAILER_LEN)

Transform = Callable[[bytes], "bytes | None"]   # a packet -> protected (or unprotected), None: refused


def new_key() -> bytes:
    """A fresh master key and salt for one suite of one call."""
    return secrets.token_bytes(KEY_LENGTH)


@dataclass(frozen=True)
class SrtpKey:
    suite: str
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"unsupported SRTP suite {self.suite}")
        if len(self.key) != KEY_LENGTH:
            raise ValueError(f"an SRTP key of {self.suite} has {KEY_LENGTH} bytes")


def _session(key: SrtpKey, direction: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=key.key, ssrc_type=direction, srtp_profile=SUITES[key.suite])
    return pylibsrtp.Session(policy)


def _transform(session: pylibsrtp.Session, function, room: int) -> Transform:
    """`function` (libsrtp's srtp_protect or srtp_unprotect) of `session`, in place in the
    session's own buffer (one thread only, as pylibsrtp's); None for a packet libsrtp refuses or
    one too long to hold what it may add (`room`)."""
    try:
        context, data = session._srtp[0], session._cdata          # type: ignore[attr-defined]
    except AttributeError:
        raise RuntimeError("this pylibsrtp has no Session._srtp/_cdata") from None
    buffer = ffi.buffer(data)
    length = ffi.new("int *")
    limit = len(buffer) - room

    def transform(packet: bytes) -> bytes | None:
        size = len(packet)
        if size > limit:
            return None
        buffer[0:size] = packet
        length[0] = size
        if function(context, data, length):
            return None
        return buffer[0:length[0]]

    transform.session = session    # type: ignore[attr-defined]  # libsrtp's context lives as long
    return transform


def protector(session: pylibsrtp.Session) -> Transform:
    """`session.protect` at a lower cost (see the module's docstring); None: not protected."""
    return _transform(session, lib.srtp_protect, _MAX_TRAILER)


def unprotector(session: pylibsrtp.Session) -> Transform:
    """`session.unprotect` at a lower cost; None: the packet does not authenticate, or is a replay."""
    return _transform(session, lib.srtp_unprotect, 0)


class Srtp:
    """One call's SRTP: our key for what we send, the peer's for what we receive."""

    def __init__(self, local: SrtpKey, remote: SrtpKey) -> None:
        self.local: SrtpKey | None = None
        self.remote: SrtpKey | None = None
        self.update(local, remote)

    def update(self, local: SrtpKey, remote: SrtpKey) -> None:
        """New keys from a re-negotiation; a direction whose key is unchanged keeps its state."""
        if local != self.local:
            self._tx = _session(local, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
            self.protect = protector(self._tx)
            self.local = local
        if remote != self.remote:
            self._rx = _session(remote, pylibsrtp.Policy.SSRC_ANY_INBOUND)
            self.unprotect = unprotector(self._rx)
            self.remote = remote

    # protect(packet): the SRTP packet, None if it cannot be (longer than a datagram can take)
    protect: Transform
    # unprotect(packet): the RTP packet inside, None if it does not authenticate (or is a replay)
    unprotect: Transform
