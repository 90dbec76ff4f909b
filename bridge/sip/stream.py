"""SIP over TCP and TLS (RFC 3261 section 18, RFC 5626 keep-alive): connections, framing, limits.

Here: the listener, the connections by peer address and their reuse, the limits, TLS. One
connection (its framing, keep-alive pings and timeouts) is `connection.Connection`; the framing
(RFC 3261 18.3) is `framing.Framer`'s, and a connection that breaks it is closed.

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
from .connection import MAX_WRITE_BUFFER, Connection
from .transport import Tap
from .uri import hostport

log = logging.getLogger("bridge.sip")

Addr = tuple[str, int]
BACKLOG = 128
_VIA = re.compile(rb"^(?:via|v)[ \t]*:[ \t]*SIP/2\.0/[A-Za-z]+[ \t]+([^;,\s]+)", re.IGNORECASE | re.MULTILINE)


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
