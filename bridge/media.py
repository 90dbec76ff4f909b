"""Audio between the legs of a bridged call: WebRTC <-> SIP RTP (G.711 at 8 kHz, G.722 at 16 kHz).

With `bridge.media: relay` (the default) every packet goes on the moment it arrives, as
rtpengine or a PBX with direct media would pass it, with its timing and gaps kept in the RTP
timestamps, and the endpoints' own jitter buffers do the rest: no clock, no buffer.
- When both legs speak the same codec (G.711, either law, or G.722: `webrtc.codecs`,
  `sip.codecs`) the packet passes as it is (A-law <-> mu-law by a byte table): ~1 ms added, no
  decoding. All these codecs share the 8000 Hz RTP clock and one byte per unit.
- Otherwise (Opus on the app leg, or G.711 against G.722) each packet is decoded and encoded
  again on its own, resampled where the rates differ; Opus is encoded at the SIP leg's rate
  (`bridge.opus`). A part frame (a phone's 30 ms packets) waits for the next packet. The
  per-packet parts (the timestamp mapping, the coders, the recoding) are `bridge.relay`.

With `bridge.media: transcode` frames are decoded and each direction runs on its own 20 ms
clock, so neither leg's timing leaks into the other (and aiortc codes the app leg's Opus):
- SIP -> app: `SipToApp` is the app leg's outgoing aiortc track; each tick it pulls one frame
  from the RTP jitter buffer (which conceals loss and absorbs drift) and resamples it to the app
  leg's rate (48 kHz Opus, 16 kHz G.722, 8 kHz G.711). Before the phone answers it plays
  ringback (`bridge.ringback`), or the phone's early media (in either mode).
- app -> SIP: `AppToSip` receives the app leg's decoded frames, resamples them to the SIP leg's
  rate (16 kHz for G.722: an Opus call stays wideband end to end) into a short FIFO (at most
  `depth` frames; the oldest is dropped on overflow, silence sent on underrun), and a task sends
  one frame to the phone every tick.

While the app user holds the call, nothing of the app leg reaches the phone: `AppToSip.play_held`
sends music on hold (`bridge.music_on_hold`, looped) or silence on its own 20 ms clock instead.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from . import codecs
from .audio import PTIME, RATE, looped, make_frame
from .clock import FrameClock
from .relay import FRAME_UNITS, Decode, Recoder, Timeline, clock_rate, decoder, ours
from .relay import units as payload_units
from .resample import Resampling
from .ringback import Ringback
from .rtp import RtpEndpoint

TIME_BASE = Fraction(1, codecs.CLOCK_RATE)
RELAY_QUEUE = 8           # packets waiting for the app leg's sender, at most
_WAKE = av.Packet(b"")     # wakes a relaying recv() when the track goes back to ringback


US_RINGBACK = Ringback("us")


@dataclass
class DirectionStats:
    """Frame accounting for one direction (exported as metrics)."""

    frames: int = 0      # frames sent (relaying: packets passed on)
    late: int = 0        # clock ticks more than a quarter frame late (relaying: packets older
                         # than one already sent, dropped)
    underruns: int = 0   # nothing to send: silence instead
    overruns: int = 0    # too much queued: oldest frame dropped


class SipToApp(MediaStreamTrack):
    """The app leg's outgoing audio: ringback, then the desk phone's audio.

    When `relay` is on (and the app leg speaks G.711, G.722 or Opus: bridge codes them all), this
    track hands aiortc encoded packets (`av.Packet`: aiortc sends them as they are), for the whole
    call: ringback and silence encoded here on a 20 ms clock, then each packet from the phone as
    it arrives, its timestamp mapped onto this stream's (`relaying`): as it is, or, if the
    phone's codec is another, decoded and encoded again (`recoding`). Otherwise frames are 48 kHz
    for Opus, 16 kHz for G.722, 8 kHz for G.711, pulled on the clock from the RTP jitter buffer.
    (The codec is fixed once the leg is negotiated, before the first frame is pulled: aiortc's
    encoders cannot change their input rate or timestamps mid-stream; bridge's Opus encoder
    follows the SIP leg's rate.)
    """

    kind = "audio"

    def __init__(self, codec: Callable[[], str] = lambda: "", relay: bool = True,
                 ringback: Callable[[int], np.ndarray] = US_RINGBACK.samples) -> None:
        super().__init__()
        self.ringback = ringback  # one cycle of ringback at a sample rate (int16), looped
        self.rtp: RtpEndpoint | None = None
        self.mode = "silence"     # silence, ringback, sip
        self.codec = codec        # the app leg's negotiated codec, known before media flows
        self.relay = relay
        self.stats = DirectionStats()
        self._resample = Resampling()
        self._recoder = Recoder(codec)    # the app leg's encoder, and the phone's recoded
        self._clock = FrameClock(PTIME)
        self._ring_pos = 0
        self._packets: asyncio.Queue[av.Packet | None] = asyncio.Queue()
        self._timeline = Timeline()
        self._pts = 0             # next pts (8 kHz) of the relayed stream
        self._t0: float | None = None
        # sends a relayed packet (payload, pts at 8 kHz) at once if it can (True), else recv() gets it
        self.push: Callable[[bytes, int], bool] | None = None

    @property
    def rate(self) -> int:
        """The app leg's audio rate."""
        codec = codecs.CODECS.get(self.codec())
        return codec.sample_rate if codec is not None else RATE

    @property
    def encoding(self) -> bool:
        """This track gives aiortc packets, not frames: relay on, and the app leg speaks a codec
        bridge codes itself (G.711, G.722, Opus)."""
        return self.relay and ours(self.codec())

    @property
    def relaying(self) -> bool:
        """The phone's packets go on as they arrive: as they are when the legs' codecs are
        relayable, else each decoded and encoded again (`recoding`)."""
        return self.encoding and self.rtp is not None

    @property
    def recoding(self) -> bool:
        return self.relaying and not codecs.relayable(self.rtp.codec, self.codec())  # type: ignore[union-attr]

    def play_ringback(self) -> None:
        """Ringback until `connect`; also after an early-media target failed (a fallback rings)."""
        if self.mode == "sip":
            if self.rtp is not None:
                self.rtp.on_audio = None
                self.rtp = None
            self._packets.put_nowait(_WAKE)    # a relaying recv() waits for packets: go on the clock
        self.mode = "ringback"

    def connect(self, rtp: RtpEndpoint) -> None:
        """From now on carry the phone's audio (early media or the answered call)."""
        self.rtp = rtp
        self.mode = "sip"
        if self.relaying:
            rtp.on_audio = self._from_phone

    def _from_phone(self, payload_type: int, seq: int, timestamp: int, ssrc: int, payload: bytes) -> None:
        """Relay one packet of the phone's (called by the RTP endpoint as it arrives)."""
        skipped = self._timeline.place(ssrc, seq, timestamp, len(payload))
        if skipped is None:
            self.stats.late += 1
            return
        if self._timeline.restarted and self._t0 is not None:   # a new stream starts now
            now = int((asyncio.get_running_loop().time() - self._t0) * codecs.CLOCK_RATE)
            skipped = max(0, now - self._pts)
        rtp = self.rtp
        assert rtp is not None
        target = self.codec()
        if codecs.relayable(rtp.codec, target):
            self._pts += skipped
            self._pass(codecs.convert(payload, rtp.codec, target), len(payload))
            return
        for skip, frame in self._recoder.frames(rtp, payload, skipped):
            self._pts += skip
            if frame is not None:
                self._pass(frame, FRAME_UNITS)

    def _pass(self, payload: bytes, units: int) -> None:
        """Send one packet of the app leg's codec at `_pts` (8 kHz units) now, or queue it for recv."""
        if self.push is not None and self.push(payload, self._pts):   # sent now, past the sender's task
            self._pts += units
            self.stats.frames += 1
            return
        if self._packets.qsize() >= RELAY_QUEUE:             # the sender is not keeping up
            self._packets.get_nowait()
            self.stats.overruns += 1
        self._packets.put_nowait(self._packet(payload, units))

    def _packet(self, payload: bytes, units: int) -> av.Packet:
        packet = av.Packet(payload)
        packet.pts = self._pts
        packet.time_base = TIME_BASE
        self._pts += units
        return packet

    def stop(self) -> None:
        super().stop()
        self._packets.put_nowait(None)

    async def recv(self) -> av.AudioFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = asyncio.get_running_loop().time()
        if self.mode == "sip" and self.relaying:
            packet = await self._packets.get()
            if packet is None:
                raise MediaStreamError
            if packet is not _WAKE:
                self.stats.frames += 1
                return packet
        tick = await anext(self._clock)
        self.stats.frames += 1
        if tick.lateness > PTIME / 4:
            self.stats.late += 1
        rate = self._recoder.rate(self.rtp) if self.encoding else self.rate
        size = int(rate * PTIME)
        if self.mode == "sip" and self.rtp is not None and not self.rtp.closed:
            pcm = self._resample(self.rtp.read_frame(), self.rtp.sample_rate, rate)
        elif self.mode == "ringback":
            tone = self.ringback(rate)
            pcm = looped(tone, (self._ring_pos * size) % len(tone), size)
            self._ring_pos += 1
        else:
            pcm = np.zeros(size, np.int16)
        if self.encoding:                  # ringback, silence or the phone's frames, in the app leg's codec
            self._pts = max(self._pts, tick.index * FRAME_UNITS)
            return self._packet(self._recoder.encode(pcm, rate), FRAME_UNITS)
        return make_frame(pcm, tick.index * size, rate)


class AppToSip:
    """A sink for the app leg's frames and the task that sends them to the phone; or, relaying,
    the sink for the app leg's packets (G.711, G.722), each sent on to the phone as it arrives."""

    def __init__(self, depth: int = 3) -> None:
        self.depth = depth
        self.stats = DirectionStats()
        self._resample = Resampling()
        self._rate = 8000                     # the SIP leg's audio rate (set by `run`)
        self._queue: deque[np.ndarray] = deque()
        self._silence = np.zeros(int(self._rate * PTIME), np.int16)
        self._pending = np.zeros(0, np.int16)
        self._rtp: RtpEndpoint | None = None
        self._timeline = Timeline()
        self._names = {pt: codec.name for pt, codec in codecs.BY_PAYLOAD_TYPE.items()}
        self._decoders: dict[tuple[str, int], tuple[Decode, int]] = {}   # by codec and wanted rate
        self.held = False         # the app user holds the call: play_held sends instead

    def relay_to(self, rtp: RtpEndpoint, payload_types: dict[int, str] | None = None
                 ) -> Callable[[int, int, int, int, bytes], None]:
        """Send the app leg's packets to `rtp` from now on, each as it arrives (relayed, or decoded
        and encoded again when the legs' codecs differ); `payload_types` names the app leg's
        dynamic ones (Opus). Returns the packet sink."""
        self._rtp = rtp
        self._names.update(payload_types or {})
        return self.from_app

    def from_app(self, payload_type: int, seq: int, timestamp: int, ssrc: int, payload: bytes) -> None:
        """Relay (or recode) one of the app leg's RTP packets (its header's fields and payload)."""
        rtp = self._rtp
        name = self._names.get(payload_type)
        if rtp is None or rtp.closed or name is None or not ours(name):
            return
        skipped = self._timeline.place(ssrc, seq, timestamp, payload_units(name, payload))
        if skipped is None:
            self.stats.late += 1
            return
        if self.held:                 # placed all the same: the stream goes on without a gap after
            return
        self.stats.frames += 1
        if codecs.relayable(name, rtp.codec):
            rtp.write_payload(codecs.convert(payload, name, rtp.codec), skipped)
            return
        key = (name, rtp.sample_rate)        # Opus decodes to the phone's rate itself
        decode, rate = self._decoders.get(key) or self._decoders.setdefault(key, decoder(*key))
        pcm = self._resample(decode(payload), rate, rtp.sample_rate)
        skipped = skipped * codecs.CLOCK_RATE // clock_rate(name)     # Opus: 48 kHz
        size = rtp.sample_rate // 50
        for start in range(0, len(pcm), size):       # a 40 or 60 ms packet: 20 ms ones to the phone
            rtp.write_frame(pcm[start:start + size], skipped)
            skipped = 0

    def __call__(self, pcm: np.ndarray, rate: int = RATE) -> None:
        """Called by the SDK with each decoded frame (int16 mono: 48 kHz Opus, 16 kHz G.722 or
        8 kHz G.711), resampled here to the SIP leg's rate."""
        pcm = self._resample(pcm, rate, self._rate)
        size = len(self._silence)
        if len(pcm) != size or len(self._pending):   # not 20 ms: re-frame
            self._pending = np.concatenate([self._pending, pcm])
            while len(self._pending) >= size:
                self._push(self._pending[:size])
                self._pending = self._pending[size:]
            return
        self._push(pcm)

    def _push(self, pcm: np.ndarray) -> None:
        self._queue.append(pcm)
        if len(self._queue) > self.depth:
            self._queue.popleft()
            self.stats.overruns += 1

    async def run(self, rtp: RtpEndpoint) -> None:
        """Send one frame to the phone every 20 ms until the endpoint closes.

        Frames queued before the phone answered are stale: they are dropped. Afterwards, a
        queue that never fell below two frames for a second gives one frame up (the app's
        clock runs faster than ours), so the delay stays at one frame.
        """
        self._rate = rtp.sample_rate
        self._silence = np.zeros(int(self._rate * PTIME), np.int16)
        self._pending = np.zeros(0, np.int16)
        self._queue.clear()
        self._rtp = rtp
        lowest = self.depth
        clock = FrameClock(PTIME)
        async for tick in clock:
            if rtp.closed:
                return
            if self.held:
                self._queue.clear()
                continue
            self.stats.frames += 1
            if tick.lateness > PTIME / 4:
                self.stats.late += 1
            lowest = min(lowest, len(self._queue))
            if tick.index % 50 == 49:
                if lowest >= 2:
                    self._queue.popleft()
                    self.stats.overruns += 1
                lowest = self.depth
            if self._queue:
                frame = self._queue.popleft()
            else:
                frame = self._silence
                self.stats.underruns += 1
            rtp.write_frame(frame)

    async def play_held(self, music: Callable[[int], np.ndarray | None]) -> None:
        """While `held`: one 20 ms frame of `music(rate)` (int16 at the SIP leg's rate, looped;
        None: silence) to the phone every tick, to whichever RTP endpoint the call has now (a
        transfer may swap it, and its codec's rate with it)."""
        position = 0
        async for tick in FrameClock(PTIME):
            rtp = self._rtp
            if not self.held or rtp is None:
                return
            if rtp.closed:
                continue
            size = int(rtp.sample_rate * PTIME)
            samples = music(rtp.sample_rate)
            if samples is None or not len(samples):
                rtp.write_frame(np.zeros(size, np.int16))
                continue
            position = (position + size * tick.skipped) % len(samples)
            rtp.write_frame(looped(samples, position, size))
            position = (position + size) % len(samples)


async def cancel_quietly(task: asyncio.Task | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
