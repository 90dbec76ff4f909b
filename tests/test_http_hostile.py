"""Every HTTP entry point of a running daemon against malformed, slow and piled-up clients.

Real `bridge run` (with Kamailio, so /healthz is 200), raw sockets: every malformed header, body,
JSON or WebSocket frame gets a 4xx in the JSON error shape (or a WebSocket error / close), never a
5xx or a traceback; slow clients are cut at the header and body timeouts; connection caps hold
per client address and in total while /healthz and notifications still answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import struct
import time
import uuid
from dataclasses import dataclass

import aiohttp
import pytest

from bridge import callbacks, ccparam, httpguard
from rawhttp import Answer, exchange, request
from stack import kamailio, real_call_works, start_bridge  # noqa: F401  (fixtures)
from testbed.fixtures import baresip_factory, kamailio_factory  # noqa: F401  (fixtures)
from testbed.fixtures import kamailio_factory  # noqa: F401

NOTIFY_SECRET = "demo-notification-development-secret-change-me"     # the sample's, inline
APP_SECRET = "demo-app-development-secret-change-me"
TIMEOUT = 2.0                                 # header and body timeouts of these daemons
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def limits(header: float = TIMEOUT, body: float = TIMEOUT, total: int = 4096, per_client: int = 512):
    def edit(data: dict) -> None:
        data["log_level"] = "info"
        http = {"header_timeout": f"{header}s", "body_timeout": f"{body}s", "max_connections": total,
                "max_connections_per_client": per_client}
        data["platform"]["http"] = dict(http, max_connections=max(total, 4096), max_connections_per_client=512)
        data["notifications"]["http"] = http
    return edit


def ports(d) -> tuple[int, int]:
    return d.cfg.notifications.port, d.cfg.platform.port


def signed(body: bytes, secret: str = NOTIFY_SECRET) -> list[tuple[str, bytes]]:
    return [("Content-Type", b"application/json")] + \
        [(k, v.encode()) for k, v in callbacks.signed_headers(secret, body).items()]


def cc_param(d, **change) -> str:
    fields = dict(sid=str(uuid.uuid4()), callee_service="demo-desk", callee_user="desk-2001",
                  caller_service="demo-app", caller_user="alice",
                  platform_url=d.cfg.platform.ws_url, expires=time.time() + 60)
    fields.update(change)
    return ccparam.mint(ccparam.CcParam(**fields), os.urandom(32))


def notification(d, **change) -> bytes:
    return json.dumps({"cc_param": cc_param(d, **change), "app_callee_uid": "desk-2001",
                       "app_callee_sid": "demo-desk", "app_call_type": "audio"}).encode()


def log_is_records(text: str) -> list[str]:
    """Lines of the daemon log that are not the start of a log record (a forged or broken line)."""
    return [line for line in text.splitlines() if line and not RECORD.match(line)]


@dataclass
class Case:
    name: str
    listener: str               # "n": notifications, "p": platform
    data: bytes
    expect: tuple[int, ...] = ()   # the statuses allowed (empty: any 4xx)


# --- the table ----------------------------------------------------------------------------------

N_ENDPOINTS = [("POST", "/v1/notifications"), ("GET", "/healthz"), ("GET", "/metrics")]
P_ENDPOINTS = [("GET", "/v1/calls/abc"), ("DELETE", "/v1/calls/abc"), ("POST", "/v1/dev/token"),
               ("GET", "/dialer/config.json"), ("GET", "/v1/ws"), ("GET", "/dialer"), ("GET", "/sdk/planetkit.js")]

BAD_HEADERS: list[tuple[str, bytes]] = [
    ("X-Bridge-Timestamp", b"9" * 5000), ("X-Bridge-Timestamp", "\u0663\u0663".encode()),
    ("X-Bridge-Timestamp", b"-5"), ("X-Bridge-Timestamp", b"1e3"), ("X-Bridge-Timestamp", b"\xff\xfe"),
    ("X-Bridge-Timestamp", "\u00b2".encode()), ("X-Bridge-Signature", "v1=\u00e9\u00e9".encode()),
    ("X-Bridge-Signature", b"v1=" + b"a" * 8000), ("X-Bridge-Signature", b"\xff\xfe"),
    ("X-Bridge-Signature", b"v1=" + b"0" * 64), ("X-Bridge-Api-Key", b"\xff\xfe"),
    ("X-Bridge-Api-Key", b"k" * 8000), ("Authorization", b"Bearer \xff\xfe"),
    ("Authorization", b"Basic " + b"A" * 7000), ("Authorization", b""), ("Origin", b"http://["),
    ("Origin", b"\xff\xfe"), ("Origin", b"null"), ("Content-Type", b"application/json; charset=\xff"),
    ("Content-Type", b"multipart/form-data; boundary="), ("X-Forwarded-For", b"\x1b[31m1.2.3.4"),
    ("Forwarded", b'for="[::1"'), ("Cookie", b"a=\xff; b"), ("Accept", b"text/html"),
    ("Content-Encoding", b"gzip"), ("Expect", b"100-continue"), ("Upgrade", b"websocket"),
    ("Connection", b"Upgrade, \xff"), ("Sec-WebSocket-Key", b"short"), ("Sec-WebSocket-Version", b"8"),
    ("Range", b"bytes=-1-2"), ("If-Modified-Since", b"\xff"), ("Accept-Encoding", b"br;q=NaN"),
]
BAD_HOSTS = [b"[::1", b"\xff\xfe", b"a" * 7000, b"", b"127.0.0.1:99999", b"evil.example"]


def header_cases() -> list[Case]:
    now = str(int(time.time())).encode()
    cases = []
    for listener, endpoints in (("n", N_ENDPOINTS), ("p", P_ENDPOINTS)):
        for method, path in endpoints:
            body = b"{}" if method == "POST" else b""
            for name, value in BAD_HEADERS:
                extra = [("X-Bridge-Timestamp", now)] if name == "X-Bridge-Signature" else []
                if name.startswith("X-Bridge") and path.startswith("/v1/calls"):
                    extra.append(("X-Bridge-Api-Key", b"demo-app-key"))
                cases.append(Case(f"{method} {path} {name}: {value[:20]!r}", listener,
                                  request(method, path, extra + [(name, value)], body)))
            for host in BAD_HOSTS:
                cases.append(Case(f"{method} {path} Host {host[:20]!r}", listener,
                                  request(method, path, [], body, host=host)))
            for length in (b"-1", b"abc", b"99999999999999999999", b"5, 6"):
                cases.append(Case(f"{method} {path} Content-Length {length!r}", listener,
                                  request(method, path, [("Content-Length", length)], b"{}")))
            cases.append(Case(f"{method} {path} broken chunks", listener,
                              request(method, path, [("Transfer-Encoding", b"chunked")], b"zz\r\nxx\r\n0\r\n\r\n")))
            cases.append(Case(f"{method} {path} chunked, gzip", listener,
                              request(method, path, [("Transfer-Encoding", b"gzip, chunked")], b"0\r\n\r\n")))
            cases.append(Case(f"{method} {path} body never comes", listener,
                              request(method, path, [("Content-Length", b"100")], b"{"), (408,)))
    # the signature check itself, with a fresh timestamp and a non-ASCII or malformed signature
    for sig in ("v1=\u00e9" * 10, "v1=" + "\u0663" * 64, "v1=" + "g" * 64, "", "v1="):
        headers = [("X-Bridge-Timestamp", now), ("X-Bridge-Signature", sig.encode())]
        cases.append(Case(f"notification signature {sig[:12]!r}", "n",
                          request("POST", "/v1/notifications", headers, b"{}"), (401,)))
        cases.append(Case(f"REST signature {sig[:12]!r}", "p",
                          request("GET", "/v1/calls/abc", headers + [("X-Bridge-Api-Key", b"demo-app-key")]),
                          (401,)))
    # and a signed request whose timestamp is huge or not ASCII digits
    for ts in (b"9" * 5000, "\u00b2".encode(), "\u0663\u0663".encode()):
        headers = [("X-Bridge-Timestamp", ts), ("X-Bridge-Signature", b"v1=" + b"0" * 64)]
        cases.append(Case(f"notification timestamp {ts[:12]!r}", "n",
                          request("POST", "/v1/notifications", headers, b"{}"), (401,)))
        cases.append(Case(f"REST timestamp {ts[:12]!r}", "p",
                          request("GET", "/v1/calls/abc", headers + [("X-Bridge-Api-Key", b"demo-app-key")]),
                          (401,)))
    return cases


def body_cases(d) -> list[Case]:
    """Bodies for the two endpoints that take one; notifications signed, so their JSON is read."""
    deep = [b"[" * 100_000, b"[" * 4000, b"{\"a\":" * 1500 + b"1" + b"}" * 1500, b"1" * 5000,
            b"\xff\xfe\x00\x00", b"\x00" * 100, b"NaN", b"[]", b'"x"', b"null", b"{}", b"{\"a\": 1",
            json.dumps({"cc_param": "\ud800"}).encode(), b'{"a": 1, "a": 2}', b"1e999999", b"{}" * 1000]
    fields = {"cc_param": 5, "app_callee_uid": "a b", "app_callee_sid": "x" * 65, "app_call_type": "video"}
    wrong = []
    for name, value in fields.items():
        data = json.loads(notification(d))
        data[name] = value
        wrong.append(json.dumps(data).encode())
    wrong += [notification(d, caller_user="alice\r\nFORGED\x1b[2J"), notification(d, sid="../../x\r\n"),
              notification(d, platform_url="ws://evil.example/v1/ws\r\nFORGED"),
              notification(d, callee_user="desk-2002"),
              json.dumps({"cc_param": "!!!", "app_callee_uid": "desk-2001", "app_callee_sid": "demo-desk",
                          "app_call_type": "audio"}).encode(),
              json.dumps({"cc_param": base64.urlsafe_b64encode(b"x" * 40).decode(), "app_callee_uid": "desk-2001",
                          "app_callee_sid": "demo-desk", "app_call_type": "audio"}).encode()]
    cases = []
    for body in deep + wrong:
        cases.append(Case(f"notification body {body[:30]!r}", "n",
                          request("POST", "/v1/notifications", signed(body), body), (400, 403, 413)))
    tokens = deep + [json.dumps(b).encode() for b in (
        {"service": "demo-app", "user": "a b"}, {"service": ["x"], "user": "bob"}, {"service": "\ud800", "user": "b"},
        {"service": "nope", "user": "bob"}, {"user": "bob"}, {"service": "demo-app", "user": 5},
        {"service": "demo-app", "user": "b" * 65}, {"service": "demo-app\r\nFORGED", "user": "bob"})]
    for body in tokens:
        cases.append(Case(f"dev token body {body[:30]!r}", "p",
                          request("POST", "/v1/dev/token", [("Content-Type", b"application/json")], body),
                          (400, 413)))
    return cases


RAW = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
    b"GET / HTTP/9.9\r\n\r\n", b"GET\r\n\r\n", b"BREW /pot HTCPCP/1.0\r\n\r\n", b"\x00" * 64 + b"\r\n\r\n",
    b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"b" * 20_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(300)) + b"\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b\r\n folded\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A\x01: b\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: \x00\x7f\x1b[2J\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n : empty name\r\n\r\n",
    b"GET /healthz\x1b[31mFORGED HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
    b"POST /v1/notifications HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
    b"POST /v1/notifications HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;" + b"e" * 9000 + b"\r\n",
    b"GET /healthz HTTP/1.0\r\n\r\n", b"GET http://evil.example/healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\nHost: x\n\n", b"\r\n\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
]
PATHS = ["/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/sdk/..%2f..%2fconfig.yaml", "//healthz",
         "/healthz%00", "/v1/calls/%ff%fe", "/v1/calls/" + "a" * 5000, "/v1/calls/%0d%0aFORGED",
         "/dialer/%2e%2e/%2e%2e/config.yaml", "/healthz?" + "a=1&" * 2000, "/v1/ws?x=%zz", "/\u00e9"]


def raw_cases() -> list[Case]:
    cases = []
    for listener in ("n", "p"):
        for i, data in enumerate(RAW):
            # a request that ends in a blank line and stays open: it gets an answer or the header timeout
            cases.append(Case(f"raw[{i}] {data[:30]!r}", listener, data))
        for path in PATHS:
            cases.append(Case(f"path {path[:40]!r}", listener, request("GET", path, [])))
        endpoints = N_ENDPOINTS if listener == "n" else P_ENDPOINTS
        for _, path in endpoints:
            for method in ("PUT", "PATCH", "TRACE", "OPTIONS", "HEAD", "FOO", "G\x01T"):
                cases.append(Case(f"{method!r} {path}", listener, request(method, path, [])))
    for data in (b"POST /v1/notifications HTTP/1.1\r\nHost: x\r\nX-Half: ",
                 b"GET /healthz HTTP/1.1\r\nHost: x\r\n"):
        cases.append(Case(f"head never ends {data[:30]!r}", "n", data, (408,)))
    return cases


async def run_table(d, cases: list[Case], concurrency: int = 16) -> list[tuple[Case, Answer]]:
    n_port, p_port = ports(d)
    gate = asyncio.Semaphore(concurrency)

    async def one(case: Case) -> tuple[Case, Answer]:
        async with gate:
            port = n_port if case.listener == "n" else p_port
            return case, await exchange(port, case.data, timeout=TIMEOUT + 4)
    return await asyncio.gather(*(one(c) for c in cases))


def check(results: list[tuple[Case, Answer]]) -> list[str]:
    """What is wrong with each answer (empty: all fine)."""
    wrong = []
    for case, a in results:
        if a.status is None:
            wrong.append(f"{case.name}: no answer ({a.raw[:80]!r})")
        elif a.status >= 500:
            wrong.append(f"{case.name}: {a.status} {a.body[:120]!r}")
        elif case.expect and a.status not in case.expect:
            wrong.append(f"{case.name}: {a.status} not in {case.expect}: {a.body[:120]!r}")
        elif a.status >= 400 and not a.error_shape() and not case.data.startswith(b"HEAD "):
            wrong.append(f"{case.name}: {a.status} not in the error shape: {a.body[:120]!r}")
        elif a.headers.get("server") != "bridge":
            wrong.append(f"{case.name}: Server: {a.headers.get('server')!r}")
    return wrong


async def healthz(d) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(d.admin + "/healthz", timeout=aiohttp.ClientTimeout(total=3)) as r:
            return r.status


# --- the tests ----------------------------------------------------------------------------------------

async def test_malformed_http_on_every_endpoint_gets_a_4xx_in_the_error_shape(start_bridge, kamailio,  # noqa: F811
                                                                              baresip_factory):
    d = await start_bridge(limits())
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    cases = header_cases() + body_cases(d) + raw_cases()
    results = await run_table(d, cases)
    wrong = check(results)
    assert not wrong, f"{len(wrong)} of {len(cases)} inputs:\n" + "\n".join(wrong[:40])
    refused = sum(1 for _, a in results if a.status >= 400)
    print(f"{len(cases)} malformed HTTP inputs: no 5xx; {refused} refused with a 4xx in the error shape, "
          f"the rest answered as usual (statuses {sorted({a.status for _, a in results})})")
    assert await healthz(d) == 200
    log = d.log()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
    assert "\x1b" not in log and not log_is_records(log), log_is_records(log)[:10]
    assert "FORGED" in log                  # it was logged, escaped, inside a record
    assert d.proc.poll() is None
    await real_call_works(d, phone)          # and a real call still carries tones both ways


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True,
             length: int | None = None) -> bytes:
    """One WebSocket frame as a client sends it (masked), with any field forged."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if length is None else length
    if n < 126:
        head = struct.pack("!BB", first, (0x80 if mask else 0) | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


UPGRADE = (b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")

FRAMES = {
    "text not JSON": ws_frame(1, b"not json {"),
    "deep JSON": ws_frame(1, b"[" * 60_000),
    "lone surrogate": ws_frame(1, json.dumps({"type": "make_call", "token": "\ud800", "my_id": "a",
                                              "my_service_id": "demo-app", "peer_id": "b",
                                              "peer_service_id": "demo-app", "media_type": "audio",
                                              "sdp": "v=0"}).encode()),
    "surrogate app data": ws_frame(1, json.dumps({"type": "make_call", "token": "t", "my_id": "a",
                                                  "my_service_id": "demo-app", "peer_id": "b",
                                                  "peer_service_id": "demo-app", "media_type": "audio",
                                                  "sdp": "v=0", "app_server_data": "\udcff"}).encode()),
    "type with CR/LF/ESC": ws_frame(1, json.dumps({"type": "x\r\nFORGED\x1b[2J"}).encode()),
    "invalid UTF-8": ws_frame(1, b"\xff\xfe\xfd"),
    "reserved bits": ws_frame(1, b"{}", rsv=7),
    "reserved opcode": ws_frame(3, b"{}"),
    "unmasked": ws_frame(1, b"{}", mask=False),
    "length 2^63": ws_frame(1, b"", length=(1 << 63) - 1),
    "too big": ws_frame(1, b"x" * 70_000),
    "fragmented ping": ws_frame(9, b"p", fin=False),
    "ping over 125 bytes": ws_frame(9, b"p" * 200),
    "close code 999": ws_frame(8, struct.pack("!H", 999)),
    "close with bad UTF-8": ws_frame(8, struct.pack("!H", 1000) + b"\xff"),
    "binary": ws_frame(2, b"\x00\x01"),
    "continuation first": ws_frame(0, b"{}"),
    "first fragment only": ws_frame(1, b"{", fin=False),
}


def server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Whole (unmasked) frames at the start of `data`, and what is left."""
    frames = []
    while len(data) >= 2:
        opcode, n, at = data[0] & 0x0F, data[1] & 0x7F, 2
        if n == 126:
            if len(data) < 4:
                break
            n, at = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            if len(data) < 10:
                break
            n, at = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < at + n:
            break
        frames.append((opcode, data[at:at + n]))
        data = data[at + n:]
    return frames, data


async def ws_session(port: int, frame: bytes, timeout: float = 15) -> tuple[int, list[tuple[int, bytes]], float]:
    """Upgrade, send `frame`, answer the server's close: (status, frames received, seconds to the end)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(UPGRADE + frame)
    buffer, status, frames = b"", 0, []
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                buffer += chunk
                if not status and b"\r\n\r\n" in buffer:
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    status = int(head.split(b" ")[1])
                got, buffer = server_frames(buffer) if status == 101 else ([], buffer)
                frames += got
                if any(op == 8 for op, _ in got):
                    writer.write(ws_frame(8, struct.pack("!H", 1000)))
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    return status, frames, time.monotonic() - started


async def test_malformed_websocket_frames_get_an_error_or_a_close(start_bridge, kamailio, baresip_factory):  # noqa: F811
    d = await start_bridge(limits())
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    _, p_port = ports(d)
    sessions = await asyncio.gather(*(ws_session(p_port, f) for f in FRAMES.values()))
    results = dict(zip(FRAMES, sessions))
    for name, (status, frames, seconds) in results.items():
        assert status == 101, (name, status)
        # an error message or a close from the server, and the socket ends: at once, or when no
        # valid opening message came within 10 s
        assert any(op == 8 for op, _ in frames), (name, frames)
        assert seconds < 12, (name, seconds, frames)
        for op, payload in frames:
            if op == 1:
                assert json.loads(payload)["type"] == "error", (name, payload)
    # a valid socket is still served, and the daemon is healthy
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"http://127.0.0.1:{p_port}/v1/ws") as ws:
            await ws.send_str('{"type": "launch"}')
            assert json.loads((await ws.receive(timeout=5)).data)["code"] == "unknown_type"
    assert await healthz(d) == 200
    log = d.log()
    assert "Traceback" not in log and "unexpected error" not in log and "handler" not in log, log[-3000:]
    assert "\x1b" not in log and not log_is_records(log), log_is_records(log)[:10]
    codes = {name: [json.loads(p)["code"] for op, p in frames if op == 1] for name, (_, frames, _) in results.items()}
    # a bad message is answered, then the socket waits for a valid opening message (10 s)
    assert codes["lone surrogate"] == codes["surrogate app data"] == ["bad_text", "timeout"], codes
    assert codes["deep JSON"] == ["bad_json", "timeout"] and codes["binary"] == ["binary", "timeout"], codes
    print(f"{len(FRAMES)} malformed WebSocket frames: each answered with an error or a close")
    await real_call_works(d, phone)


async def test_slow_headers_are_cut_and_caps_hold_per_client(start_bridge, kamailio, baresip_factory):  # noqa: F811
    per_client = 40
    d = await start_bridge(limits(per_client=per_client))
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    n_port, p_port = ports(d)

    async def slowloris(port: int, path: bytes) -> tuple[float, bytes]:
        """Open from 127.0.0.2 and send a line of the request head every 0.3 s, forever: when
        does the connection end, and with what answer?"""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
        started = time.monotonic()
        lines = iter([b"POST " + path + b" HTTP/1.1\r\n", b"Host: x\r\n"])
        got = b""
        try:
            async with asyncio.timeout(TIMEOUT * 4):
                while True:
                    try:
                        chunk = await asyncio.wait_for(reader.read(4096), 0.3)
                    except TimeoutError:
                        writer.write(next(lines, b"X-Slow: 1\r\n"))
                        await writer.drain()
                        continue
                    if not chunk:
                        break
                    got += chunk
        except (TimeoutError, ConnectionError):
            pass
        writer.close()
        return time.monotonic() - started, got

    attackers = [asyncio.ensure_future(slowloris(n_port, b"/v1/notifications")) for _ in range(per_client + 20)]
    attackers += [asyncio.ensure_future(slowloris(p_port, b"/v1/ws")) for _ in range(20)]
    await asyncio.sleep(0.5)
    # while they hang on: /healthz and a new notification from another address answer at once
    started = time.monotonic()
    assert await healthz(d) == 200
    body = notification(d)
    a = await exchange(n_port, request("POST", "/v1/notifications", signed(body), body))
    assert a.status == 202 and a.json()["status"] == "accepted", a.raw
    assert time.monotonic() - started < 1.0
    ended = await asyncio.gather(*attackers)
    notify, platform = ended[:per_client + 20], ended[per_client + 20:]
    refused = [got for seconds, got in notify if b" 429 " in got.split(b"\r\n")[0]]
    cut = [(seconds, got) for seconds, got in notify + platform if b" 408 " in got.split(b"\r\n")[0]]
    assert len(refused) == 20, [(round(s, 2), g[:12]) for s, g in notify]
    assert all(json.loads(g.partition(b"\r\n\r\n")[2])["error"] == "too_many_connections" for g in refused)
    assert len(cut) == per_client + 20, [(s, g[:60]) for s, g in notify + platform]
    for seconds, got in cut:
        assert TIMEOUT - 0.2 < seconds < TIMEOUT + 1.0, seconds
        assert json.loads(got.partition(b"\r\n\r\n")[2])["error"] == "header_timeout"
    metrics = await d.metrics()
    assert 'bridge_http_refused_total{listener="notifications",reason="too_many_connections"} 20.0' in metrics
    assert 'bridge_http_refused_total{listener="platform",reason="header_timeout"} 20.0' in metrics
    print(f"{len(ended)} slow clients: {len(refused)} refused at once (429), {len(cut)} cut after "
          f"{min(s for s, _ in cut):.2f}-{max(s for s, _ in cut):.2f} s (header timeout {TIMEOUT} s)")
    await real_call_works(d, phone)


async def test_total_cap_refuses_at_once_and_frees_after_the_timeout(start_bridge):
    total = 30
    d = await start_bridge(limits(total=total, per_client=0))
    n_port, _ = ports(d)
    idle = [await asyncio.open_connection("127.0.0.1", n_port, local_addr=(f"127.0.0.{3 + i % 5}", 0))
            for i in range(total)]
    await asyncio.sleep(0.2)
    a = await exchange(n_port, request("GET", "/healthz", []), timeout=2)
    assert a.status == 503 and a.json()["error"] == "server_full" and a.seconds < 0.5, a.raw
    # idle connections are cut at the header timeout: the listener serves again
    await asyncio.sleep(TIMEOUT + 0.5)
    answers = [await r.read() for r, _ in idle]
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers
    assert await healthz(d) == 200
    for _, w in idle:
        w.close()


async def test_keep_alive_idle_and_slow_bodies_are_cut(start_bridge):
    d = await start_bridge(limits())
    n_port, _ = ports(d)
    # a kept-alive connection whose next head trickles in is closed at the header timeout
    reader, writer = await asyncio.open_connection("127.0.0.1", n_port)
    writer.write(request("GET", "/healthz", [], close=False))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    await reader.readexactly(int(re.search(rb"Content-Length: (\d+)", head).group(1)))
    started = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    async with asyncio.timeout(TIMEOUT + 3):
        rest = await reader.read()
    assert TIMEOUT - 0.2 < time.monotonic() - started < TIMEOUT + 1.0 and b" 200 " not in rest
    writer.close()
    # a body that comes too slowly: 408 body_timeout
    body = notification(d)
    head = request("POST", "/v1/notifications", signed(body) + [("Content-Length", str(len(body)).encode())],
                   b"", length=False)
    a = await exchange(n_port, head + body[:10], timeout=TIMEOUT + 3)
    assert a.status == 408 and a.json()["error"] == "body_timeout", a.raw
    assert TIMEOUT - 0.2 < a.first < TIMEOUT + 1.0, a.first
    assert a.closed and a.seconds < TIMEOUT + httpguard.LINGER + 1.0, a.seconds    # the rest is read, then closed


async def test_control_characters_from_the_network_are_escaped_in_the_log(start_bridge):
    d = await start_bridge(limits())
    n_port, p_port = ports(d)
    # each from its own address: refusals are logged once a minute per address and kind
    body = notification(d, platform_url="ws://evil.example/v1/ws\r\nFORGED-1 \x1b[2J\u2028")
    a = await exchange(n_port, request("POST", "/v1/notifications", signed(body), body), source="127.0.0.11")
    assert a.status == 403, a.raw
    # aiohttp refuses C0 controls in header values (400), not C1 controls or Unicode line separators
    a = await exchange(p_port, request("POST", "/v1/dev/token", [("X-Forwarded-For", "FORGED-2\u2028\u202e\x85".encode())],
                                       b'{"service": "demo-app", "user": "a"}'), source="127.0.0.12")
    assert a.status == 403, a.raw
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"http://127.0.0.1:{p_port}/v1/ws") as ws:
            await ws.send_str(json.dumps({"type": "x\r\nFORGED-3\x1b[2J\x00"}))
            assert json.loads((await ws.receive(timeout=5)).data)["code"] == "unknown_type"
    await asyncio.sleep(0.3)
    log = d.log()
    for n, escaped in ((1, "\\x0d\\x0aFORGED-1 \\x1b[2J\\u2028"), (2, "FORGED-2\\u2028\\u202e\\x85"),
                       (3, "\\nFORGED-3\\x1b[2J\\x00")):
        lines = [line for line in log.splitlines() if f"FORGED-{n}" in line]
        assert len(lines) == 1 and RECORD.match(lines[0]), (n, lines)
        assert escaped in lines[0], (escaped, lines[0])
    assert not log_is_records(log), log_is_records(log)[:10]
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e]", log)
