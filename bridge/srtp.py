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
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import pylibsrtp

SUITES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
KEY_LENGTH = 30


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
            self.local = local
        if remote != self.remote:
            self._rx = _session(remote, pylibsrtp.Policy.SSRC_ANY_INBOUND)
            self.remote = remote

    def protect(self, packet: bytes) -> bytes:
        return self._tx.protect(packet)

    def unprotect(self, packet: bytes) -> bytes | None:
        """The RTP packet inside, or None if it does not authenticate (or is a replay)."""
        try:
            return self._rx.unprotect(packet)
        except (pylibsrtp.Error, ValueError):
            return None
