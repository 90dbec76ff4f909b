"""One call of the run: what it recorded at both ends, and the SDK delegate that fills it in."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ..audio import RATE
from ..sdk import CallDelegate
from ..sip import IncomingCall
from .program import Sender


@dataclass
class CallRecord:
    """What one call recorded: its times and state, its codecs, what each end received."""

    index: int
    user: str
    app_sender: Sender
    far_sender: Sender
    t_start: float = 0.0                  # makeCall issued
    t_made: float | None = None           # makeCall returned
    t_wait_connected: float | None = None
    t_connected: float | None = None
    t_invite: float | None = None         # INVITE at the far end
    t_far_answered: float | None = None   # far end's 200 OK acknowledged
    t_end: float | None = None
    state: str = "waiting"                # waiting, calling, connected, done, failed
    failure: str | None = None
    disconnect: str | None = None
    codec: str = ""                       # the SIP leg's (at the far end)
    app_codec: str = ""                   # the app leg's
    app_rate: int = RATE                  # sample rate of the app leg's decoded frames (Opus 48k, G.711 8k)
    # received at the far end (app -> SIP): per RTP packet (arrival, seq, ts, payload)
    far_packets: list = field(default_factory=list)
    far_stats: dict = field(default_factory=dict)
    # received at the app side (SIP -> app): per RTP packet (arrival, seq, ts) and decoded frames
    app_packets: list = field(default_factory=list)
    app_frames: list = field(default_factory=list)     # (pts, samples48)
    app_raw: list = field(default_factory=list)        # G.711: (arrival, seq, ts, payload), not decoded
    app_stats: dict = field(default_factory=dict)
    hooked: bool = False
    sip: IncomingCall | None = None
    far_answered: asyncio.Event = field(default_factory=asyncio.Event)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def t0(self) -> float | None:
        return self.app_sender.t0


class _Delegate(CallDelegate):
    def __init__(self, rec: CallRecord, loop: asyncio.AbstractEventLoop) -> None:
        self.rec, self.loop = rec, loop

    def evt_wait_connected(self) -> None:
        if self.rec.t_wait_connected is None:
            self.rec.t_wait_connected = self.loop.time()

    def evt_connected(self) -> None:
        self.rec.t_connected = self.loop.time()
        self.rec.connected.set()

    def evt_disconnected(self, param) -> None:
        self.rec.disconnect = f"{param.reason.name} ({int(param.reason)}) by {param.source.value}"
        self.rec.ended.set()
