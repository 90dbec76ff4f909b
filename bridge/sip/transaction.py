"""SIP transactions: the four state machines of RFC 3261 section 17, with RFC 6026's fixes.

| machine | states | timers (unreliable transport; reliable: no retransmission, D/I/J/K = 0) |
|---|---|---|
| INVITE client | Calling -> Proceeding -> Completed / Accepted -> Terminated | A (retransmit, T1 doubling), B (64*T1, Calling only), D (32 s), M (64*T1) |
| non-INVITE client | Trying -> Proceeding -> Completed -> Terminated | E (T1 doubling to T2; T2 in Proceeding), F (64*T1), K (T4) |
| INVITE server | Proceeding -> Completed -> Confirmed / Accepted -> Terminated | G (T1 doubling to T2), H (64*T1), I (T4), L (64*T1); 2xx resent until ACK |
| non-INVITE server | Trying -> Proceeding -> Completed -> Terminated | J (64*T1) |

What the transaction user sees: a client transaction hands every response it does not absorb to
`next()` (None once when Timer B/F fires); an INVITE server transaction stays in Proceeding,
with no timer, for as long as the user takes to answer (a CANCEL finds it after minutes of
ringing), and its `confirmed` future says whether the final response was acknowledged.
Matching follows 17.1.3 and 17.2.3: client transactions by branch and CSeq method (and the
response must come from where the request went), server transactions by branch, sent-by and
method (ACK to a non-2xx matches its INVITE). The layer holds at most `max_server` server
transactions; beyond that the user answers statelessly (and a flood cannot grow memory).
Over TCP and TLS (`transport.reliable`) nothing is retransmitted (no Timers A, E, G) and
D, I, J, K are 0, as the table says; a connection that cannot be opened ends the client
transactions that wait on it at once (`transport_failed`, RFC 3261 8.1.3.1), as a timeout would.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable, Protocol

from .message import Request, SipMessage

log = logging.getLogger("bridge.sip")

Addr = tuple[str, int]


@dataclass(frozen=True)
class Timers:
    """RFC 3261's T1 (RTT estimate), T2 (longest non-INVITE retransmit), T4 (network lifetime)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @property
    def long(self) -> float:
        """64*T1: Timers B, F, H, J, L, M."""
        return 64 * self.t1


class Transport(Protocol):
    reliable: bool

    def send(self, data: bytes, addr: Addr) -> None: ...


class _Timer:
    """One named timer of a transaction; re-armed or cancelled as the state machine says."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.handle: asyncio.TimerHandle | None = None

    def start(self, delay: float) -> None:
        self.cancel()
        self.handle = asyncio.get_running_loop().call_later(delay, self.callback)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def close(self) -> None:
        """Cancel for good. The callback, a method of the transaction, goes too: kept, it would
        hold the transaction (and its message) in a reference cycle until a full collection."""
        self.cancel()
        self.callback = _ended


def _ended() -> None:
    """A closed timer's callback."""


# --- client transactions ------------------------------------------------------------------

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


# --- server transactions ------------------------------------------------------------------

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


# --- the layer ----------------------------------------------------------------------------

class TransactionLayer:
    """All transactions of one user agent, matched per RFC 3261 17.1.3 / 17.2.3."""

    def __init__(self, transport: Transport, timers: Timers = Timers(), max_server: int = 5000) -> None:
        self.transport = transport
        self.timers = timers
        self.max_server = max_server
        self.client: dict[tuple[str, str], ClientTransaction] = {}
        self.server: dict[tuple[str, str, str], ServerTransaction] = {}

    # client side
    def invite(self, request: Request, dest: Addr) -> InviteClientTransaction:
        tx = InviteClientTransaction(self, request, dest)
        self.client[tx.key] = tx
        return tx

    def request(self, request: Request, dest: Addr, timeout: float | None = None) -> NonInviteClientTransaction:
        tx = NonInviteClientTransaction(self, request, dest, timeout)
        self.client[tx.key] = tx
        return tx

    def on_response(self, msg: SipMessage, source: Addr) -> ClientTransaction | None:
        """Give a response to its transaction; None if none matches (or it came from elsewhere)."""
        tx = self.client.get((msg.branch, msg.cseq[1]))
        if tx is None or tx.dest[0] != source[0]:
            return None
        tx.receive(msg)
        return tx

    def transport_failed(self, dest: Addr) -> None:
        """The request to `dest` never left (no connection): its transactions end as if timed out."""
        for tx in list(self.client.values()):
            if tx.dest == dest and tx.state in ("calling", "trying"):
                tx.terminate()                      # next() gives None

    def _forget_client(self, tx: ClientTransaction) -> None:
        if self.client.get(tx.key) is tx:
            del self.client[tx.key]

    # server side
    @staticmethod
    def server_key(msg: SipMessage, method: str | None = None) -> tuple[str, str, str]:
        m = method or msg.method
        return msg.branch, msg.sent_by, "INVITE" if m == "ACK" else m

    def find_server(self, msg: SipMessage, method: str | None = None) -> ServerTransaction | None:
        return self.server.get(self.server_key(msg, method))

    @property
    def full(self) -> bool:
        return len(self.server) >= self.max_server

    def new_server(self, msg: SipMessage, addr: Addr) -> ServerTransaction:
        cls = InviteServerTransaction if msg.method == "INVITE" else NonInviteServerTransaction
        tx = cls(self, msg, addr)
        self.server[tx.key] = tx
        return tx

    def _forget_server(self, tx: ServerTransaction) -> None:
        if self.server.get(tx.key) is tx:
            del self.server[tx.key]

    def close(self) -> None:
        for tx in list(self.client.values()):
            tx.terminate()
        for stx in list(self.server.values()):
            stx.terminate()
