"""SIP server transactions (RFC 3261 17.2): INVITE (with RFC 6026's Accepted state; the 2xx is
resent until its ACK) and non-INVITE; `bridge.sip.transaction` has their states and timers, and
the layer that holds them."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .message import SipMessage
from .timers import _Timer

if TYPE_CHECKING:
    from .transaction import TransactionLayer

Addr = tuple[str, int]


class ServerTransaction:
    """Shared by both server machines: where responses go and the last one sent."""

    def __init__(self, layer: "TransactionLayer", request: SipMessage, addr: Addr) -> None:
        self.layer, self.request, self.addr = layer, request, addr
        self.key = layer.server_key(request)
        self.last: bytes | None = None
        self.code = 0
        self.state = ""
        self.timers = layer.timers
        self.reliable = layer.transport.reliable

    def _send(self, data: bytes) -> None:
        self.layer.transport.send(data, self.addr)

    def respond(self, data: bytes, code: int) -> None:
        raise NotImplementedError

    def retransmission(self) -> None:
        """The request arrived again: resend the last response (if any)."""
        if self.last is not None:
            self._send(self.last)

    def terminate(self) -> None:
        self.state = "terminated"
        for timer in self._timers():
            timer.close()
        self.layer._forget_server(self)

    def _timers(self) -> list[_Timer]:
        return []


class InviteServerTransaction(ServerTransaction):
    """RFC 3261 17.2.1 with RFC 6026's Accepted state; the 2xx is resent here until the ACK."""

    def __init__(self, layer: "TransactionLayer", request: SipMessage, addr: Addr) -> None:
        super().__init__(layer, request, addr)
        self.state = "proceeding"
        self._interval = self.timers.t1
        self.timer_g = _Timer(self._on_g)
        self.timer_h = _Timer(self._on_h)
        self.timer_i = _Timer(self.terminate)
        self.timer_l = _Timer(self._on_l)
        self.confirmed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.cancelled = False

    def _timers(self) -> list[_Timer]:
        return [self.timer_g, self.timer_h, self.timer_i, self.timer_l]

    def respond(self, data: bytes, code: int) -> None:
        if self.state != "proceeding":
            return                                 # one final response per transaction
        self.last, self.code = data, code
        self._send(data)
        if code < 200:
            return
        if code < 300:
            self.state = "accepted"
        else:
            self.state = "completed"
        if not self.reliable:
            self.timer_g.start(self._interval)
        (self.timer_l if code < 300 else self.timer_h).start(self.timers.long)

    def _on_g(self) -> None:
        if self.state in ("completed", "accepted") and self.last is not None:
            self._send(self.last)
            self._interval = min(self._interval * 2, self.timers.t2)
            self.timer_g.start(self._interval)

    def _on_h(self) -> None:
        if self.state == "completed":              # no ACK for our failure response
            self._confirm(False)
            self.terminate()

    def _on_l(self) -> None:
        self._confirm(False)                        # 64*T1 after a 2xx without its ACK
        self.terminate()

    def _confirm(self, acked: bool) -> None:
        if not self.confirmed.done():
            self.confirmed.set_result(acked)

    def ack(self) -> None:
        """An ACK: for a non-2xx (same branch) or, via the dialog, for our 2xx."""
        if self.state == "completed":
            self.state = "confirmed"
            self.timer_g.cancel()
            self.timer_h.cancel()
            self._confirm(True)
            if self.reliable:
                self.terminate()
            else:
                self.timer_i.start(self.timers.t4)
        elif self.state == "accepted":
            self.timer_g.cancel()                   # stay Accepted until L: absorb INVITE copies
            self._confirm(True)

    def retransmission(self) -> None:
        if self.state in ("proceeding", "completed") or (self.state == "accepted" and not self.confirmed.done()):
            super().retransmission()


class NonInviteServerTransaction(ServerTransaction):
    """RFC 3261 17.2.2."""

    def __init__(self, layer: "TransactionLayer", request: SipMessage, addr: Addr) -> None:
        super().__init__(layer, request, addr)
        self.state = "trying"
        self.timer_j = _Timer(self.terminate)

    def _timers(self) -> list[_Timer]:
        return [self.timer_j]

    def respond(self, data: bytes, code: int) -> None:
        if self.state not in ("trying", "proceeding"):
            return
        self.last, self.code = data, code
        self._send(data)
        if code < 200:
            self.state = "proceeding"
            return
        self.state = "completed"
        if self.reliable:
            self.terminate()
        else:
            self.timer_j.start(self.timers.long)
