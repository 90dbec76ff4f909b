"""The timers of SIP transactions: RFC 3261's T1, T2 and T4 (`Timers`), and one named timer of a
transaction (A to M), re-armed or cancelled as its state machine says."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable


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
