"""What an RTP endpoint counts: its statistics, and RFC 3550 loss and jitter of what it receives."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RtpStats:
    """Counters for metrics. Bytes are RTP payload octets (as in RTCP sender reports)."""

    packets_sent: int = 0
    bytes_sent: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    lost: int = 0          # RFC 3550 cumulative lost (expected - received), never negative
    late: int = 0
    duplicates: int = 0
    concealed: int = 0
    dropped: int = 0       # 20 ms frames dropped by the jitter buffer (drift/overflow)
    inserted: int = 0      # 20 ms frames inserted by the jitter buffer (underrun/drift)
    malformed: int = 0
    ignored: int = 0       # unknown payload type, unknown event, RTCP
    foreign: int = 0       # from a source other than the latched one (or one the policy refuses)
    srtp_failed: int = 0   # SRTP packets that did not authenticate (or were replays): dropped
    dtmf_sent: int = 0
    dtmf_received: int = 0
    jitter_ms: float = 0.0  # RFC 3550 interarrival jitter


class ReceiveCounter:
    """RFC 3550 A.3/A.8 loss and interarrival jitter over all packets of one SSRC, written into
    `stats` (`lost`, `jitter_ms`) as each packet arrives.

    Unlike the RFC's plain count, duplicates (of the newest `WINDOW` sequence numbers) are not
    counted as received, so they cannot hide losses. Those are one bit each in `_window` (bit k:
    the newest but k arrived), so a packet in line costs a shift, not a set.
    """

    WINDOW = 128
    _MASK = (1 << WINDOW) - 1

    def __init__(self, clock_rate: int, stats: RtpStats) -> None:
        self.clock_rate = clock_rate
        self.stats = stats
        self.ssrc: int | None = None
        self.lost_before = 0
        self.jitter = 0.0
        self._window = 0
        self._next = -1           # the sequence number of the next packet in line

    def update(self, seq: int, timestamp: int, ssrc: int, arrival: float) -> None:
        if seq == self._next and ssrc == self.ssrc:     # the next in line: no loss changes
            self._next = (seq + 1) & 0xFFFF
            self.ext_max += 1
            self._window = ((self._window << 1) | 1) & self._MASK
            self.received += 1
            self._jitter(arrival * self.clock_rate - timestamp)
            return
        if ssrc != self.ssrc:
            if self.ssrc is not None:
                self.lost_before += self.lost_now
            self.ssrc = ssrc
            self.base = self.ext_max = seq
            self.received = 0
            self.transit: float | None = None
            self._window = 1
        else:
            ext = self.ext_max + ((seq - self.ext_max + 0x8000) & 0xFFFF) - 0x8000
            ahead = ext - self.ext_max
            if ahead > 0:
                self.ext_max = ext
                self._window = ((self._window << ahead) | 1) & self._MASK
            elif -ahead < self.WINDOW:
                bit = 1 << -ahead
                if self._window & bit:
                    return                     # a duplicate
                self._window |= bit
        self._next = (self.ext_max + 1) & 0xFFFF
        self.received += 1
        self._jitter(arrival * self.clock_rate - timestamp)
        self.stats.lost = self.lost_before + self.lost_now

    def _jitter(self, transit: float) -> None:
        if self.transit is not None:
            d = abs(transit - self.transit)
            if d < self.clock_rate:  # ignore timestamp jumps
                self.jitter += (d - self.jitter) / 16
                self.stats.jitter_ms = self.jitter * 1000 / self.clock_rate
        self.transit = transit

    @property
    def lost_now(self) -> int:
        if self.ssrc is None:
            return 0
        return max(0, self.ext_max - self.base + 1 - self.received)
