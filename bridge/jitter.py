"""Pull-based audio jitter buffer for one RTP stream (20 ms playout frames).

Packets are placed by RTP timestamp (extended past the 32-bit wrap) and de-duplicated by
sequence number (extended past the 16-bit wrap).  The consumer calls :meth:`JitterBuffer.get`
on its own 20 ms clock and always receives exactly ``frame_samples`` samples. Positions are
kept in RTP timestamp units; the decoded audio may hold more samples per unit than one (G.722:
16 kHz audio on an 8000 Hz RTP clock, two samples per unit; G.711: one):

* the first packet primes playout ``target_ms`` behind it;
* a missing frame with later audio buffered is concealed (last frame repeated with a fade,
  then silence) and playout moves on; packets that arrive after their playout time are late;
* an empty buffer (remote clock slower, jitter spike, silence suppression) holds playout
  still and conceals until ``target_ms`` is buffered again (20 ms inserted per held frame);
  if the held frames turn out to be lost when audio resumes, that delay is given back;
* when at least one spare frame stayed buffered for a whole ``window`` of frames (remote
  clock faster, delay left over from a spike), one 20 ms frame is dropped;
* a discontinuity re-synchronises: the new audio continues right after what is still
  buffered (no gap, no pile-up, nothing of it lost). A discontinuity is a new SSRC, the return
  of an earlier one (music on hold switched back), a timestamp jump with the sequence going on,
  or a sequence jump (a restart) that the next packet confirms (RFC 3550 A.1: a lone packet
  with a wild sequence number is dropped and changes nothing). A packet of an earlier SSRC
  that is older than the last one seen from it is a straggler: it is dropped;
* never more than ``max_ms`` is buffered: an over-full buffer is cut back to the target.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from . import g711

FRAME_UNITS = 160       # 20 ms of an 8000 Hz RTP clock
_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32
MAX_DROPOUT = 3000     # packets ahead that are still the same run (RFC 3550 A.1)
MAX_MISORDER = 100     # packets behind that are still the same run
SOURCES = 4            # earlier SSRCs remembered, to tell their stragglers from their return


class _Packet(Protocol):
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes


def _signed(delta: int, modulus: int) -> int:
    """A wrapping counter's difference as the nearest signed number."""
    half = modulus >> 1
    return (delta + half) % modulus - half


def _unwrap(value: int, last_value: int, last_ext: int, modulus: int) -> int:
    """Extend a wrapping counter to an unbounded int nearest to the previous extended value."""
    return last_ext + _signed(value - last_value, modulus)


@dataclass
class JitterStats:
    """Counters of one jitter buffer (cumulative across SSRC changes)."""

    received: int = 0      # packets accepted into the buffer
    duplicates: int = 0    # same sequence number seen again
    late: int = 0          # arrived after their playout time
    concealed: int = 0     # frames produced by loss concealment
    dropped: int = 0       # 20 ms frames dropped to shrink the delay (drift, over-full buffer)
    inserted: int = 0      # 20 ms frames inserted by holding playout (underrun, drift)
    resyncs: int = 0       # re-synchronised on the same SSRC (timestamp jump, sequence restart)
    ssrc_changes: int = 0
    frames: int = 0        # frames handed to the consumer


class JitterBuffer:
    """Reorders, de-duplicates and conceals; hands out fixed 20 ms frames on demand."""

    def __init__(
        self,
        *,
        target_ms: int = 40,
        max_ms: int = 200,
        window: int = 50,
        clock_rate: int = 8000,
        frame_units: int = FRAME_UNITS,
        decode: Callable[[bytes], np.ndarray] | None = None,
        fade_frames: int = 3,
        sample_rate: int | None = None,
    ) -> None:
        if not 0 <= target_ms < max_ms:
            raise ValueError("need 0 <= target_ms < max_ms")
        self.clock_rate = clock_rate
        self.frame = frame_units             # one frame (20 ms) in timestamp units
        self.target = clock_rate * target_ms // 1000
        self.max_depth = clock_rate * max_ms // 1000
        self.window = window
        self.fade_frames = fade_frames
        self.stats = JitterStats()
        self.ratio = 0                        # samples per timestamp unit, set by set_format
        self.set_format(decode or (lambda p: g711.decode(g711.PCMU, p)), sample_rate or clock_rate)

    def set_format(self, decode: Callable[[bytes], np.ndarray], sample_rate: int) -> None:
        """The stream's decoder and audio rate (a multiple of the clock rate); a new rate
        starts afresh (nothing buffered at the old one is kept)."""
        if sample_rate % self.clock_rate:
            raise ValueError(f"sample rate {sample_rate} is not a multiple of the RTP clock {self.clock_rate}")
        self.decode = decode
        ratio = sample_rate // self.clock_rate
        if ratio == self.ratio:
            return
        self.ratio = ratio
        self.frame_samples = self.frame * ratio
        self._silence = np.zeros(self.frame_samples, dtype=np.int16)
        # fade gains: the k-th concealed frame (from 0) ramps from 1 - k/F to 1 - (k + 1)/F.
        ramp = np.linspace(0.0, 1.0, self.frame_samples, endpoint=False)
        self._fades = [
            (1.0 - (k + ramp) / self.fade_frames).astype(np.float32) for k in range(self.fade_frames)
        ]
        self._reset(None)

    # -- state ----------------------------------------------------------------------------

    def _reset(self, ssrc: int | None) -> None:
        self.ssrc = ssrc
        self._sources: dict[int, tuple[int, int]] = {}   # earlier SSRC -> its newest (seq, ts)
        self._pending: tuple[_Packet, np.ndarray] | None = None   # a sequence jump, unconfirmed
        self._starts: list[int] = []              # sorted extended timestamps
        self._packets: dict[int, np.ndarray] = {}  # extended ts -> pcm
        self._play: int | None = None              # extended ts of the next sample to play
        self._newest_end: int | None = None        # end of the newest packet received
        self._last_ts = self._last_ts_ext = 0
        self._last_seq = self._high_seq = 0
        self._seen: set[int] = set()
        self._seen_order: deque[int] = deque()
        self._min_spare: int | None = None
        self._window_count = 0
        self._last_frame: np.ndarray | None = None
        self._lost_run = 0
        self._held = 0  # frames playout was held since the last frame actually played

    def reset(self) -> None:
        """Forget everything buffered (keeps the counters)."""
        self._reset(None)

    @property
    def primed(self) -> bool:
        return self._play is not None

    @property
    def depth_samples(self) -> int:
        """Samples buffered ahead of the playout point (gaps included)."""
        if self._play is None or self._newest_end is None:
            return 0
        return max(0, self._newest_end - self._play) * self.ratio

    def _units(self, pcm: np.ndarray) -> int:
        """Timestamp units that decoded audio spans."""
        return len(pcm) // self.ratio

    def __len__(self) -> int:
        return len(self._starts)

    # -- producer side ----------------------------------------------------------------------

    def put(self, packet: _Packet, pcm: np.ndarray | None = None) -> bool:
        """Add one audio packet; returns False when it was discarded (dup, late, straggler, or a
        sequence jump waiting for the next packet to confirm it)."""
        samples = self.decode(packet.payload) if pcm is None else pcm
        n = self._units(samples)
        if n == 0:
            return False
        if packet.ssrc != self.ssrc:
            if self._straggler(packet, n):
                self.stats.late += 1
                return False
            if self.ssrc is not None:
                self._sources.pop(packet.ssrc, None)
                self._sources[self.ssrc] = (self._last_seq, self._last_ts)
                if len(self._sources) > SOURCES:
                    del self._sources[next(iter(self._sources))]
                self.stats.ssrc_changes += 1
            self.ssrc = packet.ssrc
            return self._start(packet, samples)
        if self._play is None:
            return self._start(packet, samples)
        seq = _unwrap(packet.sequence_number, self._last_seq, self._high_seq, _SEQ_MOD)
        ts = _unwrap(packet.timestamp, self._last_ts, self._last_ts_ext, _TS_MOD)
        step = seq - self._high_seq
        in_step = abs(ts - self._last_ts_ext - step * n) <= self.max_depth
        if not -MAX_MISORDER <= step < MAX_DROPOUT:
            return self._sequence_jump(packet, samples)
        if not in_step:
            if step > 0:         # a timestamp jump while the sequence goes on
                self.stats.resyncs += 1
                return self._start(packet, samples)
            return self._sequence_jump(packet, samples)   # an older number, a foreign timestamp
        self._pending = None
        if seq in self._seen:
            self.stats.duplicates += 1
            return False
        end = ts + n
        if end - self._play > self.max_depth and step > 0:
            self.stats.resyncs += 1   # after a long loss: carry on right after what is buffered
            return self._start(packet, samples)
        if end <= self._play or end - self._play > self.max_depth:
            self.stats.late += 1  # too late, or a stray far from the stream
            self._remember(seq)
            return False
        if ts in self._packets:
            self.stats.duplicates += 1
            return False
        if seq > self._high_seq:
            self._high_seq, self._last_seq = seq, packet.sequence_number
            self._last_ts, self._last_ts_ext = packet.timestamp, ts
        return self._insert(seq, ts, samples)

    def _straggler(self, packet: _Packet, n: int) -> bool:
        """A late packet of an earlier SSRC: not newer than the last one seen from it, and its
        timestamp in step with that one (else the source came back, or restarted)."""
        last = self._sources.get(packet.ssrc)
        if last is None:
            return False
        step = _signed(packet.sequence_number - last[0], _SEQ_MOD)
        late = _signed(packet.timestamp - last[1], _TS_MOD)
        return -MAX_MISORDER <= step <= 0 and abs(late - step * n) <= self.max_depth

    def _sequence_jump(self, packet: _Packet, samples: np.ndarray) -> bool:
        """A packet out of this run's numbering: a restart once the next packet follows it."""
        pending, self._pending = self._pending, (packet, samples)
        if pending is None:
            return False
        first, pcm = pending
        follows = (packet.sequence_number - first.sequence_number) % _SEQ_MOD == 1
        in_step = abs(_signed(packet.timestamp - first.timestamp, _TS_MOD) - self._units(pcm)) <= self.max_depth
        if not (follows and in_step):
            return False
        self._pending = None
        self.stats.resyncs += 1
        self._start(first, pcm)
        return self.put(packet, samples)

    def _start(self, packet: _Packet, samples: np.ndarray) -> bool:
        """Begin a run (the first packet, a new source, a re-synchronisation) with `packet`."""
        self._pending = None
        self._seen.clear()
        self._seen_order.clear()
        ts = self._anchor()
        self._high_seq = self._last_seq = packet.sequence_number
        self._last_ts, self._last_ts_ext = packet.timestamp, ts
        return self._insert(packet.sequence_number, ts, samples)

    def _insert(self, seq: int, ts: int, samples: np.ndarray) -> bool:
        self._remember(seq)
        bisect.insort(self._starts, ts)
        self._packets[ts] = samples
        n = self._units(samples)
        if self._newest_end is None or ts + n > self._newest_end:
            self._newest_end = ts + n
        self.stats.received += 1
        assert self._play is not None
        if self._newest_end - self._play > self.max_depth:
            # Over-full (nobody reading, a burst): keep only the target delay.
            skip = self._newest_end - self.frame - self.target - self._play
            self.stats.dropped += -(-skip // self.frame)
            self._play += skip
            self._held = 0
            self._discard_before(self._play)
        if len(self._starts) > 4 * self.max_depth // self.frame:
            self._discard_before(self._starts[1])  # tiny packets: stay bounded anyway
        return True

    def _anchor(self) -> int:
        """Extended timestamp for the first packet of a new source or after a jump.

        It continues right after the audio still buffered (seamless), or ``target`` ahead of
        playout when nothing is buffered; the very first packet primes playout.
        """
        if self._play is None:
            self._play = -self.target
            return 0
        if self._newest_end is not None and self._newest_end > self._play:
            return self._newest_end
        self._held = 0
        return self._play + self.target

    def _remember(self, seq: int) -> None:
        self._seen.add(seq)
        self._seen_order.append(seq)
        if len(self._seen_order) > 128:
            self._seen.discard(self._seen_order.popleft())

    def _discard_before(self, ts: int) -> None:
        """Drop packets that end at or before ``ts``."""
        starts = self._starts
        while starts and starts[0] + self._units(self._packets[starts[0]]) <= ts:
            del self._packets[starts.pop(0)]

    # -- consumer side ----------------------------------------------------------------------

    def get(self) -> np.ndarray:
        """Exactly ``frame_samples`` int16 samples for the next 20 ms of playout."""
        self.stats.frames += 1
        n, r = self.frame, self.ratio
        if self._play is None:
            return self._silence.copy()
        if self._newest_end is None or self._newest_end <= self._play:
            # Underrun: hold playout still (one frame more delay) and conceal.
            return self._hold()
        spare = self._newest_end - self._play - n
        if self._held:
            missing = not self._starts or self._starts[0] > self._play
            if missing and spare > self.target:
                # The held frames were really lost: give the banked delay back.
                skip = min(self._held, (spare - self.target) // n)
                self._play += skip * n
                self._held -= skip
                self.stats.inserted -= skip
                self._discard_before(self._play)
            elif spare < self.target:
                return self._hold()  # rebuild the target delay after an underrun
        else:
            self._adapt(spare)
        play = self._play
        end = play + n
        starts, packets = self._starts, self._packets
        pieces = []
        i = max(0, bisect.bisect_right(starts, play) - 1)
        while i < len(starts) and starts[i] < end:
            ts = starts[i]
            pcm = packets[ts]
            lo, hi = max(ts, play), min(ts + self._units(pcm), end)
            if hi > lo:
                pieces.append((lo, hi, ts, pcm))
            i += 1
        self._play = end
        self._discard_before(end)
        if not pieces:
            return self._conceal()  # lost: later audio is buffered, playout moves on
        lo, hi, ts, pcm = pieces[0]
        if lo == play and hi == end:
            out = pcm[(lo - ts) * r:(hi - ts) * r].copy()  # the common, aligned case
        else:
            covered = sum(hi - lo for lo, hi, _, _ in pieces)
            # Packets not aligned to 20 ms (e.g. 30 ms ptime) or a partial loss: conceal holes.
            out = self._silence.copy() if covered >= n else self._conceal()
            for lo, hi, ts, pcm in pieces:
                out[(lo - play) * r:(hi - play) * r] = pcm[(lo - ts) * r:(hi - ts) * r]
        self._last_frame = out
        self._lost_run = 0
        self._held = 0
        return out

    def _hold(self) -> np.ndarray:
        # counted while the fade lasts: a stream that stopped (hold, end) is silence, not loss
        if self._last_frame is not None:
            self._held += 1
            if self._lost_run < self.fade_frames:
                self.stats.inserted += 1
        return self._conceal()

    def _adapt(self, spare: int) -> None:
        """Drift control: drop 20 ms when at least one spare frame stayed buffered all window."""
        n = self.frame
        self._min_spare = spare if self._min_spare is None else min(self._min_spare, spare)
        self._window_count += 1
        if self._window_count >= self.window:
            if self._min_spare >= self.target + n:
                self._play += n
                self.stats.dropped += 1
                self._discard_before(self._play)
            self._min_spare, self._window_count = None, 0

    def _conceal(self) -> np.ndarray:
        """Repeat the last good frame with a fade over ``fade_frames``, then silence."""
        if self._last_frame is None:
            return self._silence.copy()  # nothing played yet: plain silence, not concealment
        k = self._lost_run
        self._lost_run += 1
        if k >= self.fade_frames:
            return self._silence.copy()  # faded out: silence, no longer counted
        self.stats.concealed += 1
        return (self._last_frame * self._fades[k]).astype(np.int16)
