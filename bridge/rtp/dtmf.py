"""DTMF on an RTP endpoint: digits sent and received as RFC 4733 telephone-events."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable

from .events import TelephoneEvent, event_code
from .packet import RtpParseError
from .stats import RtpStats

logger = logging.getLogger("bridge.rtp.endpoint")   # the endpoint's, as its log lines always said


@dataclass
class _OutEvent:
    code: int
    duration: int  # timestamp units
    volume: int


class Dtmf:
    """Telephone-events of an `RtpEndpoint` (a part of it): digits from `send_dtmf` go out in
    place of audio frames, each digit received is reported once to `on_dtmf` or `dtmf_queue`."""

    # of the endpoint
    dtmf_payload_type: int | None
    stats: RtpStats
    _marker: bool
    _send: Callable[[int, int, bytes, bool], None]

    def __init__(self, on_dtmf: Callable[[str], None] | None, dtmf_gap_frames: int) -> None:
        self.on_dtmf = on_dtmf
        # Received digits when no callback is set; bounded, oldest dropped.
        self.dtmf_queue: asyncio.Queue[str] = asyncio.Queue(maxsize=64)
        self.dtmf_gap_frames = dtmf_gap_frames
        self._dtmf_out: deque[_OutEvent] = deque()
        self._event: _OutEvent | None = None
        self._event_ts = 0
        self._event_elapsed = 0
        self._gap = 0
        # received-event de-duplication: (ssrc, timestamp, event) of recent events
        self._events_seen: set[tuple[int, int, int]] = set()
        self._events_order: deque[tuple[int, int, int]] = deque()

    # -- sending --------------------------------------------------------------------------------

    def send_dtmf(self, digits: str, duration_ms: int = 100, volume: int = 10) -> None:
        """Queue RFC 4733 events; they replace audio on the following write_frame ticks."""
        if self.dtmf_payload_type is None:
            raise RuntimeError("telephone-event was not negotiated")
        if not 40 <= duration_ms <= 8000:
            raise ValueError("duration_ms must be 40..8000")
        codes = [event_code(d) for d in digits]
        for code in codes:
            self._dtmf_out.append(_OutEvent(code, duration_ms * 8, volume))

    @property
    def dtmf_pending(self) -> bool:
        return self._event is not None or bool(self._dtmf_out)

    def _send_event_tick(self, ts: int, units: int) -> None:
        assert self.dtmf_payload_type is not None
        marker = False
        if self._event is None:
            self._event = self._dtmf_out.popleft()
            self._event_ts = ts
            self._event_elapsed = 0
            marker = True
        ev = self._event
        self._event_elapsed += units
        done = self._event_elapsed >= ev.duration
        payload = TelephoneEvent(ev.code, done, ev.volume, self._event_elapsed).serialize()
        for _ in range(3 if done else 1):  # the end packet is sent three times
            self._send(self.dtmf_payload_type, self._event_ts, payload, marker)
            marker = False
        if done:
            self._event = None
            self._gap = self.dtmf_gap_frames
            self._marker = True
            self.stats.dtmf_sent += 1

    # -- receiving ------------------------------------------------------------------------------

    def _event_received(self, ssrc: int, timestamp: int, payload: bytes) -> None:
        try:
            event = TelephoneEvent.parse(payload)
        except RtpParseError:
            self.stats.malformed += 1
            return
        char = event.char
        if char is None:
            self.stats.ignored += 1
            return
        key = (ssrc, timestamp, event.event)
        if key in self._events_seen:
            return  # update or end retransmission of an event already reported
        self._events_seen.add(key)
        self._events_order.append(key)
        if len(self._events_order) > 32:
            self._events_seen.discard(self._events_order.popleft())
        self.stats.dtmf_received += 1
        self.deliver_dtmf(char)

    def deliver_dtmf(self, char: str) -> None:
        """A received digit (from RFC 4733 here, or SIP INFO) to `on_dtmf` or `dtmf_queue`."""
        if self.on_dtmf is not None:
            try:
                self.on_dtmf(char)
            except Exception:
                logger.exception("on_dtmf callback failed")
            return
        if self.dtmf_queue.full():
            self.dtmf_queue.get_nowait()
        self.dtmf_queue.put_nowait(char)
