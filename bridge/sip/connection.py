"""One SIP connection over TCP or TLS: framing, keep-alive, limits (`bridge.sip.stream` says which)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING

from .. import inet
from .framing import PING, PONG, Framer, FramingError
from .uri import hostport

if TYPE_CHECKING:
    from .stream import StreamTransport

log = logging.getLogger("bridge.sip")

Addr = tuple[str, int]
PONG_TIMEOUT = 10.0
MAX_WRITE_BUFFER = 256 * 1024


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
        """The limits and the keep-alive, once a second (see `bridge.sip.stream`)."""
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
