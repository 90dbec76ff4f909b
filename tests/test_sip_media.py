"""SIP media against real peers on 127.0.0.1: a long call's timing, and crafted RTP from sipp.

1. Two bridge UserAgents in this process call each other through Kamailio for 60 s (180 s
   behind the opt-in `soak` marker: `pytest -m soak`) and exchange tone bursts both ways; every burst's one-way latency is measured on the one
   monotonic clock they share, along with the process RSS.
2. A sipp UAS answers the bridge's call and plays a pcap we write byte by byte
   (tests/testbed/pcap.py): a 1 kHz PCMU tone over sequence/timestamp wrap, with header
   extensions, CSRC lists, padding, RFC 4733 flash and digit events, an unknown payload type
   and an RTCP packet on the RTP port.  The audio the bridge reads must be the tone, sample for
   sample; the events must come out as '!' and '5'; sipp's BYE ends the call normally.

Run with -s to see the measured numbers.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import numpy as np
import pytest

from bridge.audio import tone_analysis
from bridge.clock import FrameClock
from bridge.sip import SipResult
from sipagent import Agent, blocking
from stack import kamailio  # noqa: F401  (fixture)
from testbed.fixtures import kamailio_factory  # noqa: F401
from testbed.pcap import (CraftedStream, PcapRecord, Rtp, read_pcap, rtcp_sender_report,
                          telephone_event, ulaw_decode, ulaw_encode, write_pcap)
from testbed.sipp_media import SippPcapUas

RATE = 8000
FRAME = 160
PTIME = 0.020


def sine(freq: float, n: int, dbfs: float = -13.0) -> np.ndarray:
    amp = 32767.0 * 10.0 ** (dbfs / 20.0)
    return np.round(amp * np.sin(2 * np.pi * freq * np.arange(n) / RATE)).astype(np.int16)


def rms_db(x: np.ndarray) -> float:
    r = float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)))
    return 20 * np.log10(r / 32768) if r > 0 else -200.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- 1. a three-minute call ------------------------------------------------------------------

BURST_FRAMES = 5                # 100 ms
ONSET_DB = -35.0                # frame level that counts as "tone present"
QUIET_FRAMES = 5                # a burst onset follows at least this many quiet frames


class BurstDetector:
    """Finds burst onsets in frames read on a clock; keeps only per-burst numbers."""

    def __init__(self) -> None:
        self.quiet = QUIET_FRAMES
        self.onsets: list[tuple[float, float, float]] = []   # (onset time, frequency, snr)
        self._window: list[np.ndarray] | None = None
        self._onset = 0.0

    def feed(self, frame: np.ndarray, due: float) -> None:
        if self._window is not None:
            self._window.append(frame)
            if len(self._window) == BURST_FRAMES:
                freq, snr = tone_analysis(np.concatenate(self._window), RATE)
                self.onsets.append((self._onset, freq, snr))
                self._window = None
        loud = rms_db(frame) > ONSET_DB
        if loud and self.quiet >= QUIET_FRAMES and self._window is None:
            threshold = 0.25 * np.abs(frame.astype(np.int32)).max()
            first = int(np.argmax(np.abs(frame.astype(np.int32)) > threshold))
            self._onset = due + first / RATE    # this frame plays out from its tick's due time
            self._window = [frame]
        self.quiet = 0 if loud else self.quiet + 1


class Side:
    """One UA's media loop: its own FrameClock, bursts out, bursts in."""

    def __init__(self, name: str, call, start: float, send_hz: float, offset_frames: int,
                 bursts: int) -> None:
        self.bursts = bursts                         # one a second
        self.name, self.call = name, call
        self.clock = FrameClock(PTIME, start=start)
        self.burst = sine(send_hz, BURST_FRAMES * FRAME)
        self.offset = offset_frames
        self.sent: list[float] = []                  # scheduled send time of each burst
        self.detector = BurstDetector()
        self.rss: dict[int, int] = {}
        self.ticks = 0

    async def run(self, frames: int, rss_at: tuple[int, ...] = ()) -> None:
        silence = np.zeros(FRAME, np.int16)
        media = self.call.media
        async for tick in self.clock:
            i = tick.index
            if i >= frames or self.call.ended.done():
                return
            k, pos = divmod(i - self.offset, 50)
            if i >= self.offset and pos < BURST_FRAMES and k < self.bursts:
                if pos == 0:
                    self.sent.append(tick.due)
                media.write_frame(self.burst[pos * FRAME:(pos + 1) * FRAME])
            else:
                media.write_frame(silence)
            self.detector.feed(media.read_frame(), tick.due)
            self.ticks += 1
            for second in rss_at:
                if i == second * 50 and second not in self.rss:
                    self.rss[second] = rss_bytes()


async def ended_within(call, timeout: float):
    """The call's CallEnd, or None if it has not ended within `timeout` seconds."""
    try:
        return await asyncio.wait_for(asyncio.shield(call.ended), timeout)
    except asyncio.TimeoutError:
        return None


def latencies(sent: list[float], onsets: list[tuple[float, float, float]], freq: float):
    """Match each onset heard to the burst sent last before it: (burst index, latency)."""
    found: dict[int, float] = {}
    stray = []
    for onset, f, snr in onsets:
        k = max((j for j, s in enumerate(sent) if s <= onset), default=None)
        if k is None or onset - sent[k] > 0.5 or abs(f - freq) > freq * 0.02 or snr < 15 or k in found:
            stray.append((round(onset, 3), round(f, 1), round(snr, 1)))
            continue
        found[k] = onset - sent[k]
    return found, stray


@pytest.mark.parametrize("seconds", [60, pytest.param(180, marks=pytest.mark.soak)])
async def test_a_long_call_keeps_audio_without_drift(kamailio, seconds):
    a = await Agent(kamailio, rtp_low=33000, rtp_high=33499).start()
    b = await Agent(kamailio, username="2004", auth_username="2004", password="pw2004",
                    rtp_low=33500, rtp_high=33999).start()
    try:
        call_a = await a.ua.call("2004", caller="4242", display_name="Long Call")
        call_b = await asyncio.wait_for(b.incoming.get(), 10)
        await call_b.ringing()
        await asyncio.gather(call_b.answer(), asyncio.wait_for(call_a.answered, 10))
        assert call_a.codec == call_b.codec == "PCMU"

        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.2
        # Independent clocks: B ticks 7.3 ms after A. A sends 1 kHz at 0, 1, 2 ... s;
        # B sends 440 Hz at 0.5, 1.5 ... s.
        side_a = Side("A", call_a, t0, 1000.0, 0, seconds)
        side_b = Side("B", call_b, t0 + 0.0073, 440.0, 25, seconds)
        frames = seconds * 50 + 30                     # + 0.6 s for the last burst to arrive
        rss0 = rss_bytes()
        wall0 = time.monotonic()
        await asyncio.gather(side_a.run(frames, rss_at=(30, seconds)), side_b.run(frames))
        wall = time.monotonic() - wall0

        dropped = call_a.ended.done() or call_b.ended.done()
        await call_a.hangup()
        end_a, end_b = await ended_within(call_a, 5), await ended_within(call_b, 5)

        report = {}
        for label, tx, rx, freq in (("A->B", side_a, side_b, 1000.0), ("B->A", side_b, side_a, 440.0)):
            found, stray = latencies(tx.sent, rx.detector.onsets, freq)
            ms = {k: v * 1000 for k, v in found.items()}
            keys = sorted(ms)
            first = statistics.median(ms[k] for k in keys[:10]) if keys else float("nan")
            last = statistics.median(ms[k] for k in keys[-10:]) if keys else float("nan")
            report[label] = (len(tx.sent), len(found), first, last, ms, stray)
            st = rx.call.media.stats
            print(f"\n{label}: {len(found)}/{len(tx.sent)} bursts heard, latency first10 median "
                  f"{first:.1f} ms, last10 median {last:.1f} ms, min {min(ms.values(), default=0):.1f}, "
                  f"max {max(ms.values(), default=0):.1f} ms; stray onsets {stray[:5]}")
            print(f"  receiver stats: received {st.packets_received} lost {st.lost} late {st.late} "
                  f"concealed {st.concealed} dropped {st.dropped} inserted {st.inserted} "
                  f"jitter {st.jitter_ms:.2f} ms; receiver clock late ticks {rx.clock.late_ticks} "
                  f"skipped {rx.clock.skipped_ticks} max lateness {rx.clock.max_lateness * 1000:.1f} ms")
            print("  latency per burst (ms): " + " ".join(f"{ms[k]:.0f}" for k in keys))
        rss30, rss_end = side_a.rss.get(30, 0), side_a.rss.get(seconds, 0)
        print(f"\nRSS before media {rss0 / 2**20:.1f} MiB, at 30 s {rss30 / 2**20:.2f} MiB, at {seconds} s "
              f"{rss_end / 2**20:.2f} MiB (growth {(rss_end - rss30) / 2**10:.0f} KiB); media loop took "
              f"{wall:.1f} s")

        print(f"ends: A {end_a}, B {end_b}; registrations A {a.ua.registration.state}, "
              f"B {b.ua.registration.state}; {kamailio!r}")
        assert not dropped, "the call ended during the media"
        # A loaded machine may stall the loop > 100 ms: FrameClock then skips ticks (by design).
        assert min(side_a.ticks, side_b.ticks) >= frames * 0.99, (side_a.ticks, side_b.ticks)
        for label, (sent, heard, first, last, ms, stray) in report.items():
            assert sent == seconds, (label, sent)
            assert heard >= seconds * 17 // 18, f"{label}: only {heard} of {sent} bursts heard"
            assert len(stray) <= 2, f"{label}: onsets that match no burst: {stray}"
            assert all(0 < v < 200 for v in ms.values()), f"{label}: latency out of (0, 200) ms: {ms}"
            assert abs(last - first) <= 20, f"{label}: latency drifted from {first:.1f} to {last:.1f} ms"
        assert end_a is not None and (end_a.result, end_a.by) == (SipResult.NORMAL, "local"), end_a
        assert end_b is not None and (end_b.result, end_b.by) == (SipResult.NORMAL, "remote"), end_b
        assert rss30 and rss_end, "RSS not sampled"
        assert rss_end - rss30 < 3 * 2**20, f"RSS grew {(rss_end - rss30) / 2**20:.2f} MiB from 30 s to {seconds} s"
    finally:
        await a.ua.stop()
        await b.ua.stop()


# --- 2. crafted RTP from sipp --------------------------------------------------------------------

TONE_HZ = 1000.0
TONE_FRAMES = 150               # 3 s
SSRC = 0x5EED1234
SEQ0 = 65530                    # sequence numbers wrap after 6 packets
TS0 = 2**32 - 5 * FRAME         # timestamps wrap after 5 frames
PT_PCMU, PT_EVENT = 0, 101


def one_byte_extension(*elements: tuple[int, bytes]) -> bytes:
    """RFC 8285 one-byte header elements (profile 0xBEDE), zero-padded to whole words."""
    body = b"".join(bytes([(ident << 4) | (len(data) - 1)]) + data for ident, data in elements)
    return body + b"\x00" * (-len(body) % 4)


def craft_stream() -> tuple[CraftedStream, np.ndarray]:
    """The crafted packets (pcap records) and the PCM the tone packets decode to."""
    pcm = sine(TONE_HZ, TONE_FRAMES * FRAME)
    stream = CraftedStream()
    notes = stream.notes
    seq = SEQ0
    expected = []

    def emit(i: int, payload: bytes, kind: str) -> None:
        stream.records.append(PcapRecord(1_700_000_000 + i * PTIME, payload))
        notes[kind] = notes.get(kind, 0) + 1

    def rtp(i: int, kind: str, **kw) -> None:
        nonlocal seq
        emit(i, Rtp(ssrc=SSRC, seq=seq, **kw).pack(), kind)
        seq = (seq + 1) & 0xFFFF

    def events(i: int, code: int, start: int, updates: int) -> None:
        """RFC 4733: an update every 20 ms from frame `start`, then the end packet three times."""
        ts = TS0 + start * FRAME
        k = i - start
        if 0 <= k < updates:
            rtp(i, "event", pt=PT_EVENT, ts=ts, marker=k == 0,
                payload=telephone_event(code, False, 10, (k + 1) * FRAME))
        elif k == updates:
            for _ in range(3):
                rtp(i, "event end", pt=PT_EVENT, ts=ts, payload=telephone_event(code, True, 10, (k + 1) * FRAME))

    for i in range(TONE_FRAMES):
        ts = TS0 + i * FRAME
        payload = ulaw_encode(pcm[i * FRAME:(i + 1) * FRAME])
        expected.append(ulaw_decode(payload))
        if i == 100:       # an unknown payload type, same SSRC and timestamp as the audio after it
            rtp(i, "unknown pt", pt=96, ts=ts, payload=bytes(range(7, 167)))
        if i == 120:       # RTCP sender report on the RTP port (rtcp-mux style)
            emit(i, rtcp_sender_report(SSRC, ts, i, i * FRAME), "rtcp")
        kw: dict = {}
        kind = "audio"
        if 10 <= i < 20:
            kw.update(ext_profile=0xBEDE, ext_words=one_byte_extension((1, b"\x85"), (3, b"\x01\x02\x03")))
            kind = "audio + extension"
        elif 20 <= i < 30:
            kw.update(csrc=[0x11111111, 0x22222222] if i != 25 else list(range(1, 16)))
            kind = "audio + csrc"
        elif 30 <= i < 40:
            kw.update(padding=1 if i % 2 else 4)
            kind = "audio + padding"
        elif 60 <= i < 70:
            kw.update(ext_profile=0xBEDE, ext_words=one_byte_extension((2, b"\xAA" * 8)),
                      csrc=[0xCAFEBABE], padding=8)
            kind = "audio + extension + csrc + padding"
        elif i == 70:
            kw.update(ext_profile=0x1000, ext_words=b"\x05\x03abc\x00\x00\x00\x00\x00\x00\x00")
            kind = "audio + two-byte extension"
        elif i == 75:
            kw.update(ext_profile=0xBEDE, ext_words=b"")
            kind = "audio + empty extension"
        rtp(i, kind, pt=PT_PCMU, ts=ts, payload=payload, marker=i == 0, **kw)
        events(i, 16, 40, 6)        # flash, 120 ms, alongside the audio (RFC 4733 2.5.1.2)
        events(i, 5, 80, 8)         # '5', 160 ms
    stream.audio_frames = TONE_FRAMES
    stream.events = ["!", "5"]
    return stream, np.concatenate(expected)


async def test_crafted_rtp_from_a_real_peer_does_not_disturb_the_call(kamailio, tmp_path):
    stream, expected = craft_stream()
    pcap = write_pcap(tmp_path / "crafted.pcap", stream.records)
    assert [p for _, p in read_pcap(pcap)] == [r.payload for r in stream.records]   # lengths, checksums
    uas = await blocking(lambda: SippPcapUas(kamailio, "2003", pcap, hold_ms=4500,
                                             workdir=tmp_path / "sipp-pcap").start())
    a = await Agent(kamailio).start()
    try:
        call = await a.ua.call("2003")
        digits: list[tuple[str, float]] = []
        loop = asyncio.get_running_loop()
        call.media.on_dtmf = lambda d: digits.append((d, loop.time()))
        # The media loop runs from the start of the call, as in the bridge: it is already
        # ticking when the first packet arrives, so the jitter buffer starts at its target.
        frames: list[np.ndarray] = []
        concealed: list[bool] = []
        depth: list[int] = []
        silence = np.zeros(FRAME, np.int16)
        async for tick in FrameClock(PTIME):
            if call.ended.done() or tick.index > 750:
                break
            call.media.write_frame(silence)
            before = call.media.jitter.stats.concealed
            frames.append(call.media.read_frame())
            concealed.append(call.media.jitter.stats.concealed > before)
            depth.append(call.media.jitter.depth_samples // FRAME)
        assert call.answered.done() and call.answered.exception() is None, "never answered"
        end = await asyncio.wait_for(asyncio.shield(call.ended), 5)
        result = await blocking(uas.wait, 10)
        st = call.media.stats

        levels = np.array([rms_db(f) for f in frames])
        loud = np.nonzero((levels > -30) & ~np.array(concealed))[0]
        print(f"\ncrafted packets: {stream.notes}")
        print(f"read {len(frames)} frames; tone frames {len(loud)} (first {loud[:1]}, last {loud[-1:]}); "
              f"concealed frames: {sum(concealed)}, the first at {np.nonzero(concealed)[0][:1]}")
        print(f"jitter buffer depth (frames) per read: {''.join(str(min(d, 9)) for d in depth)}")
        print(f"digits {digits}; end {end}; sipp rc {result.returncode}")
        print(f"stats: received {st.packets_received} lost {st.lost} late {st.late} dups {st.duplicates} "
              f"concealed {st.concealed} malformed {st.malformed} ignored {st.ignored} "
              f"dtmf {st.dtmf_received} dropped {st.dropped} inserted {st.inserted}")
        assert len(loud), "no tone heard at all"
        tone_part = np.concatenate(frames[loud[0]:loud[-1] + 1])
        freq, snr = tone_analysis(tone_part, RATE)
        tone_levels = levels[loud[0]:loud[-1] + 1]
        n = min(len(tone_part), len(expected))
        err = tone_part[:n].astype(np.float64) - expected[:n]
        match_db = 10 * np.log10(np.sum(expected[:n].astype(np.float64) ** 2) / max(np.sum(err ** 2), 1e-9))
        print(f"tone part: {len(tone_part) / RATE:.2f} s, {freq:.1f} Hz, SNR {snr:.1f} dB, frame RMS "
              f"{tone_levels.min():.2f}..{tone_levels.max():.2f} dBFS, match with the sent PCM {match_db:.1f} dB")

        assert (end.result, end.by) == (SipResult.NORMAL, "remote"), end
        assert result.ok, result.describe()
        assert [d for d, _ in digits] == stream.events, digits
        assert len(loud) == stream.audio_frames and loud[-1] - loud[0] + 1 == stream.audio_frames, \
            f"tone frames {len(loud)} over a span of {loud[-1] - loud[0] + 1}, sent {stream.audio_frames}; " \
            f"jitter buffer dropped {st.dropped}, inserted {st.inserted}"
        assert not any(concealed[loud[0]:loud[-1] + 1]), "concealment inside the tone"
        assert abs(freq - TONE_HZ) < TONE_HZ * 0.02 and snr >= 25, (freq, snr)
        assert tone_levels.max() - tone_levels.min() < 1.0, f"frame levels vary: {tone_levels}"
        assert match_db > 40, f"what was read differs from what was sent ({match_db:.1f} dB)"
        assert st.malformed == 0 and st.dtmf_received == 2
        assert st.lost == 0                        # the ignored payload type was no loss
        assert st.ignored >= 2                     # the unknown payload type and the RTCP packet
    finally:
        await a.ua.stop()
        await blocking(uas.stop)
