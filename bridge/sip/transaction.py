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

The machines are `bridge.sip.clienttransaction` and `bridge.sip.servertransaction`, their timers
`bridge.sip.timers`; this module holds the layer that creates and matches them.
"""

from __future__ import annotations

import logging
from typing import Protocol

from .clienttransaction import ClientTransaction, InviteClientTransaction, NonInviteClientTransaction
from .message import Request, SipMessage
from .servertransaction import InviteServerTransaction, NonInviteServerTransaction, ServerTransaction
from .timers import Timers

log = logging.getLogger("bridge.sip")

Addr = tuple[str, int]


class Transport(Protocol):
    reliable: bool

    def send(self, data: bytes, addr: Addr) -> None: ...


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
