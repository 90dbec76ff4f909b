"""SIP messages: pyVoIP's parser, mended, and the builders the user agent needs.

`SipMessage` subclasses pyVoIP 1.6.8's `SIPMessage` and keeps its header parsing for Via, From,
To, CSeq and digest challenges. It mends, measured against pyVoIP 1.6.8:
- requests other than INVITE/ACK/BYE/CANCEL raised SIPParseError, so OPTIONS/INFO/UPDATE were
  never answered (defect 13): every method parses here;
- compact header names (`v:`, `f:`, `t:`, `i:`, `m:`, `l:`, ...) and `Name:value` without a space
  were not recognised, and any SDP that is not plain RTP/AVP, or has an extra rtpmap, raised and
  dropped the whole INVITE (defect 16): headers are normalised here and the body is kept as
  bytes for `bridge.sdp`, which is tolerant;
- only the first of repeated headers was kept (Record-Route, Route, Via lists), which loses the
  route set: every field is kept in order in `fields`;
- 407's `Proxy-Authenticate` was not parsed (defect 11);
- a status code pyVoIP has no name for raised ValueError: any 1xx-6xx parses here.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

import pyVoIP.VoIP  # noqa: F401  (pyVoIP 1.6.8: importing pyVoIP.SIP first is a circular import)
from pyVoIP.SIP import SIPMessage, SIPMessageType, SIPStatus

METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "UPDATE", "PRACK",
           "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH")
COMPACT = {"v": "Via", "f": "From", "t": "To", "i": "Call-ID", "m": "Contact", "l": "Content-Length",
           "c": "Content-Type", "k": "Supported", "s": "Subject", "e": "Content-Encoding",
           "o": "Event", "r": "Refer-To", "u": "Allow-Events", "x": "Session-Expires"}
_CANONICAL = {n.lower(): n for n in (
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Length", "Content-Type", "Max-Forwards",
    "Record-Route", "Route", "WWW-Authenticate", "Proxy-Authenticate", "Authorization",
    "Proxy-Authorization", "Expires", "Allow", "Supported", "Require", "User-Agent", "Server",
    "Reason", "Event", "Accept", "Min-Expires", "Session-Expires", "Remote-Party-ID", "P-Asserted-Identity")}
_LISTS = ("Via", "Record-Route", "Route")
_TOKEN = re.compile(r"[A-Za-z!%*_+`'~.-]+")
_URI_USER = re.compile(r"^(?:sips?|tel):(?:([^@;>]+)@)?([^;>?]+)")
MAX_MESSAGE = 65535


class SipParseError(ValueError):
    """Not a SIP message bridge can use."""


def _canonical(name: str) -> str:
    name = name.strip()
    if len(name) == 1:
        return COMPACT.get(name.lower(), name)
    return _CANONICAL.get(name.lower(), name)


def _split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting <...> and quotes."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(value):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            parts.append(value[start:i].strip())
            start = i + 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


class SipMessage(SIPMessage):
    """One parsed SIP request or response (see the module docstring for what is mended)."""

    def __init__(self, data: bytes) -> None:
        self.fields: list[tuple[str, str]] = []
        self.body_bytes = b""
        self.uri = ""
        self.method = ""
        self.code = 0
        self.reason = ""
        if len(data) > MAX_MESSAGE:
            raise SipParseError("message too large")
        try:
            super().__init__(data)
        except SipParseError:
            raise
        except Exception as exc:  # pyVoIP's header parsers raise IndexError, KeyError, ...
            raise SipParseError(f"unparsable SIP message: {type(exc).__name__}") from None

    def parse(self, data: bytes) -> None:
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            head, _, body = data.partition(b"\n\n")
        lines = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
        while lines and not lines[0].strip():
            lines.pop(0)  # keep-alive CRLFs before a message
        if not lines:
            raise SipParseError("empty message")
        self.heading = lines[0].encode()
        start = lines[0].split(" ", 2)
        if start[0] == "SIP/2.0" and len(start) >= 2 and start[1].isdigit() and 100 <= int(start[1]) < 700:
            self.type = SIPMessageType.RESPONSE
            self.code = int(start[1])
            self.reason = start[2].strip() if len(start) > 2 else ""
            try:
                self.status = SIPStatus(self.code)
            except ValueError:
                pass
        elif len(start) == 3 and start[2].strip() == "SIP/2.0" and _TOKEN.fullmatch(start[0]):
            self.type = SIPMessageType.MESSAGE
            self.method = start[0].upper()
            self.uri = start[1]
        else:
            raise SipParseError(f"not a SIP start line: {lines[0][:60]!r}")
        self.version = "SIP/2.0"
        unfolded: list[str] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and unfolded:
                unfolded[-1] += " " + line.strip()
            elif line.strip():
                unfolded.append(line)
        for line in unfolded:
            name, colon, value = line.partition(":")
            if not colon or not name.strip():
                raise SipParseError(f"bad header line: {line[:60]!r}")
            name, value = _canonical(name), value.strip()
            values = _split_list(value) if name in _LISTS else [value]
            self.fields.extend((name, v) for v in values)
        for name in ("Call-ID", "From", "To", "CSeq", "Via"):
            if not self.all(name):
                raise SipParseError(f"missing {name} header")
        # pyVoIP's own parsers for the headers it handles well
        self.parse_header("Via", self.all("Via"))
        for name in ("From", "To", "CSeq"):
            self.parse_header(name, self.first(name))
        cseq = self.headers["CSeq"]
        if not cseq["check"].isdigit():
            raise SipParseError("bad CSeq")
        for name in ("WWW-Authenticate", "Proxy-Authenticate"):
            if self.first(name):
                self.parse_header("WWW-Authenticate", self.first(name))
        for name, value in self.fields:
            self.headers.setdefault(name, value)
        length = self.first("Content-Length")
        if length is not None and length.isdigit():
            body = body[:int(length)]
        self.body_bytes = body

    # --- accessors --------------------------------------------------------------------

    @property
    def is_request(self) -> bool:
        return self.type == SIPMessageType.MESSAGE

    def first(self, name: str) -> str | None:
        for n, v in self.fields:
            if n == name:
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.fields if n == name]

    @property
    def call_id(self) -> str:
        return self.first("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        return int(self.headers["CSeq"]["check"]), self.headers["CSeq"]["method"].upper()

    @property
    def from_tag(self) -> str:
        return self.headers["From"]["tag"].split(";")[0]

    @property
    def to_tag(self) -> str:
        return self.headers["To"]["tag"].split(";")[0]

    @property
    def branch(self) -> str:
        return str(self.headers["Via"][0].get("branch", "")) if self.headers["Via"] else ""

    @property
    def contact_uri(self) -> str | None:
        contact = self.first("Contact")
        return uri_of(contact) if contact else None

    @property
    def challenge(self) -> dict[str, str]:
        return self.authentication


def uri_of(name_addr: str) -> str:
    """The URI inside a name-addr (`"Bob" <sip:b@h>;tag=x`) or an addr-spec."""
    if "<" in name_addr:
        return name_addr[name_addr.index("<") + 1:name_addr.index(">")]
    return name_addr.split(";")[0].strip()


def user_of(uri: str) -> str | None:
    match = _URI_USER.match(uri_of(uri))
    return match.group(1) if match else None


def display_name_of(name_addr: str) -> str | None:
    if "<" not in name_addr:
        return None
    name = name_addr[:name_addr.index("<")].strip().strip('"').strip()
    return name or None


def host_port_of(uri: str, default_port: int = 5060) -> tuple[str, int]:
    """Where a SIP URI points (no DNS SRV: bridge talks to a known PBX)."""
    match = _URI_USER.match(uri_of(uri))
    if not match:
        raise SipParseError(f"not a SIP URI: {uri[:60]!r}")
    hostport = match.group(2)
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = hostport.partition(":")
    return host, int(port) if port.isdigit() else default_port


# --- building ---------------------------------------------------------------------------

def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(10)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(12)}@{host}"


def phrase(code: int) -> str:
    try:
        return SIPStatus(code).phrase
    except ValueError:
        return {487: "Request Terminated", 480: "Temporarily Unavailable", 604: "Does Not Exist Anywhere"}.get(
            code, "Unknown")


def render(start: str, headers: list[tuple[str, str]], body: bytes | str = b"") -> bytes:
    if isinstance(body, str):
        body = body.encode()
    lines = [start] + [f"{n}: {v}" for n, v in headers if v is not None]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def response(request: SipMessage, code: int, *, to_tag: str | None = None,
             headers: list[tuple[str, str]] | None = None, body: bytes | str = b"",
             reason: str | None = None) -> bytes:
    """A response to `request`: Via, From, To (+ our tag), Call-ID, CSeq copied (RFC 3261 8.2.6)."""
    to = request.first("To") or ""
    if to_tag and ";tag=" not in to and code > 100:
        to = f"{to};tag={to_tag}"
    fields = [("Via", v) for v in request.all("Via")]
    fields += [("From", request.first("From") or ""), ("To", to), ("Call-ID", request.call_id),
               ("CSeq", request.first("CSeq") or "")]
    if request.method in ("INVITE", "SUBSCRIBE") and 100 < code < 300:
        fields += [("Record-Route", rr) for rr in request.all("Record-Route")]
    fields += headers or []
    return render(f"SIP/2.0 {code} {reason or phrase(code)}", fields, body)


def digest(challenge: dict[str, str], method: str, uri: str, username: str, password: str,
           header: str = "Authorization") -> tuple[str, str]:
    """(header name, value) answering a digest challenge (MD5, with or without qop=auth)."""
    realm, nonce = challenge.get("realm", ""), challenge.get("nonce", "")
    algorithm = challenge.get("algorithm", "MD5")
    if algorithm.upper() not in ("MD5",):
        raise SipParseError(f"unsupported digest algorithm {algorithm}")

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5(f"{username}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    parts = [f'username="{username}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"']
    qops = [q.strip() for q in challenge.get("qop", "").split(",") if q.strip()]
    if "auth" in qops:
        nc, cnonce = "00000001", secrets.token_hex(8)
        answer = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        parts += ["qop=auth", f"nc={nc}", f'cnonce="{cnonce}"']
    else:
        answer = md5(f"{ha1}:{nonce}:{ha2}")
    parts += [f'response="{answer}"', "algorithm=MD5"]
    if "opaque" in challenge:
        parts.append(f'opaque="{challenge["opaque"]}"')
    return header, "Digest " + ", ".join(parts)


@dataclass(frozen=True)
class Party:
    """A SIP party as shown to a user: number (URI user part) and display name."""

    number: str | None
    display_name: str | None
    uri: str
