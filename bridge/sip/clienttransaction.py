"""SIP client transactions (RFC 3261 17.1): INVITE (with RFC 6026's Accepted state) and
non-INVITE; `bridge.sip.transaction` has their states and timers, and the layer that holds them."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .message import Request, SipMessage
from .timers import _Timer

if TYPE_CHECKING:
    from .transaction import TransactionLayer

Addr = tuple[str, int]


class ClientTransaction:
    """Shared by both client machines: sending, the response queue, termination."""

    def __init__(self, layer: "TransactionLayer", request: Request, dest: Addr) -> None:
        self.layer, self.request, self.dest = layer, request, dest
        self.key = (request.branch, request.method)
        self.data = request.render()
        self.state = ""
        self.final: SipMessage | None = None
        self._responses: asyncio.Queue[SipMessage | None] = asyncio.Queue()
        self.timers = layer.timers
        self.reliable = layer.transport.reliable

    def _send(self) -> None:
        self.layer.transport.send(self.data, self.dest)

    def _deliver(self, msg: SipMessage | None) -> None:
        self._responses.put_nowait(msg)

    async def next(self) -> SipMessage | None:
        """The next response for the transaction user; None when the transaction timed out or
        ended (Timer M ends the wait for more 2xx)."""
        return await self._responses.get()

    @property
    def provisional(self) -> bool:
        return self.state == "proceeding"

    def receive(self, msg: SipMessage) -> None:
        raise NotImplementedError

    def terminate(self) -> None:
        ended = self.state != "terminated"
        self.state = "terminated"
        for timer in self._timers():
            timer.close()
        self.layer._forget_client(self)
        if ended:
            self._deliver(None)         # whoever still waits for a response learns it is over

    def _timers(self) -> list[_Timer]:
        return []


class InviteClientTransaction(ClientTransaction):
    """RFC 3261 17.1.1 with RFC 6026's Accepted state (every 2xx reaches the user)."""

    def __init__(self, layer: "TransactionLayer", request: Request, dest: Addr) -> None:
        super().__init__(layer, request, dest)
        self._interval = self.timers.t1
        self.timer_a = _Timer(self._on_a)
        self.timer_b = _Timer(self._on_b)
        self.timer_d = _Timer(self.terminate)
        self.timer_m = _Timer(self.terminate)
        self.ack: bytes | None = None
        self.state = "calling"
        self._send()
        if not self.reliable:
            self.timer_a.start(self._interval)
        self.timer_b.start(self.timers.long)

    def _timers(self) -> list[_Timer]:
        return [self.timer_a, self.timer_b, self.timer_d, self.timer_m]

    def _on_a(self) -> None:
        if self.state == "calling":
            self._send()
            self._interval *= 2
            self.timer_a.start(self._interval)

    def _on_b(self) -> None:
        if self.state == "calling":               # Timer B runs in Calling only (17.1.1.2)
            self.terminate()                      # next() gives None

    def receive(self, msg: SipMessage) -> None:
        code = msg.code
        if self.state in ("calling", "proceeding"):
            self.timer_a.cancel()
            self.timer_b.cancel()
            if code < 200:
                self.state = "proceeding"
            elif code < 300:
                self.state = "accepted"
                self.final = msg
                self.timer_m.start(self.timers.long)
            else:
                self.state = "completed"
                self.final = msg
                self._send_ack(msg)
                if not self.reliable:
                    self.timer_d.start(max(32.0, self.timers.long / 2))
            self._deliver(msg)
            if self.state == "completed" and self.reliable:
                self.terminate()                    # after the final: its end comes behind it
        elif self.state == "completed" and code >= 300:
            if self.ack is not None:
                self.layer.transport.send(self.ack, self.dest)    # a retransmitted final
        elif self.state == "accepted" and 200 <= code < 300:
            self._deliver(msg)                    # a retransmission or another fork's 2xx

    def _send_ack(self, msg: SipMessage) -> None:
        """ACK for a non-2xx final: same branch, Request-URI, Route and credentials (17.1.1.3)."""
        r = self.request
        ack = Request("ACK", r.uri, r.via, r.from_, msg.first("To") or r.to, r.call_id, r.cseq, r.routes,
                      r.credentials())
        self.ack = ack.render()
        self.layer.transport.send(self.ack, self.dest)


class NonInviteClientTransaction(ClientTransaction):
    """RFC 3261 17.1.2; `timeout` may shorten Timer F (a registration probe need not wait 32 s)."""

    def __init__(self, layer: "TransactionLayer", request: Request, dest: Addr,
                 timeout: float | None = None) -> None:
        super().__init__(layer, request, dest)
        self._interval = self.timers.t1
        self.timer_e = _Timer(self._on_e)
        self.timer_f = _Timer(self._on_f)
        self.timer_k = _Timer(self.terminate)
        self.state = "trying"
        self._send()
        if not self.reliable:
            self.timer_e.start(self._interval)
        self.timer_f.start(min(timeout, self.timers.long) if timeout else self.timers.long)

    def _timers(self) -> list[_Timer]:
        return [self.timer_e, self.timer_f, self.timer_k]

    def _on_e(self) -> None:
        if self.state in ("trying", "proceeding"):
            self._send()
            self._interval = self.timers.t2 if self.state == "proceeding" else min(self._interval * 2, self.timers.t2)
            self.timer_e.start(self._interval)

    def _on_f(self) -> None:
        if self.state in ("trying", "proceeding"):
            self.terminate()                        # next() gives None

    def receive(self, msg: SipMessage) -> None:
        if self.state not in ("trying", "proceeding"):
            return                                  # Completed absorbs retransmitted finals
        if msg.code < 200:
            self.state = "proceeding"
            self._deliver(msg)
            return
        self.state = "completed"
        self.final = msg
        self.timer_e.cancel()
        self.timer_f.cancel()
        self._deliver(msg)
        if self.reliable:
            self.terminate()                        # after the final: its end comes behind it
        else:
            self.timer_k.start(self.timers.t4)
