"""A tiny UDP SIP client: enough to probe a proxy (OPTIONS) or poke it (unauthenticated REGISTER),
over IPv4 or IPv6 (an IPv6 `host` is sent from ::1)."""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass, field

from .proc import HOST


@dataclass
class SipResponse:
    status: int
    reason: str
    headers: dict = field(default_factory=dict)  # lower-case name -> list of values
    raw: str = ""

    def header(self, name: str, default=None):
        v = self.headers.get(name.lower())
        return v[0] if v else default


def parse_response(data: bytes) -> SipResponse:
    text = data.decode(errors="replace")
    head = text.split("\r\n\r\n", 1)[0]
    lines = head.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("SIP/2.0"):
        raise ValueError(f"not a SIP response: {lines[0]!r}")
    headers: dict = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers.setdefault(k.strip().lower(), []).append(v.strip())
    return SipResponse(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, text)


def sip_request(port: int, method: str = "OPTIONS", user: str | None = None, *, host: str = HOST,
                to_user: str | None = None, extra_headers: str = "", timeout: float = 1.0) -> SipResponse | None:
    """Send one request over UDP to host:port; return the first final response (or None on timeout).

    Provisional (1xx) responses are skipped.  ``user=None`` addresses the proxy itself
    (Request-URI without user part), as a keepalive OPTIONS does.
    """
    v6 = ":" in host
    local = "::1" if v6 else HOST
    local_ref = f"[{local}]" if v6 else local
    host_ref = f"[{host}]" if v6 else host
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((local, 0))
        lport = sock.getsockname()[1]
        branch = "z9hG4bK" + uuid.uuid4().hex[:16]
        tag = uuid.uuid4().hex[:8]
        callid = uuid.uuid4().hex + "@testbed"
        from_user = user or "probe"
        ruri = f"sip:{host_ref}:{port}" if (user is None or method == "REGISTER") else \
            f"sip:{to_user or user}@{host_ref}:{port}"
        to_uri = f"sip:{to_user or from_user}@{host_ref}:{port}"
        msg = (
            f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local_ref}:{lport};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:{from_user}@{host_ref}:{port}>;tag={tag}\r\n"
            f"To: <{to_uri}>\r\n"
            f"Call-ID: {callid}\r\n"
            f"CSeq: 1 {method}\r\n"
            f"Contact: <sip:{from_user}@{local_ref}:{lport}>\r\n"
            + (f"Expires: 60\r\n" if method == "REGISTER" else "")
            + extra_headers
            + "User-Agent: testbed-probe\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.sendto(msg.encode(), (host, port))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            try:
                data, _ = sock.recvfrom(65535)
            except (socket.timeout, ConnectionRefusedError, OSError):
                # ICMP port unreachable shows up as ConnectionRefusedError on Linux
                return None
            try:
                resp = parse_response(data)
            except ValueError:
                continue
            if resp.status >= 200:
                return resp
    finally:
        sock.close()
