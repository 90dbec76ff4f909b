"""SIP URIs and name-addrs (RFC 3261 19.1, 20.10, 25.1), parsed without surprises.

`SipUri.parse` and `NameAddr.parse` accept what real PBXs and phones send (sip:, sips:, tel:,
IPv6 references, parameters without values, quoted display names with escapes) and raise
`SipParseError` for anything else: never IndexError, never a half-parsed value. Hosts are kept
as written (a name or an IP literal, IPv6 without brackets); `hostport()` puts the brackets
back, so an IPv6 address is never written as `::1:5060`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\.?$")
_USER = re.compile(r"^[A-Za-z0-9\-_.!~*'()&=+$,;?/%#]+$")   # RFC 3261 user, escaped or not
_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
MAX_URI = 1024


class SipParseError(ValueError):
    """Not a SIP message (or part of one) bridge can use."""


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def hostport(host: str, port: int | None = None) -> str:
    """`host[:port]` with an IPv6 address in brackets."""
    text = f"[{host}]" if ":" in host else host
    return f"{text}:{port}" if port else text


def _params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        if not name.strip():
            raise SipParseError(f"empty parameter name in {text[:60]!r}")
        params[name.strip().lower()] = value.strip() if eq else None
    return params


@dataclass(frozen=True)
class SipUri:
    """sip:user@host:port;params (or sips:, tel:)."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict, compare=False)

    @classmethod
    def parse(cls, text: str) -> "SipUri":
        text = text.strip()
        if len(text) > MAX_URI:
            raise SipParseError("URI too long")
        scheme, colon, rest = text.partition(":")
        scheme = scheme.lower()
        if not colon or scheme not in ("sip", "sips", "tel"):
            raise SipParseError(f"not a SIP URI: {text[:60]!r}")
        rest = rest.split("?", 1)[0]                     # headers of a URI are not used here
        if scheme == "tel":
            number, _, params = rest.partition(";")
            if not number or not re.fullmatch(r"[0-9A-Fa-f*#+().\-pPwW]+", number):
                raise SipParseError(f"bad tel URI: {text[:60]!r}")
            return cls("tel", number, "", None, _params(params))
        userinfo, at, hostpart = rest.rpartition("@")
        user: str | None = None
        if at:
            user = userinfo.split(":", 1)[0]             # a password in the URI is ignored
            if not user or not _USER.fullmatch(user):
                raise SipParseError(f"bad user part in {text[:60]!r}")
        hostport_text, _, params = hostpart.partition(";")
        host, port = _split_hostport(hostport_text, text)
        return cls(scheme, user, host, port, _params(params))

    @property
    def transport(self) -> str:
        return (self.params.get("transport") or ("tls" if self.scheme == "sips" else "udp")).lower()

    @property
    def loose_route(self) -> bool:
        return "lr" in self.params

    def hostport(self) -> str:
        return hostport(self.host, self.port)

    def __str__(self) -> str:
        if self.scheme == "tel":
            base = f"tel:{self.user}"
        else:
            base = f"{self.scheme}:{self.user + '@' if self.user else ''}{self.hostport()}"
        return base + "".join(f";{k}" + (f"={v}" if v is not None else "") for k, v in self.params.items())


def _split_hostport(text: str, whole: str) -> tuple[str, int | None]:
    port_text = ""
    if text.startswith("["):
        host, close, tail = text[1:].partition("]")
        if not close or not is_ip(host) or ":" not in host:
            raise SipParseError(f"bad IPv6 reference in {whole[:60]!r}")
        if tail:
            if not tail.startswith(":"):
                raise SipParseError(f"bad host:port in {whole[:60]!r}")
            port_text = tail[1:]
    else:
        host, colon, port_text = text.partition(":")
        if not _HOST.fullmatch(host):
            raise SipParseError(f"bad host in {whole[:60]!r}")
        if colon and not port_text:
            raise SipParseError(f"empty port in {whole[:60]!r}")
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise SipParseError(f"bad port in {whole[:60]!r}")
        port = int(port_text)
    return host, port


def quote(display_name: str) -> str:
    """A display name as a quoted string (RFC 3261 25.1), safe for any text."""
    cleaned = "".join(ch for ch in display_name if ch >= " " and ch != "\x7f")
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _display_name(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"'):
            raise SipParseError("unterminated quoted display name")
        return re.sub(r"\\(.)", r"\1", text[1:-1]).strip() or None
    return text


@dataclass(frozen=True)
class NameAddr:
    """`"Display" <uri>;params` or `uri;params` (From, To, Contact, Route, Refer-To...)."""

    display_name: str | None
    uri: SipUri
    params: dict[str, str | None] = field(default_factory=dict, compare=False)
    uri_text: str = field(default="", compare=False)    # the URI as written, for echoing back

    @classmethod
    def parse(cls, text: str) -> "NameAddr":
        text = text.strip()
        if len(text) > MAX_URI:
            raise SipParseError("header value too long")
        quoted = False
        escape = False
        open_at = -1
        for i, ch in enumerate(text):            # find '<' outside the quoted display name
            if escape:
                escape = False
            elif ch == "\\" and quoted:
                escape = True
            elif ch == '"':
                quoted = not quoted
            elif ch == "<" and not quoted:
                open_at = i
                break
        if quoted:
            raise SipParseError(f"unterminated quote in {text[:60]!r}")
        if open_at >= 0:
            close_at = text.find(">", open_at)
            if close_at < 0:
                raise SipParseError(f"'<' without '>' in {text[:60]!r}")
            uri_text = text[open_at + 1:close_at]
            display = _display_name(text[:open_at])
            params = _params(text[close_at + 1:])
        else:
            uri_text, _, param_text = text.partition(";")
            display, params = None, _params(param_text)
        return cls(display, SipUri.parse(uri_text), params, uri_text.strip())

    @property
    def tag(self) -> str:
        return self.params.get("tag") or ""

    def without_params(self) -> str:
        """The name-addr as written, without header parameters (the tag)."""
        name = f"{quote(self.display_name)} " if self.display_name else ""
        return f"{name}<{self.uri_text}>"
