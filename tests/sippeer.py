"""A scripted SIP peer on a real UDP socket: plays the PBX (registrar, proxy, phone) line by line.

It parses with its own few lines (not bridge's parser), answers REGISTER and OPTIONS by itself
(unless told not to), and lets a test send any request or response and wait for what comes
back. Used where Kamailio, baresip or sipp cannot be made to misbehave on cue: forking, a 2xx
crossing a CANCEL, a stale CSeq, a challenge to BYE, a hostname in a Record-Route...
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass


@dataclass
class Msg:
    start: str
    headers: list[tuple[str, str]]
    body: str
    source: tuple[str, int]
    raw: str = ""
    at: float = 0.0                      # loop time of arrival

    @property
    def is_request(self) -> bool:
        return not self.start.startswith("SIP/2.0")

    @property
    def method(self) -> str:
        return self.start.split(" ")[0] if self.is_request else self.header("CSeq").split()[1]

    @property
    def code(self) -> int:
        return 0 if self.is_request else int(self.start.split(" ")[1])

    @property
    def uri(self) -> str:
        return self.start.split(" ")[1]

    def header(self, name: str, default: str = "") -> str:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return default

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def tag(self, name: str) -> str:
        m = re.search(r";tag=([^;>\s]+)", self.header(name))
        return m.group(1) if m else ""

    @property
    def cseq(self) -> int:
        return int(self.header("CSeq").split()[0])

    def sdp_port(self) -> int:
        m = re.search(r"^m=audio (\d+)", self.body, re.M)
        return int(m.group(1)) if m else 0


def parse(data: bytes, source: tuple[str, int]) -> Msg:
    text = data.decode(errors="replace")
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return Msg(lines[0], headers, body, source, text)


def sdp(port: int, host: str = "127.0.0.1", codecs: str = "0 101", direction: str = "sendrecv",
        extra: str = "") -> str:
    lines = ["v=0", f"o=peer 1 1 IN IP4 {host}", "s=-", f"c=IN IP4 {host}", "t=0 0",
             f"m=audio {port} RTP/AVP {codecs}", "a=rtpmap:0 PCMU/8000"]
    if "101" in codecs.split():
        lines += ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16"]
    lines += [l for l in extra.split("\n") if l] + [f"a={direction}"]
    return "\r\n".join(lines) + "\r\n"


class SipPeer(asyncio.DatagramProtocol):
    """`await SipPeer(host).start()`; `received` holds what it got that it did not answer itself."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.received: asyncio.Queue[Msg] = asyncio.Queue()
        self.log: list[Msg] = []
        self.auto_register = True
        self.auto_options = True
        self.registrations = 0
        self.bindings: list[str] = []           # Contact values it currently holds
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> "SipPeer":
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, 0))
        self.port = self._transport.get_extra_info("sockname")[1]
        return self

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def addr(self) -> tuple[str, int]:
        return self.host, self.port

    def datagram_received(self, data: bytes, addr) -> None:
        if not data.strip():
            return
        msg = parse(data, (addr[0], addr[1]))
        msg.at = asyncio.get_running_loop().time()
        self.log.append(msg)
        if msg.is_request and msg.method == "REGISTER" and self.auto_register:
            self._register(msg)
        elif msg.is_request and msg.method == "OPTIONS" and self.auto_options:
            self.send(self.response(msg, 200), msg.source)
        else:
            self.received.put_nowait(msg)

    def _register(self, msg: Msg) -> None:
        contact = msg.header("Contact")
        expires = msg.header("Expires", "60")
        if contact:
            self.registrations += 1
            self.bindings = [] if expires == "0" else [contact]
        extra = [("Contact", f"{b};expires={expires}") for b in self.bindings]
        self.send(self.response(msg, 200, headers=extra), msg.source)

    def send(self, text: str, addr: tuple[str, int]) -> None:
        assert self._transport is not None
        self._transport.sendto(text.encode(), addr)

    async def expect(self, what: str | int, timeout: float = 5.0, call_id: str | None = None) -> Msg:
        """The next message that is request `what` (a method) or a response with status `what`."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.received.get()
                if call_id is not None and msg.header("Call-ID") != call_id:
                    continue
                if (isinstance(what, int) and msg.code == what) or (isinstance(what, str) and msg.is_request
                                                                    and msg.method == what):
                    return msg

    async def quiet(self, seconds: float) -> list[Msg]:
        """Everything that arrives within `seconds`."""
        got = []
        try:
            async with asyncio.timeout(seconds):
                while True:
                    got.append(await self.received.get())
        except TimeoutError:
            return got

    def response(self, request: Msg, code: int, reason: str = "", *, to_tag: str | None = None,
                 headers: list[tuple[str, str]] | None = None, body: str = "") -> str:
        to = request.header("To")
        if to_tag and ";tag=" not in to:
            to += f";tag={to_tag}"
        lines = [f"SIP/2.0 {code} {reason or 'Whatever'}"]
        lines += [f"Via: {v}" for v in request.all("Via")]
        lines += [f"From: {request.header('From')}", f"To: {to}", f"Call-ID: {request.header('Call-ID')}",
                  f"CSeq: {request.header('CSeq')}"]
        lines += [f"{n}: {v}" for n, v in headers or []]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    def request(self, method: str, uri: str, *, call_id: str | None = None, from_tag: str | None = None,
                to: str | None = None, cseq: int = 1, branch: str | None = None, from_user: str = "2002",
                headers: list[tuple[str, str]] | None = None, body: str = "", via_host: str | None = None) -> str:
        via = f"SIP/2.0/UDP {via_host or self.host}:{self.port};branch={branch or 'z9hG4bK' + uuid.uuid4().hex[:12]};rport"
        lines = [f"{method} {uri} SIP/2.0", f"Via: {via}", "Max-Forwards: 70",
                 f"From: <sip:{from_user}@{self.host}>;tag={from_tag or uuid.uuid4().hex[:8]}",
                 f"To: {to or '<' + uri + '>'}", f"Call-ID: {call_id or uuid.uuid4().hex + '@peer'}",
                 f"CSeq: {cseq} {method}"]
        lines += [f"{n}: {v}" for n, v in headers or []]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    def ack_for(self, request: Msg, response: Msg) -> str:
        """ACK for a non-2xx final: same branch as the INVITE (RFC 3261 17.1.1.3)."""
        lines = [f"ACK {request.uri} SIP/2.0", f"Via: {request.all('Via')[0]}", "Max-Forwards: 70",
                 f"From: {request.header('From')}", f"To: {response.header('To')}",
                 f"Call-ID: {request.header('Call-ID')}", f"CSeq: {request.cseq} ACK", "Content-Length: 0"]
        return "\r\n".join(lines) + "\r\n\r\n"


async def stream_tone(sock, dest: tuple[str, int], freq: float, seconds: float, pt: int = 0) -> None:
    """Send `seconds` of a `freq` tone as PCMU RTP packets every 20 ms from `sock` to `dest`."""
    from bridge import g711
    from bridge.audio import tone
    from bridge.rtp import RtpPacket
    payload = g711.encode("PCMU", tone(freq, seconds, rate=8000, dbfs=-12))
    loop = asyncio.get_running_loop()
    start = loop.time()
    for k in range(len(payload) // 160):
        sock.sendto(RtpPacket(pt, k, 160 * k, 0x5EE, payload[160 * k:160 * (k + 1)], marker=k == 0).serialize(), dest)
        await asyncio.sleep(max(0.0, start + 0.02 * (k + 1) - loop.time()))
