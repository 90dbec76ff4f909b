"""HTTP at the byte level, for sending what no HTTP client library would: raw requests on real
sockets, optionally from another loopback source address, and their answers parsed loosely."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field


@dataclass
class Answer:
    status: int | None                  # None: the connection closed (or timed out) without an answer
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes = b""
    seconds: float = 0.0                # from sending to the connection's end (or the timeout)
    first: float | None = None          # from sending to the first byte of the answer
    closed: bool = False                # the server closed the connection

    def json(self) -> dict:
        return json.loads(self.body)

    def error_shape(self) -> bool:
        """{"error": str, "message": str} as JSON."""
        try:
            data = self.json()
        except ValueError:
            return False
        return (isinstance(data, dict) and isinstance(data.get("error"), str)
                and isinstance(data.get("message"), str) and bool(data["message"]))


def parse(raw: bytes) -> Answer:
    """The first final (non-1xx) answer in `raw`."""
    rest = raw
    while rest.startswith(b"HTTP/"):
        head, sep, body = rest.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            break
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200 and status != 101:
            rest = body
            continue
        if "content-length" in headers and headers["content-length"].isdigit():
            body = body[:int(headers["content-length"])]
        return Answer(status, headers, body, raw)
    return Answer(None, raw=raw)


async def exchange(port: int, data: bytes, *, source: str | None = None, timeout: float = 5.0,
                   host: str = "127.0.0.1") -> Answer:
    """Send `data` on a new connection; read until the server closes it or `timeout` passes."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0) if source else None)
    closed = False
    raw = b""
    first = None
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                first = time.monotonic() - started if first is None else first
                raw += chunk
        closed = True
    except TimeoutError:
        closed = reader.at_eof()
    except ConnectionError:
        closed = True
    finally:
        writer.close()
    answer = parse(raw)
    answer.seconds = time.monotonic() - started
    answer.first = first
    answer.closed = closed
    return answer


def request(method: str, path: str, headers: list[tuple[str, bytes]] | None = None, body: bytes = b"",
            *, host: bytes = b"127.0.0.1", close: bool = True, length: bool = True) -> bytes:
    """A request as bytes: header values may hold any byte."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + host]
    for name, value in headers or []:
        lines.append(name.encode() + b": " + value)
    if length and body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers or []):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
