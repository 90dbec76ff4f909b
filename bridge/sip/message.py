"""SIP messages: pyVoIP's parser, mended, and the builders the user agent needs.

`SipMessage` subclasses pyVoIP 1.6.8's `SIPMessage` and keeps its parsers for Via, CSeq and
digest challenges. It mends, measured against pyVoIP 1.6.8:
- requests other than INVITE/ACK/BYE/CANCEL raised SIPParseError, so OPTIONS/INFO/UPDATE were
  never answered (defect 13): every method parses here;
- compact header names (`v:`, `f:`, `t:`, `i:`, `m:`, `l:`, ...) and `Name:value` without a space
  were not recognised, and any SDP that is not plain RTP/AVP, or has an extra rtpmap, raised and
  dropped the whole INVITE (defect 16): headers are normalised here and the body is kept as
  bytes for `bridge.sip.sdp`, which is tolerant;
- only the first of repeated headers was kept (Record-Route, Route, Via lists), which loses the
  route set: every field is kept in order in `fields`;
- From and To with `sips:` or `tel:` URIs raised IndexError, and a `<` without `>` was taken
  as a URI: both are parsed by `bridge.sip.uri.NameAddr`, which refuses what it cannot read;
- 407's `Proxy-Authenticate` was not parsed (defect 11);
- a status code pyVoIP has no name for raised ValueError: any 1xx-6xx parses here.

Limits (RFC 3261 18.3 and common sense): a datagram whose Content-Length is larger than its
body is refused (it was truncated); at most 200 header fields and 64 KiB per message.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field

import pyVoIP.VoIP  # noqa: F401  (pyVoIP 1.6.8: importing pyVoIP.SIP first is a circular import)
from pyVoIP.SIP import SIPMessage, SIPMessageType, SIPStatus

from .uri import NameAddr, SipParseError, SipUri

__all__ = ["METHODS", "SipMessage", "SipParseError", "Request", "render", "response", "digest",
           "new_tag", "new_branch", "new_call_id", "bad_request", "USER_AGENT"]

USER_AGENT = "bridge"
METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "UPDATE", "PRACK",
           "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH")
COMPACT = {"v": "Via", "f": "From", "t": "To", "i": "Call-ID", "m": "Contact", "l": "Content-Length",
           "c": "Content-Type", "k": "Supported", "s": "Subject", "e": "Content-Encoding",
           "o": "Event", "r": "Refer-To", "u": "Allow-Events", "x": "Session-Expires", "b": "Referred-By"}
_CANONICAL = {n.lower(): n for n in (
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Length", "Content-Type", "Max-Forwards",
    "Record-Route", "Route", "WWW-Authenticate", "Proxy-Authenticate", "Authorization",
    "Proxy-Authorization", "Expires", "Allow", "Supported", "Require", "Proxy-Require", "User-Agent",
    "Server", "Reason", "Event", "Accept", "Min-Expires", "Session-Expires", "Min-SE", "Remote-Party-ID",
    "P-Asserted-Identity", "Unsupported", "Retry-After", "Refer-To", "Referred-By", "Replaces",
    "Subscription-State", "RSeq", "RAck", "Allow-Events")}
_LISTS = ("Via", "Record-Route", "Route", "Contact", "Supported", "Require", "Proxy-Require")
_TOKEN = re.compile(r"[A-Za-z0-9!%*_+`'~.-]+")
MAX_MESSAGE = 65535
MAX_FIELDS = 200


def _canonical(name: str) -> str:
    name = name.strip()
    if len(name) == 1:
        return COMPACT.get(name.lower(), name)
    return _CANONICAL.get(name.lower(), name)


def split_list(value: str) -> list[str]:
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
            self.request_uri = SipUri.parse(self.uri)
        else:
            raise SipParseError(f"not a SIP start line: {lines[0][:60]!r}")
        self.version = "SIP/2.0"
        unfolded: list[str] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and unfolded:
                unfolded[-1] += " " + line.strip()
            elif line.strip():
                unfolded.append(line)
        if len(unfolded) > MAX_FIELDS:
            raise SipParseError(f"more than {MAX_FIELDS} header fields")
        for line in unfolded:
            name, colon, value = line.partition(":")
            if not colon or not name.strip() or not _TOKEN.fullmatch(name.strip()):
                raise SipParseError(f"bad header line: {line[:60]!r}")
            name, value = _canonical(name), value.strip()
            values = split_list(value) if name in _LISTS else [value]
            self.fields.extend((name, v) for v in values)
        for name in ("Call-ID", "From", "To", "CSeq", "Via"):
            if not self.all(name):
                raise SipParseError(f"missing {name} header")
        self.parse_header("Via", self.all("Via"))        # pyVoIP's own parsers for what they do well
        self.parse_header("CSeq", self.first("CSeq"))
        cseq = self.headers["CSeq"]
        if not cseq["check"].isdigit() or len(cseq["check"]) > 10 or not _TOKEN.fullmatch(cseq["method"]):
            raise SipParseError("bad CSeq")
        if self.is_request and cseq["method"].upper() != self.method:
            raise SipParseError("CSeq method differs from the request method")
        self.from_ = NameAddr.parse(self.first("From") or "")
        self.to = NameAddr.parse(self.first("To") or "")
        self.contact: NameAddr | None = None
        contact = self.first("Contact")
        if contact and contact.strip() != "*":
            self.contact = NameAddr.parse(contact)
        for name in ("WWW-Authenticate", "Proxy-Authenticate"):
            if self.first(name):
                self.parse_header("WWW-Authenticate", self.first(name))
        for name, value in self.fields:
            self.headers.setdefault(name, value)
        length = self.first("Content-Length")
        if length is not None:
            if not length.isdigit():
                raise SipParseError("bad Content-Length")
            if int(length) > len(body):
                raise SipParseError("Content-Length larger than the body (truncated datagram)")
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

    def tokens(self, name: str) -> set[str]:
        """Option tags and the like of a list header (Require, Supported), lower case."""
        return {v.strip().lower() for v in self.all(name) if v.strip()}

    @property
    def call_id(self) -> str:
        return self.first("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        return int(self.headers["CSeq"]["check"]), self.headers["CSeq"]["method"].upper()

    @property
    def from_tag(self) -> str:
        return self.from_.tag

    @property
    def to_tag(self) -> str:
        return self.to.tag

    @property
    def top_via(self) -> str:
        return self.all("Via")[0]

    @property
    def branch(self) -> str:
        return str(self.headers["Via"][0].get("branch", "")) if self.headers["Via"] else ""

    @property
    def sent_by(self) -> str:
        """The top Via's sent-by (host[:port]), as written."""
        parts = self.top_via.split(";")[0].split()
        return parts[1].lower() if len(parts) > 1 else ""

    @property
    def contact_uri(self) -> str | None:
        return self.contact.uri_text if self.contact else None

    @property
    def challenge(self) -> dict[str, str]:
        return self.authentication

    @property
    def content_type(self) -> str:
        return (self.first("Content-Type") or "").split(";")[0].strip().lower()


# --- building ---------------------------------------------------------------------------

def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(10)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(12)}@{host}"


_PHRASES = {487: "Request Terminated", 480: "Temporarily Unavailable", 604: "Does Not Exist Anywhere",
            420: "Bad Extension", 421: "Extension Required", 422: "Session Interval Too Small",
            482: "Loop Detected", 491: "Request Pending", 488: "Not Acceptable Here"}


def phrase(code: int) -> str:
    if code in _PHRASES:
        return _PHRASES[code]
    try:
        return SIPStatus(code).phrase
    except ValueError:
        return "Unknown"


def render(start: str, headers: list[tuple[str, str]], body: bytes | str = b"") -> bytes:
    if isinstance(body, str):
        body = body.encode()
    lines = [start] + [f"{n}: {v}" for n, v in headers if v is not None]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _reason_phrase(reason: str) -> str:
    return "".join(ch for ch in reason if " " <= ch < "\x7f")[:80]


def response(request: SipMessage, code: int, *, to_tag: str | None = None,
             headers: list[tuple[str, str]] | None = None, body: bytes | str = b"",
             reason: str | None = None, content_type: str = "application/sdp") -> bytes:
    """A response to `request`: Via, From, To (+ our tag), Call-ID, CSeq copied (RFC 3261 8.2.6)."""
    to = request.first("To") or ""
    if to_tag and not request.to_tag and code > 100:
        to = f"{to};tag={to_tag}"
    fields = [("Via", v) for v in request.all("Via")]
    fields += [("From", request.first("From") or ""), ("To", to), ("Call-ID", request.call_id),
               ("CSeq", request.first("CSeq") or "")]
    if request.method in ("INVITE", "SUBSCRIBE") and 100 < code < 300:
        fields += [("Record-Route", rr) for rr in request.all("Record-Route")]
    fields += (headers or []) + [("Server", USER_AGENT)]
    if body:
        fields.append(("Content-Type", content_type))
    return render(f"SIP/2.0 {code} {_reason_phrase(reason or phrase(code))}", fields, body)


def bad_request(data: bytes, why: str) -> bytes | None:
    """A stateless 400 for a request that did not parse, if it has what a response needs."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.split("\r\n")
    start = lines[0].split(" ")
    if len(start) != 3 or start[0] == "SIP/2.0" or start[2] != "SIP/2.0" or not _TOKEN.fullmatch(start[0]):
        return None                                   # a response, or not SIP at all: drop
    copied: dict[str, list[str]] = {}
    for line in lines[1:MAX_FIELDS]:
        name, colon, value = line.partition(":")
        canonical = _canonical(name) if colon else ""
        if canonical in ("Via", "From", "To", "Call-ID", "CSeq") and len(value) < 1024:
            copied.setdefault(canonical, []).append(value.strip())
    if any(name not in copied for name in ("Via", "From", "To", "Call-ID", "CSeq")) or start[0] == "ACK":
        return None
    fields = [("Via", v) for v in copied["Via"]]
    fields += [(n, copied[n][0]) for n in ("From", "To", "Call-ID", "CSeq")] + [("Server", USER_AGENT)]
    return render(f"SIP/2.0 400 {_reason_phrase(why) or 'Bad Request'}", fields)


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


@dataclass
class Request:
    """An outgoing request, kept structured so ACK and CANCEL can be derived from it."""

    method: str
    uri: str
    via: str
    from_: str
    to: str
    call_id: str
    cseq: int
    routes: list[str] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: str = ""
    content_type: str = "application/sdp"

    @property
    def branch(self) -> str:
        return self.via.split("branch=")[1].split(";")[0]

    def credentials(self) -> list[tuple[str, str]]:
        return [(n, v) for n, v in self.headers if n in ("Authorization", "Proxy-Authorization")]

    def render(self) -> bytes:
        fields = [("Via", self.via), ("Max-Forwards", "70"), ("From", self.from_), ("To", self.to),
                  ("Call-ID", self.call_id), ("CSeq", f"{self.cseq} {self.method}")]
        fields += [("Route", r) for r in self.routes]
        fields += self.headers + [("User-Agent", USER_AGENT)]
        if self.body:
            fields.append(("Content-Type", self.content_type))
        return render(f"{self.method} {self.uri} SIP/2.0", fields, self.body)


@dataclass(frozen=True)
class Party:
    """A SIP party as shown to a user: number (URI user part) and display name."""

    number: str | None
    display_name: str | None
    uri: str

    @classmethod
    def of(cls, name_addr: NameAddr) -> "Party":
        return cls(name_addr.uri.user, name_addr.display_name, name_addr.uri_text)
