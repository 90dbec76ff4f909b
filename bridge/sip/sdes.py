"""SDES (RFC 4568): SRTP keys in SDP's `a=crypto` attribute, read, written and kept out of logs.

    a=crypto:<tag> <crypto-suite> inline:<base64 key||salt>[|<lifetime>][|<MKI>:<length>] [<session params>]

What it promises:
- `parse` reads one attribute value and raises `SdesError` for anything else; no error message
  ever holds key material (a bad line is named by its tag and suite only).
- A line is usable (`usable`) when its suite is one of `bridge.srtp.SUITES`, it has exactly one
  inline key of 30 bytes, no MKI and no session parameter that changes the protection
  (UNENCRYPTED_SRTP, UNAUTHENTICATED_SRTP, KDR, FEC_ORDER...; WSH, a replay window, is taken);
  a lifetime is accepted and ignored (a call never sends 2^31 packets). Other lines are skipped,
  not refused: an offer may list suites the bridge lacks before one it has.
- Our answer keeps the tag and suite of the offer's line it takes (RFC 4568 5.1.2), with our key.
- `redact` replaces every inline key in a message by `<redacted>`: the SIP trace and the crash
  journal hold SDP, never keys.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from ..srtp import KEY_LENGTH, SUITES, SrtpKey

MAX_TAG = 999999999
_INLINE = re.compile(rb"(inline:)[^\s|]+")
_HARMLESS = ("WSH=",)


class SdesError(ValueError):
    """An a=crypto attribute the bridge cannot use."""


@dataclass(frozen=True)
class Crypto:
    """One a=crypto line: tag, suite and key (hidden from repr)."""

    tag: int
    suite: str
    key: bytes = field(repr=False)

    @property
    def srtp_key(self) -> SrtpKey:
        return SrtpKey(self.suite, self.key)

    def attribute(self) -> str:
        return f"a=crypto:{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode()}"


def parse(value: str) -> Crypto:
    """One attribute value (after `a=crypto:`); SdesError if the bridge cannot use it."""
    parts = value.split()
    if len(parts) < 3 or not parts[0].isdigit() or len(parts[0]) > 9:
        raise SdesError("a=crypto without tag, suite and key parameters")
    tag, suite = int(parts[0]), parts[1].upper()
    where = f"a=crypto tag {tag} ({suite[:40]})"
    if suite not in SUITES:
        raise SdesError(f"{where}: unsupported suite")
    keys = parts[2].split(";")
    if len(keys) != 1:
        raise SdesError(f"{where}: more than one key")
    method, _, info = keys[0].partition(":")
    if method.lower() != "inline" or not info:
        raise SdesError(f"{where}: not an inline key")
    key_text, *extra = info.split("|")
    if len(extra) > 2 or any(":" in e for e in extra):
        raise SdesError(f"{where}: a master key identifier (MKI) is not supported")
    if any(e and not re.fullmatch(r"(2\^)?\d{1,20}", e) for e in extra):
        raise SdesError(f"{where}: bad key lifetime")
    for param in parts[3:]:
        if not param.upper().startswith(_HARMLESS):
            raise SdesError(f"{where}: session parameter {param.split('=')[0][:30]} is not supported")
    try:
        key = base64.b64decode(key_text, validate=True)
    except (binascii.Error, ValueError):
        raise SdesError(f"{where}: the key is not base64") from None
    if len(key) != KEY_LENGTH:
        raise SdesError(f"{where}: the key has {len(key)} bytes, not {KEY_LENGTH}")
    return Crypto(tag, suite, key)


def usable(values: list[str]) -> list[Crypto]:
    """The lines of `values` (attribute values, in order) the bridge can use."""
    found = []
    for value in values:
        try:
            found.append(parse(value))
        except SdesError:
            continue
    return found


def offer(keys: dict[str, bytes]) -> list[Crypto]:
    """Our offer: one line per suite, tags 1, 2, ... in the order of `bridge.srtp.SUITES`."""
    return [Crypto(n, suite, keys[suite]) for n, suite in enumerate(SUITES, 1) if suite in keys]


def redact(data: bytes) -> bytes:
    """`data` with every inline SDES key replaced by `<redacted>`."""
    return _INLINE.sub(rb"\1<redacted>", data) if b"inline:" in data else data
