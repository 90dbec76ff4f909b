"""SIP over TCP and TLS (RFC 3261 section 18, RFC 5626 keep-alive): connections, framing, limits.

Framing (18.3): a message is its head, up to the empty line, then exactly Content-Length bytes.
On a stream the framing is all there is, so a message without a Content-Length, with a bad one,
with a start line that is not SIP (what follows a lying Content-Length), or larger than
`message.MAX_MESSAGE` closes the connection (counted `stream_malformed`); nothing more is read.

Keep-alive (RFC 5626 3.5.1, 4.4.1): a double CRLF from the peer (a ping) gets a single CRLF (a
pong). On each connection the bridge opened, it pings every `sip.connections.keepalive`; once
the peer has answered a ping, one left unanswered for 10 s means the flow is dead: the
connection is closed (`flow_failed`), and `on_closed` lets the user agent check its registration
at once, which opens a new one.

Connection reuse: connections are known by the peer's address. A response goes back on the
connection its request came in on (a server transaction's address is that connection's); if it
is gone, to the same address at the top Via's sent-by port (18.2.2). A request goes on the open
connection to its destination, else a new one (any messages sent meanwhile wait for it, in
order). The connections the bridge opens are bound to its own address and port (SO_REUSEPORT
beside the listener; on a wildcard listener, the Contact's address), so a PBX that finds
connections by address (Kamailio) sends its requests for the bridge's Contact back on them; over
TLS without a certificate of its own that is the only way in. Where that bind fails (the port
still in TIME_WAIT towards that peer, a Contact address behind NAT) the connection is opened
from any port. Connecting fails: `on_failed(addr)`, so the requests to it end at once, not at Timer B/F.

Limits (`sip.connections`), against a peer that would exhaust file descriptors or memory:
- at most `max` connections at once from sources that are not the PBX or trusted peers
  (`trusted`), `per_address` from one such address; one more is closed at once
  (`connections_refused`), before any TLS handshake;
- a connection must deliver its first message, and each message its last byte, within
  `message_timeout` of its first (the TLS handshake included); else it is closed
  (`message_timeout`);
- a connection the bridge did not open that carries no message for `idle_timeout` is closed;
- a peer that does not read what the bridge sends (more than 256 KiB waiting) is closed.
Every close gives back its file descriptor and its place in the limits.

TLS: the bridge verifies the PBX's certificate (`sip.tls.ca`, else the system's CAs) and name
(`sip.tls.server_name`, else the registrar's host) on every connection it opens, and presents
`sip.tls.cert` when asked. It accepts TLS connections only with a certificate of its own, and
asks none of its clients (they are judged by address, as over UDP).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable

from .. import inet, tls
from ..config import HepConfig, SipConnections, SipTls
from ..logsafe import safe
from .message import MAX_MESSAGE
from .transport import Tap
from .uri import hostport

log = logging.getLogger("bridge.sip")

Addr = tuple[str, int]
PING, PONG = b"\r\n\r\n", b"\r\n"
PONG_TIMEOUT = 10.0
MAX_WRITE_BUFFER = 256 * 1024
BACKLOG = 128
_START = re.compile(rb"SIP/2\.0 [1-6]\d\d(?: [^\r\n]*)?|[A-Za-z0-9!%*_+`'~.-]+ [^\s]+ SIP/2\.0")
_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_VIA = re.compile(rb"^(?:via|v)[ \t]*:[ \t]*SIP/2\.0/[A-Za-z]+[ \t]+([^;,\s]+)", re.IGNORECASE | re.MULTILINE)


class FramingError(ValueError):
    """The stream no longer holds SIP messages where they should be: the connection is closed."""


class Framer:
    """The bytes of one stream in; whole messages, pings (PING) and pongs (PONG) out, in order."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self.buffer = bytearray()
        self.awaiting_pong = False      # a lone CRLF is then our pong, not half of a ping

    @property
    def partial(self) -> bool:
        """Part of a message has arrived and the rest has not (a lone CRLF is no message)."""
        return bool(self.buffer) and self.buffer != b"\r\n"

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        frames: list[bytes] = []
        while self.buffer:
            frame = self._next()
            if frame is None:
                break
            frames.append(frame)
        return frames

    def _next(self) -> bytes | None:
        buf = self.buffer
        if buf.startswith(b"\r\n"):
            if buf.startswith(PING) and not self.awaiting_pong:
                del buf[:4]
                return PING
            if len(buf) == 2 and not self.awaiting_pong:
                return None                         # perhaps the first half of a ping
            del buf[:2]
            self.awaiting_pong = False
            return PONG
        line_end = buf.find(b"\r\n")
        if line_end < 0:
            if len(buf) > 1024:
                raise FramingError("no start line within 1024 bytes")
            return None
        if not _START.fullmatch(bytes(buf[:line_end])):
            raise FramingError("not a SIP start line")
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buf) > self.max_message:
                raise FramingError(f"a message head longer than {self.max_message} bytes")
            return None
        head = bytes(buf[:head_end + 2])
        lengths = _LENGTH.findall(head)
        if len(lengths) != 1:
            raise FramingError("no Content-Length" if not lengths else "more than one Content-Length")
        if not lengths[0].isdigit() or len(lengths[0]) > 9:
            raise FramingError("a bad Content-Length")
        size = head_end + 4 + int(lengths[0])
        if size > self.max_message:
            raise FramingError(f"a message longer than {self.max_message} bytes")
        if len(buf) < size:
            return None
        message = bytes(buf[:size])
        del buf[:size]
        return message


def response_target(data: bytes, addr: Addr, default_port: int = 5060) -> Addr | None:
    """Where a response goes when its request's connection is gone: the request's source address
    at its top Via's sent-by port, or the transport's default (RFC 3261 18.2.2); None without a Via."""
    match = _VIA.search(data.split(b"\r\n\r\n", 1)[0])
    if match is None:
        return None
    tail = match.group(1).decode("ascii", "replace").rsplit("]", 1)[-1]
    port = tail.rpartition(":")[2] if ":" in tail else str(default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return addr[0], int(port)


@dataclass
class TlsContexts:
    client: ssl.SSLContext
    server: ssl.SSLContext | None
    server_name: str


def tls_contexts(settings: SipTls, registrar_host: str) -> TlsContexts:
    """The contexts `sip.tls` asks for; raises tls.TlsError (the config checked the files already)."""
    client = tls.client_context(settings.ca)
    server = None
    if settings.cert and settings.key:
        client.load_cert_chain(settings.cert, settings.key)
        server = tls.server_context(settings.cert, settings.key)
    return TlsContexts(client, server, settings.server_name or registrar_host)


class Connection(asyncio.Protocol):
    """One TCP or TLS connection: framing, keep-alive, and its place in the limits."""

    def __init__(self, owner: "StreamTransport", outbound: bool) -> None:
        self.owner = owner
        self.outbound = outbound
        self.framer = Framer()
        self.transport: asyncio.Transport | None = None
        self.addr: Addr = ("", 0)
        self.local: Addr = ("", 0)
        self.ready = False                  # TLS handshake done (or plain TCP): messages may go
        self.untrusted = False              # counted in the limits of untrusted sources
        now = time.monotonic()
        self.opened = self.last_message = self.last_ping = now
        self.started: float | None = None   # when the message being read began
        self.messages = 0
        self.ping_sent: float | None = None
        self.pongs = 0
        self._handshake: asyncio.Task | None = None

    # asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.addr = inet.peer(transport.get_extra_info("peername"))
        self.local = inet.peer(transport.get_extra_info("sockname"))
        if self.outbound:
            self.ready = True
            self.owner.register(self)
            return
        if not self.owner.admit(self):
            transport.abort()  # type: ignore[attr-defined]
            return
        self.owner.register(self)
        if self.owner.tls is not None and self.owner.tls.server is not None:
            transport.pause_reading()  # type: ignore[attr-defined]   # the handshake reads first
            self._handshake = asyncio.ensure_future(self._start_tls(self.owner.tls.server))
        else:
            self.ready = True

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        raw = self.transport
        assert raw is not None
        try:
            secure = await asyncio.get_running_loop().start_tls(
                raw, self, context, server_side=True, ssl_handshake_timeout=self.owner.limits.message_timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.owner.counters["tls_handshake"] += 1
            self.owner.refused(self.addr[0], f"TLS handshake failed: {type(exc).__name__}")
            raw.abort()
            self.owner.forget(self)       # the TLS layer tells no connection_lost before its handshake
            return
        if secure is None:
            raw.abort()
            self.owner.forget(self)
            return
        self.transport = secure  # type: ignore[assignment]
        self.ready = True

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            frames = self.framer.feed(data)
        except FramingError as exc:
            self.owner.counters["stream_malformed"] += 1
            self.owner.refused(self.addr[0], f"closed: {exc}")
            self.close()
            return
        now = time.monotonic()
        for frame in frames:
            if frame == PING:
                self.write(PONG)
            elif frame == PONG:
                self.pongs += 1
                self.ping_sent = None
            else:
                self.messages += 1
                self.last_message = now
                self.owner.deliver(frame, self.addr, self)
                if self.transport is None or self.transport.is_closing():
                    return
        self.started = (self.started or now) if self.framer.partial else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake is not None and not self._handshake.done():
            self._handshake.cancel()
        self.owner.forget(self)

    # ours ------------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.ready and self.transport is not None and not self.transport.is_closing()

    def write(self, data: bytes) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(data)
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.owner.counters["stream_write_stalled"] += 1
            self.owner.refused(self.addr[0], "closed: it does not read what is sent to it")
            transport.abort()
        return True

    def ping(self, now: float) -> None:
        self.last_ping = now
        if self.ping_sent is None:
            self.ping_sent = now
        self.framer.awaiting_pong = True
        self.write(PING)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def check(self, now: float) -> None:
        """The limits and the keep-alive, once a second (see the module docstring)."""
        limits = self.owner.limits
        if not self.ready and now - self.opened > limits.message_timeout:
            self._timed_out("the TLS handshake")
        elif self.started is not None and now - self.started > limits.message_timeout:
            self._timed_out("a message")
        elif not self.outbound and self.messages == 0 and now - self.opened > limits.message_timeout:
            self._timed_out("the first message")
        elif not self.outbound and now - self.last_message > limits.idle_timeout:
            self.owner.counters["idle_closed"] += 1
            self.close()
        elif self.outbound and limits.keepalive:
            if self.ping_sent is not None and self.pongs and now - self.ping_sent > PONG_TIMEOUT:
                self.owner.counters["flow_failed"] += 1
                log.warning("SIP: no pong from %s within %.0f s: the %s connection is dead, closing it",
                            hostport(*self.addr), PONG_TIMEOUT, self.owner.name)
                self.close()
            elif now - self.last_ping >= limits.keepalive:
                self.ping(now)

    def _timed_out(self, what: str) -> None:
        self.owner.counters["message_timeout"] += 1
        self.owner.refused(self.addr[0], f"closed: {what} did not arrive within "
                                         f"{self.owner.limits.message_timeout:g} s")
        self.close()


class StreamTransport:
    """SIP over TCP (or TLS, given `tls`): a listener and the connections, both ways."""

    reliable = True

    def __init__(self, on_message: Callable[[bytes, Addr], None], limits: SipConnections, *,
                 tls: TlsContexts | None = None, trace: bool = False, hep: HepConfig | None = None,
                 counters: collections.Counter[str] | None = None,
                 trusted: Callable[[str], bool] = lambda host: False, source_host: str = "") -> None:
        self.on_message = on_message
        self.limits = limits
        self.tls = tls
        self.name = "TLS" if tls is not None else "TCP"
        self.tap = Tap(self.name, trace, hep)
        self.counters: collections.Counter[str] = counters if counters is not None else collections.Counter()
        self.trusted = trusted
        self.on_closed: Callable[[Addr], None] | None = None     # a connection the bridge opened closed
        self.on_failed: Callable[[Addr], None] | None = None     # a connection could not be opened
        self.local: Addr = ("", 0)
        self.family = socket.AF_INET
        self.send_errors = 0
        self.connections: dict[Addr, Connection] = {}
        self._all: set[Connection] = set()
        self._untrusted: collections.Counter[str] = collections.Counter()
        self._pending: dict[Addr, list[bytes]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._listener: socket.socket | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task | None = None
        self._bind_host = ""
        self.source_host = source_host          # our Contact's address: where a wildcard listener's connections come from
        self._logged: dict[str, float] = {}
        self.closed = False

    @property
    def open_connections(self) -> int:
        return len(self._all)

    async def open(self, host: str, port: int) -> None:
        """Listen on host:port (TLS: only with a certificate; without, the port is held for the
        connections the bridge opens from it)."""
        self._bind_host = host
        self.family = inet.family(host)
        sock = inet.stream_socket(host, port, reuse_port=True)
        self._listener = sock
        self.local = inet.peer(sock.getsockname())
        if self.tls is None or self.tls.server is not None:
            sock.listen(BACKLOG)
            self._server = await asyncio.get_running_loop().create_server(
                lambda: Connection(self, outbound=False), sock=sock)
        self._sweeper = asyncio.ensure_future(self._sweep())
        await self.tap.open()

    @property
    def listening(self) -> bool:
        return self._server is not None

    # the limits --------------------------------------------------------------------------

    def admit(self, conn: Connection) -> bool:
        host = conn.addr[0]
        if self.closed:
            return False
        if not self.trusted(host):
            reason = ""
            if sum(self._untrusted.values()) >= self.limits.max:
                reason = f"sip.connections.max ({self.limits.max})"
            elif self._untrusted[host] >= self.limits.per_address:
                reason = f"sip.connections.per_address ({self.limits.per_address})"
            if reason:
                self.counters["connections_refused"] += 1
                self.refused(host, f"connection refused: {reason} reached")
                return False
            self._untrusted[host] += 1
            conn.untrusted = True
        return True

    def register(self, conn: Connection) -> None:
        self._all.add(conn)
        if conn.addr not in self.connections or not self.connections[conn.addr].open:
            self.connections[conn.addr] = conn

    def forget(self, conn: Connection) -> None:
        """The connection closed: out of the table and the limits (once)."""
        if conn not in self._all:
            return
        self._all.discard(conn)
        if self.connections.get(conn.addr) is conn:
            del self.connections[conn.addr]
            for other in self._all:                     # another connection to the same peer
                if other.addr == conn.addr:
                    self.connections[conn.addr] = other
                    break
        if conn.untrusted:
            conn.untrusted = False
            self._untrusted[conn.addr[0]] -= 1
            if self._untrusted[conn.addr[0]] <= 0:
                del self._untrusted[conn.addr[0]]
        if conn.outbound and not self.closed and self.on_closed is not None:
            self.on_closed(conn.addr)

    def refused(self, host: str, what: str) -> None:
        """Log a refusal once a minute per source (a flood writes one line a minute)."""
        if self._first_in_a_minute(host):
            log.warning("SIP over %s from %s: %s (further refusals from it are not logged for 60 s)",
                        self.name, safe(host, 60), what)

    def _first_in_a_minute(self, key: str) -> bool:
        now = time.monotonic()
        if len(self._logged) > 10000:
            self._logged = {k: t for k, t in self._logged.items() if now - t < 60}
        if now - self._logged.get(key, -60.0) < 60:
            return False
        self._logged[key] = now
        return True

    async def _sweep(self) -> None:
        period = min(1.0, self.limits.message_timeout / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in list(self._all):
                conn.check(now)

    # in and out --------------------------------------------------------------------------

    def deliver(self, data: bytes, addr: Addr, conn: Connection) -> None:
        self.tap.received(data, addr, conn.local)
        self.on_message(data, addr)

    def send(self, data: bytes, addr: Addr) -> None:
        """Send on the connection to `addr`, or open one (see the module docstring); never raises."""
        if self.closed:
            return
        conn = self.connections.get(addr)
        if (conn is None or not conn.open) and data.startswith(b"SIP/2.0 ") and addr not in self._pending:
            target = response_target(data, addr, 5061 if self.tls is not None else 5060)
            if target is not None and target != addr:
                conn, addr = self.connections.get(target), target
        if conn is not None and conn.open:
            self.tap.sent(data, conn.local, addr)
            conn.write(data)
            return
        pending = self._pending.get(addr)
        if pending is not None:
            if sum(len(p) for p in pending) + len(data) > MAX_WRITE_BUFFER:
                self.send_errors += 1
                return
            pending.append(data)
            return
        self._pending[addr] = [data]
        task = asyncio.ensure_future(self._connect(addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, addr: Addr) -> None:
        try:
            conn = await asyncio.wait_for(self._open_connection(addr), self.limits.message_timeout)
        except (OSError, ssl.SSLError, ssl.CertificateError, TimeoutError, asyncio.TimeoutError) as exc:
            self._pending.pop(addr, None)
            self.send_errors += 1
            self.counters["connect_failed"] += 1
            why = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
            if isinstance(exc, ssl.SSLCertVerificationError):
                why = f"certificate not trusted: {exc.verify_message} (sip.tls.ca, sip.tls.server_name)"
            if self._first_in_a_minute(f"connect {hostport(*addr)}"):
                log.warning("SIP: cannot connect to %s over %s: %s (logged once a minute)", hostport(*addr),
                            self.name, safe(str(why), 200))
            if self.on_failed is not None and not self.closed:
                self.on_failed(addr)
            return
        for data in self._pending.pop(addr, []):
            self.tap.sent(data, conn.local, addr)
            conn.write(data)

    async def _open_connection(self, addr: Addr) -> Connection:
        """A new connection to `addr`, from our own address and port where the system allows it."""
        loop = asyncio.get_running_loop()
        family = inet.family(addr[0])
        sock = None
        source = self._source(family)
        if source is not None:
            try:
                sock = inet.stream_socket(source, self.local[1], reuse_port=True)
                await loop.sock_connect(sock, addr)
            except OSError:
                if sock is not None:
                    sock.close()
                sock = None                             # a TIME_WAIT twin: from any port then
            except BaseException:
                if sock is not None:
                    sock.close()
                raise
        if sock is None:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, addr)
            except BaseException:
                sock.close()
                raise
        conn = Connection(self, outbound=True)
        try:
            if self.tls is not None:
                await loop.create_connection(lambda: conn, sock=sock, ssl=self.tls.client,
                                             server_hostname=self.tls.server_name,
                                             ssl_handshake_timeout=self.limits.message_timeout)
            else:
                await loop.create_connection(lambda: conn, sock=sock)
        except BaseException:
            sock.close()
            raise
        return conn

    def _source(self, family: int) -> str | None:
        """The address connections the bridge opens are bound to: the listener's, or on a wildcard
        listener our Contact's (None: any, when neither fits the destination's family)."""
        host = self._bind_host if self._bind_host not in inet.ANY else self.source_host
        if not host or host in inet.ANY or inet.family(host) != family:
            return None
        return host

    def ping(self, addr: Addr) -> bool:
        """A CRLF keep-alive on the connection to `addr` now; False if there is none."""
        conn = self.connections.get(addr)
        if conn is None or not conn.open:
            return False
        conn.ping(time.monotonic())
        return True

    def close(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in list(self._all):
            conn.close()
        self.tap.close()
