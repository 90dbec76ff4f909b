"""HTTP listeners that a hostile network cannot wedge, crash or make leak.

Each HTTP listener of the daemon (the platform's HTTP/WebSocket server, the notification
endpoint) is a `Listener`: an aiohttp application behind these rules, with its own `HttpLimits`:

- Connections: at most `max_connections` open at once, and `max_connections_per_client` from
  one client address (0: no per-client cap). One more is answered at once without being read,
  429 `too_many_connections` (that address) or 503 `server_full` (the listener), and closed.
- Header timeout: a request head (request line and headers) must be complete within
  `header_timeout` of the connection opening, or of the previous answer on a kept-alive
  connection (aiohttp's keep-alive timeout, set to the same value); else 408
  `header_timeout` and the connection is closed.
- Body timeout: a request body must be complete within `body_timeout` of its head, else 408
  `body_timeout`. A body larger than the app's `client_max_size`: 413 `too_large`. Compressed
  bodies are not decompressed.
- Errors: every error answer is JSON `{"error": code, "message": text}` with a 4xx status, and
  so are aiohttp's own (unparseable HTTP, 404, 405, 413, a refused WebSocket handshake). An
  exception that a handler did not expect is answered 400 `bad_request` and logged as one line.
  No traceback is printed for anything a client sent; whatever the client sent is escaped
  (`logsafe.safe`) before it is logged; each kind of refusal is logged at most once a minute
  per client address, and every refusal is counted (`bridge_http_refused` in /metrics).
- Every answer carries `Server: bridge`, without versions.
- TLS (a listener started with an `ssl.SSLContext`: HTTPS and WSS): a connection is admitted
  (and counted) when TCP accepts it, before its handshake, so handshakes count against the
  caps too; the handshake and the first request head must both complete within
  `header_timeout`, else the connection is closed (a failed or late handshake gets no HTTP
  answer: there is no channel for one; it is counted as `tls_handshake`). A refused
  connection is closed at once, without a handshake.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import sys
import time
from typing import Any, Awaitable, Callable, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .config import HttpLimits
from .logsafe import failure, safe

log = logging.getLogger("bridge.http")

SERVER = "bridge"
LINGER = 2.0            # after an early answer, read (and drop) the rest of a body this long
LOG_EVERY = 60.0        # a refusal kind is logged once per client address per this many seconds

# Error codes for the statuses aiohttp raises itself.
_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 408: "timeout", 411: "length_required", 413: "too_large",
          414: "uri_too_long", 415: "unsupported_media_type", 429: "too_many_requests",
          431: "headers_too_large"}

Counter = Callable[[str, str], None]      # (listener, reason) -> count it


def error_response(status: int, code: str, message: str) -> web.Response:
    """The JSON error shape every endpoint answers with."""
    return web.json_response({"error": code, "message": message}, status=status,
                             headers={"Server": SERVER})


def _raw_answer(status: int, reason: str, code: str, message: str) -> bytes:
    """A whole HTTP answer for a connection aiohttp never sees (or no longer reads)."""
    body = json.dumps({"error": code, "message": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nServer: {SERVER}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class Guard:
    """One listener's limits and what it tracks: open connections per client address, when each
    kind of refusal was last logged, and a counter for /metrics."""

    def __init__(self, name: str, limits: HttpLimits, count: Counter | None = None) -> None:
        self.name = name
        self.limits = limits
        self.open = 0
        self.clients: dict[str, int] = {}
        self._count = count or (lambda listener, reason: None)
        self._logged: dict[tuple[str, str], float] = {}

    def admit(self, client: str) -> tuple[int, str, str, str] | None:
        """Take a connection slot for `client`, or say why not (status, reason, code, message)."""
        if self.open >= self.limits.max_connections:
            self.refused("server_full", client, "connection refused: %d connections open", self.open)
            return 503, "Service Unavailable", "server_full", "too many connections; try again later"
        per_client = self.limits.max_connections_per_client
        if per_client and self.clients.get(client, 0) >= per_client:
            self.refused("too_many_connections", client, "connection refused: %d connections open "
                         "from this address", per_client)
            return (429, "Too Many Requests", "too_many_connections",
                    f"at most {per_client} connections from one address")
        self.open += 1
        self.clients[client] = self.clients.get(client, 0) + 1
        return None

    def release(self, client: str) -> None:
        self.open -= 1
        left = self.clients.get(client, 1) - 1
        if left > 0:
            self.clients[client] = left
        else:
            self.clients.pop(client, None)

    def refused(self, reason: str, client: str | None, message: str, *args: Any,
                level: int = logging.INFO) -> None:
        """Count a refusal; log it unless this client got the same one in the last minute."""
        self._count(self.name, reason)
        now = time.monotonic()
        key = (reason, client or "?")
        if now - self._logged.get(key, -LOG_EVERY) < LOG_EVERY:
            return
        if len(self._logged) > 4096:
            self._logged = {k: t for k, t in self._logged.items() if now - t < LOG_EVERY}
        self._logged[key] = now
        log.log(level, "%s: %s: " + message, self.name, safe(client, 64), *args)

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Body timeout, the JSON error shape for every HTTP error, nothing unexpected escapes."""
        if isinstance(request.protocol, _Connection):
            request.protocol.head_received()
        try:
            if request.body_exists:
                try:
                    async with asyncio.timeout(self.limits.body_timeout):
                        await request.read()        # kept by aiohttp: handlers read it again
                except TimeoutError:
                    self.refused("body_timeout", request.remote, "request body not complete within %g s",
                                 self.limits.body_timeout)
                    answer = error_response(408, "body_timeout", f"request body not complete within "
                                            f"{self.limits.body_timeout:g} s")
                    answer.force_close()
                    return answer
                except web.HTTPException:
                    raise
                except ConnectionError:
                    raise
                except Exception as exc:            # broken chunked encoding and the like
                    self.refused("bad_body", request.remote, "unreadable request body: %s", safe(exc))
                    return error_response(400, "bad_body", "the request body could not be read")
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type == "application/json":
                raise
            if exc.status == 413:
                self.refused("too_large", request.remote, "request body too large")
            return self._json_error(request, exc)
        except ConnectionError:
            raise
        except Exception as exc:
            if request.writer is not None and request.writer.output_size > 0:
                raise                               # answer already under way: aiohttp closes it
            self.unexpected(request, exc)
            return error_response(400, "bad_request", "the request could not be processed")

    @staticmethod
    def _json_error(request: web.Request, exc: web.HTTPException) -> web.Response:
        code = _CODES.get(exc.status, "bad_request" if exc.status < 500 else "unavailable")
        messages = {404: f"no resource at {safe(request.path, 100)}",
                    405: f"{safe(request.method, 20)} is not allowed on {safe(request.path, 100)}",
                    413: exc.text or "request body too large"}
        answer = error_response(exc.status, code, messages.get(exc.status, exc.reason))
        for name in ("Allow", "Location", "Retry-After"):
            if name in exc.headers:
                answer.headers[name] = exc.headers[name]
        return answer

    def unexpected(self, request: web.BaseRequest | None, exc: BaseException) -> None:
        """One escaped line for an exception no handler expected: where it was raised, no traceback."""
        what = f"{safe(request.method, 20)} {safe(request.path, 100)}" if request is not None else "a request"
        self.refused("unexpected", request.remote if request is not None else None,
                     "unexpected error on %s: %s", what, failure(exc), level=logging.ERROR)


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER


class _Connection(RequestHandler):
    """aiohttp's HTTP/1.1 connection, admitted by the guard and timed until its first head."""

    def __init__(self, guard: Guard, manager: web.Server, tls: ssl.SSLContext | None = None,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._tls = tls
        self._client: str | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._raw: asyncio.Transport | None = None          # the TCP transport under TLS
        self._handshake: asyncio.Task | None = None
        self._http = False                                  # aiohttp has the connection
        self._early: list[bytes] = []                       # decrypted before start_tls returned
        self._hello: list[bytes] = []                       # raw TLS before start_tls took over
        self._replayed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "?"
        refusal = self._guard.admit(client)
        if refusal is not None:
            if self._tls is None:
                tcp.write(_raw_answer(*refusal))
            tcp.close()
            return
        self._client = client
        self._head_timer = self._loop.call_later(self._guard.limits.header_timeout, self._head_late)
        if self._tls is None:
            self._start_http(tcp)
        else:
            self._raw = tcp
            self._handshake = self._loop.create_task(self._start_tls(tcp, self._tls))

    async def _start_tls(self, tcp: asyncio.Transport, context: ssl.SSLContext) -> None:
        # uvloop starts reading right after connection_made: a ClientHello may reach
        # data_received before start_tls takes the transport. Hand those bytes to its TLS
        # protocol once it is connected (start_tls's own call_soon's run first: FIFO).
        self._loop.call_soon(self._loop.call_soon, self._replay_hello, tcp)
        try:
            secure = await self._loop.start_tls(tcp, self, context, server_side=True,
                                                ssl_handshake_timeout=self._guard.limits.header_timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self._guard.refused("tls_handshake", self._client, "TLS handshake failed: %s",
                                safe(type(exc).__name__ + (f": {exc}" if str(exc) else ""), 120))
            tcp.abort()
            self._release()
            return
        if secure is None or self._client is None:
            return
        self._start_http(cast(asyncio.Transport, secure))
        early, self._early = self._early, []
        for data in early:
            super().data_received(data)

    def _replay_hello(self, tcp: asyncio.Transport) -> None:
        data, self._hello, self._replayed = b"".join(self._hello), [], True
        tls_protocol = tcp.get_protocol()
        if not data or tls_protocol is self or tcp.is_closing():
            return
        view = memoryview(data)
        while view:
            buffer = tls_protocol.get_buffer(len(view))      # asyncio's and uvloop's are buffered protocols
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            tls_protocol.buffer_updated(n)
            view = view[n:]

    def _start_http(self, transport: asyncio.Transport) -> None:
        self._http = True
        super().connection_made(transport)
        # aiohttp >= 3.14 also arms its keep-alive timer at connect, which would close the
        # connection silently at the same moment: the head timer (a 408) takes its place.
        early = getattr(self, "_keepalive_handle", None)
        if early is not None:
            early.cancel()
            self._keepalive_handle = None

    def data_received(self, data: bytes) -> None:
        if self._http:
            super().data_received(data)
        elif self._client is None or self._tls is None:
            return
        elif self._raw is not None and self._raw.get_protocol() is self and self._handshake is not None \
                and not self._replayed:
            self._hello.append(data)            # TLS bytes before start_tls took the transport
        else:
            self._early.append(data)            # decrypted, before start_tls returned

    def _release(self) -> None:
        if self._client is not None:
            self._guard.release(self._client)
            self._client = None
        self.head_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._client is None:
            return                              # refused, or given back already
        self._release()
        if self._handshake is not None and not self._handshake.done():
            self._handshake.cancel()
        if self._http:
            super().connection_lost(exc)
            self._data_received_cb = None   # a WebSocket's heartbeat hook: aiohttp (3.14) keeps it

    def head_received(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        timeout = self._guard.limits.header_timeout
        if not self._http:                  # still in the TLS handshake: nothing to answer on
            self._guard.refused("tls_handshake", self._client, "TLS handshake not complete within %g s",
                                timeout)
            if self._handshake is not None:
                self._handshake.cancel()
            if self._raw is not None:
                self._raw.abort()
            self._release()
            return
        self._guard.refused("header_timeout", self._client, "request head not complete within %g s",
                            timeout)
        if self.transport is not None:
            self.transport.write(_raw_answer(408, "Request Timeout", "header_timeout",
                                             f"request head not complete within {timeout:g} s"))
        self.force_close()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to unparseable HTTP (400) or an escaped exception: JSON, one log line."""
        self.head_received()
        if request.writer.output_size > 0:
            raise ConnectionError("answer already under way")
        if status == 400:
            first = (message or "malformed request").strip().splitlines()[0]
            self._guard.refused("bad_http", request.remote, "malformed HTTP request: %s", safe(first, 100))
            answer = error_response(400, "bad_http", f"malformed HTTP request: {safe(first, 100)}")
        else:
            if exc is not None:
                self._guard.unexpected(None, exc)
            answer = error_response(400, "bad_request", "the request could not be processed")
        answer.force_close()
        return answer

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """aiohttp's own error reports: one line, no traceback."""
        exc = kwargs.get("exc_info")
        if exc is True:
            exc = sys.exc_info()[1]
        if isinstance(exc, BaseException):
            self._guard.unexpected(None, exc)
        else:
            self._guard.refused("unexpected", self._client, "%s", safe(args[0] if args else "error"),
                                level=logging.ERROR)


class _Site(web.BaseSite):
    """A TCP site whose connections are `_Connection`s of one guard (each starts its own TLS)."""

    __slots__ = ("_host", "_port", "_factory", "_scheme")

    def __init__(self, runner: web.AppRunner, host: str, port: int,
                 factory: Callable[[], asyncio.Protocol], scheme: str) -> None:
        super().__init__(runner, backlog=1024)
        self._host, self._port, self._factory, self._scheme = host, port, factory, scheme

    @property
    def name(self) -> str:
        return f"{self._scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, self._host, self._port, backlog=self._backlog)


class Listener:
    """One guarded HTTP listener: `start(host, port)`, then `stop()`."""

    def __init__(self, app: web.Application, name: str, limits: HttpLimits, count: Counter | None = None) -> None:
        self.guard = Guard(name, limits, count)
        app.middlewares.insert(0, self.guard.middleware)
        app.on_response_prepare.append(_server_header)
        self.runner = web.AppRunner(app, access_log=None)

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        """Serve on host:port (HTTPS with `tls`); OSError if the address cannot be taken."""
        await self.runner.setup()
        server = self.runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        limits = self.guard.limits

        def connection() -> _Connection:
            return _Connection(self.guard, server, tls, loop=loop, keepalive_timeout=limits.header_timeout,
                               access_log=None, lingering_time=LINGER, auto_decompress=False)
        try:
            await _Site(self.runner, host, port, connection, "https" if tls else "http").start()
        except OSError:
            await self.runner.cleanup()
            raise

    async def stop(self) -> None:
        await self.runner.cleanup()
