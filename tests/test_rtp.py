"""RTP packets, RFC 4733 events, RtpEndpoint over real UDP on 127.0.0.1, and the PortPool."""

from __future__ import annotations

import asyncio
import random
import socket

import numpy as np
import pytest

from bridge import g711
from bridge.clock import FrameClock
from bridge.ports import PortPool, PortPoolExhausted
from bridge.rtp import (
    ReceiveCounter,
    RtpEndpoint,
    RtpPacket,
    RtpParseError,
    RtpStats,
    TelephoneEvent,
    event_code,
    payload_span,
)

N = 160
HOST = "127.0.0.1"
CODES = [0x90 + i for i in range(100)]
LEVELS = g711.decode("PCMU", bytes(CODES)).tolist()
LEVEL_TO_ID = {v: i for i, v in enumerate(LEVELS)}


def ident(frame: np.ndarray) -> int | None:
    v = int(frame[0])
    if np.all(frame == v) and v in LEVEL_TO_ID:
        return LEVEL_TO_ID[v]
    return None


def audio(k: int, seq0: int = 100, ts0: int = 9000, ssrc: int = 0xCAFE, **kw) -> RtpPacket:
    return RtpPacket(0, (seq0 + k) & 0xFFFF, (ts0 + N * k) & 0xFFFFFFFF, ssrc,
                     bytes([CODES[k % 100]]) * N, **kw)


async def wait_until(cond, timeout: float = 1.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("timed out waiting for condition")
        await asyncio.sleep(0.001)


def raw_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    s.setblocking(False)
    return s


async def recv_all(sock: socket.socket, quiet: float = 0.05) -> list[RtpPacket]:
    """Packets arriving on ``sock`` until it stays quiet for ``quiet`` seconds."""
    loop = asyncio.get_running_loop()
    out = []
    while True:
        try:
            data, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 4096), quiet)
        except asyncio.TimeoutError:
            return out
        out.append(RtpPacket.parse(data))


# -- packets ----------------------------------------------------------------------------------


def test_packet_roundtrip_plain():
    p = RtpPacket(0, 65535, 2**32 - 1, 0xDEADBEEF, b"\x01\x02\x03", marker=True)
    data = p.serialize()
    assert data[:2] == b"\x80\x80" and len(data) == 15
    assert RtpPacket.parse(data) == p


def test_packet_with_csrc_extension_and_padding():
    p = RtpPacket(8, 7, 1234, 42, b"\xd5" * 160, csrc=[1, 2, 3],
                  extension_profile=0xBEDE, extension=b"\x10\xaa\x00\x00\x21\xbb\xcc\x00",
                  padding_size=5)
    data = p.serialize()
    assert len(data) == 12 + 12 + 4 + 8 + 160 + 5
    assert data[0] == 0x80 | 0x20 | 0x10 | 3
    q = RtpPacket.parse(data)
    assert q == p
    assert q.payload == b"\xd5" * 160 and q.csrc == [1, 2, 3] and q.padding_size == 5


@pytest.mark.parametrize("data", [
    b"",
    b"\x80\x00\x00",                                     # short
    b"\x40\x00" + b"\x00" * 10 + b"\xff" * 4,            # version 1
    b"\x83\x00" + b"\x00" * 10 + b"\x00" * 8,            # 3 CSRC, 2 present
    b"\x90\x00" + b"\x00" * 10 + b"\xbe\xde",            # extension header cut
    b"\x90\x00" + b"\x00" * 10 + b"\xbe\xde\x00\x05" + b"\x00" * 8,  # extension body cut
    b"\xa0\x00" + b"\x00" * 10 + b"\xff\x00",            # padding 0
    b"\xa0\x00" + b"\x00" * 10 + b"\xff\x20",            # padding longer than payload
])
def test_malformed_packets_raise_value_error(data):
    with pytest.raises(RtpParseError):
        RtpPacket.parse(data)
    assert issubclass(RtpParseError, ValueError)
    if len(data) >= 12 and data[0] >> 6 == 2:     # the relay's header read refuses it too
        assert payload_span(data) is None


@pytest.mark.parametrize("packet", [
    RtpPacket(0, 1, 2, 3, b"\xff" * 160),
    RtpPacket(0, 1, 2, 3, b""),
    RtpPacket(8, 7, 1234, 42, b"\xd5" * 160, csrc=[1, 2, 3], extension_profile=0xBEDE,
              extension=b"\x10\xaa\x00\x00\x21\xbb\xcc\x00", padding_size=5),
    RtpPacket(9, 7, 1234, 42, b"\x01\x02", extension_profile=0x1000, extension=b"", padding_size=255),
])
def test_the_relays_header_read_finds_the_payload_the_parser_does(packet):
    data = packet.serialize()
    start, end = payload_span(data)
    assert data[start:end] == RtpPacket.parse(data).payload == packet.payload


@pytest.mark.parametrize("seed", range(5))
def test_receive_counter_agrees_with_a_plain_count_of_a_lossy_reordered_stream(seed):
    """Loss, duplicates, reordering (within the window), sequence wrap and a change of source,
    counted by the counter (with its shortcut for the packet next in line) and by a plain set of
    the packets seen: the same loss and jitter after every packet."""
    rng = random.Random(seed)
    stats = RtpStats()
    counter = ReceiveCounter(8000, stats)
    lost_before, seen, ext_max, base, jitter, transit, source = 0, set(), None, 0, 0.0, None, None
    first = rng.randrange(65536)
    for n in range(3000):
        ssrc = 0xCAFE if n < 2000 else 0xBEEF
        k = n if n < 2000 else n - 2000
        if rng.random() < 0.05:
            continue                                         # lost
        k = max(0, k - rng.randrange(20)) if rng.random() < 0.05 else k   # late, or a duplicate
        seq, timestamp, arrival = (first + k) & 0xFFFF, 160 * k, 0.02 * n + rng.random() * 0.01
        counter.update(seq, timestamp, ssrc, arrival)
        if ssrc != source:
            source = ssrc
            if ext_max is not None:
                lost_before += max(0, ext_max - base + 1 - len(seen))
            seen, base, ext_max, transit = set(), first + k, first + k, None
        if first + k in seen:
            continue
        seen.add(first + k)
        ext_max = max(ext_max, first + k)
        now = arrival * 8000 - timestamp
        if transit is not None:
            jitter += (abs(now - transit) - jitter) / 16
        transit = now
        assert stats.lost == lost_before + max(0, ext_max - base + 1 - len(seen)), n
        assert stats.jitter_ms == pytest.approx(jitter / 8, rel=1e-9, abs=1e-9), n


def test_receive_counter_counts_loss_and_not_duplicates_within_its_window():
    stats = RtpStats()
    counter = ReceiveCounter(8000, stats)
    arrivals = [65530, 65531, 65533, 65531, 65534, 0, 1, 1, 65534, 3]   # 3 duplicates
    for k, seq in enumerate(arrivals):
        counter.update(seq, 160 * k, 0xCAFE, 0.02 * k)
    assert counter.received == 7 and stats.lost == 3                # 65532, 65535 and 2
    counter.update(2, 160 * 10, 0xCAFE, 0.2)           # late, not lost after all
    assert counter.received == 8 and stats.lost == 2
    counter.update(2, 160 * 10, 0xCAFE, 0.2)
    assert counter.received == 8
    for k in range(130):
        counter.update(4 + k, 160 * (11 + k), 0xCAFE, 0.02 * (11 + k))
    assert counter.received == 138 and stats.lost == 2
    counter.update(0, 0, 0xCAFE, 3.0)                   # older than the window: counted (RFC 3550 A.3)
    assert counter.received == 139 and stats.lost == 1
    counter.update(500, 0, 0xBEEF, 3.02)       # a new source starts afresh; its loss adds on
    assert counter.received == 1 and stats.lost == 1
    counter.update(502, 160, 0xBEEF, 3.04)
    assert stats.lost == 2


def test_telephone_event_payload():
    ev = TelephoneEvent(11, end=True, volume=10, duration=800)
    assert ev.serialize() == bytes([11, 0x8A, 0x03, 0x20])
    assert TelephoneEvent.parse(ev.serialize()) == ev
    assert [TelephoneEvent(i).char for i in range(17)] == list("0123456789*#ABCD!")
    assert TelephoneEvent(17).char is None and TelephoneEvent(255).char is None
    assert event_code("#") == 11 and event_code("d") == 15 and event_code("!") == 16
    with pytest.raises(ValueError):
        event_code("x")
    with pytest.raises(RtpParseError):
        TelephoneEvent.parse(b"\x01\x02")


# -- endpoint ---------------------------------------------------------------------------------


def _fit_sine(x: np.ndarray, freq: float, rate: int = 8000) -> tuple[float, float]:
    """Least-squares fit of a sine at ``freq``; returns (amplitude, SNR dB of the residual)."""
    t = np.arange(len(x)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t),
                      np.ones_like(t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
    fit = basis @ coef
    resid = x - fit
    return float(np.hypot(coef[0], coef[1])), float(10 * np.log10(np.sum(fit ** 2) / np.sum(resid ** 2)))


def _peak_freq(x: np.ndarray, rate: int = 8000) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=16 * len(x)))
    return float(np.argmax(spec) * rate / (16 * len(x)))


@pytest.mark.asyncio
@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
async def test_tone_between_two_endpoints(codec):
    a = await RtpEndpoint.create(HOST, codec=codec)
    b = await RtpEndpoint.create(HOST, codec=codec)
    a.set_remote(b.local_address)
    b.set_remote(a.local_address)
    try:
        frames = 60
        t = np.arange(frames * N) / 8000
        tone_a = np.round(0.3 * 32767 * np.sin(2 * np.pi * 1004 * t)).astype(np.int16)
        tone_b = np.round(0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        got_a, got_b = [], []
        async for tick in FrameClock(0.020):
            if tick.index < frames:
                a.write_frame(tone_a[tick.index * N:(tick.index + 1) * N])
                b.write_frame(tone_b[tick.index * N:(tick.index + 1) * N])
            got_b.append(b.read_frame())
            got_a.append(a.read_frame())
            if tick.index >= frames + 4:
                break
        for sent, frames_out, freq, rx, tx in ((tone_a, got_b, 1004, b, a), (tone_b, got_a, 440, a, b)):
            out = np.concatenate(frames_out)
            assert all(len(f) == N and f.dtype == np.int16 for f in frames_out)
            coded = g711.decode(codec, g711.encode(codec, sent))
            start = int(np.flatnonzero(out)[0]) - int(np.flatnonzero(coded)[0])
            # Bit-exact G.711 audio, no loss, no concealment, latency = target (+ <= 1 frame).
            assert np.array_equal(out[start:start + len(coded)], coded)
            assert start in (2 * N, 3 * N), start
            assert rx.stats.lost == 0 and rx.stats.late == 0 and rx.stats.dropped == 0
            # the only concealment: the reads after the stream ended (underrun, not loss)
            assert rx.stats.concealed == rx.stats.inserted <= 3
            assert rx.stats.packets_received == frames == tx.stats.packets_sent
            assert rx.stats.bytes_received == frames * N
            seg = out[start:start + len(coded)].astype(np.float64)
            peak = _peak_freq(seg)
            amp, snr_fit = _fit_sine(seg, freq)
            err = seg - sent
            snr = 10 * np.log10(np.sum(sent.astype(np.float64) ** 2) / np.sum(err ** 2))
            print(f"{codec} {freq} Hz over UDP: peak {peak:.1f} Hz, amplitude {amp:.0f}, "
                  f"SNR vs original {snr:.1f} dB, vs fitted sine {snr_fit:.1f} dB")
            assert abs(peak - freq) < 2.0
            assert abs(amp - 0.3 * 32767) < 0.02 * 0.3 * 32767
            assert snr >= 35.0 and snr_fit >= 35.0
    finally:
        a.close()
        b.close()


@pytest.mark.asyncio
async def test_pcma_on_the_wire_is_alaw_with_pt8():
    sink = raw_socket()
    ep = await RtpEndpoint.create(HOST, codec="PCMA", remote=sink.getsockname())
    try:
        pcm = np.round(8000 * np.sin(np.arange(N) / 5)).astype(np.int16)
        ep.write_frame(pcm)
        ep.write_frame(pcm)
        pkts = await recv_all(sink)
        assert [p.payload_type for p in pkts] == [8, 8]
        assert pkts[0].payload == g711.encode("PCMA", pcm)
        assert pkts[0].marker and not pkts[1].marker
        assert pkts[1].sequence_number == (pkts[0].sequence_number + 1) & 0xFFFF
        assert pkts[1].timestamp == (pkts[0].timestamp + N) & 0xFFFFFFFF
        assert pkts[0].ssrc == pkts[1].ssrc == ep.ssrc
    finally:
        ep.close()
        sink.close()


@pytest.mark.asyncio
async def test_random_initial_seq_ts_ssrc():
    eps = [await RtpEndpoint.create(HOST) for _ in range(4)]
    try:
        assert len({e.ssrc for e in eps}) == 4
        assert len({e._seq for e in eps}) > 1 and len({e._ts for e in eps}) > 1
    finally:
        for e in eps:
            e.close()


async def _feed(ep: RtpEndpoint, src: socket.socket, schedule: dict[int, list[bytes]], ticks: int) -> list:
    """Per tick: send the tick's datagrams, wait until they were received, read one frame."""
    out = []
    for t in range(ticks):
        want = ep.stats.packets_received + ep.stats.malformed + ep.stats.ignored + len(schedule.get(t, []))
        for data in schedule.get(t, []):
            src.sendto(data, ep.local_address)
        await wait_until(lambda: ep.stats.packets_received + ep.stats.malformed + ep.stats.ignored >= want)
        out.append(ep.read_frame())
    return out


@pytest.mark.asyncio
async def test_reorder_duplicates_loss_and_seq_wrap_over_udp():
    ep = await RtpEndpoint.create(HOST)
    src = raw_socket()
    try:
        order = list(range(40))
        order[3], order[4] = order[4], order[3]
        order[9], order[10] = order[10], order[9]   # across the seq wrap (65530 + 6 = 0)
        lost = {20, 21}
        sched: dict[int, list[bytes]] = {}
        for t, k in enumerate(order):
            if k in lost:
                continue
            data = audio(k, seq0=65530, ts0=2**32 - 5 * N).serialize()
            sched[t] = [data, data] if k % 7 == 0 else [data]   # duplicates
        frames = await _feed(ep, src, sched, 42)
        ids = [ident(f) for f in frames]
        assert [i for i in ids if i is not None] == [k for k in range(40) if k not in lost]
        assert ids[22] is None and ids[23] is None            # the two lost frames, concealed
        assert frames[22].any()                                # faded repeat, not silence
        st = ep.stats
        assert st.lost == 2 and st.concealed == 2 and st.duplicates == 5 and st.late == 0
        assert st.packets_received == 38 + 5
    finally:
        ep.close()
        src.close()


@pytest.mark.asyncio
async def test_ssrc_change_over_udp():
    ep = await RtpEndpoint.create(HOST)
    src = raw_socket()
    try:
        sched = {t: [audio(t).serialize()] for t in range(10)}
        for t in range(10, 20):
            sched[t] = [audio(t + 40, seq0=5, ts0=77, ssrc=0x5555).serialize()]
        frames = await _feed(ep, src, sched, 22)
        ids = [ident(f) for f in frames]
        assert [i for i in ids if i is not None] == list(range(10)) + list(range(50, 60))
        assert ep.jitter.stats.ssrc_changes == 1 and ep.stats.concealed == 0
    finally:
        ep.close()
        src.close()


@pytest.mark.asyncio
async def test_header_extension_csrc_padding_event16_and_garbage_do_not_disturb():
    flashes: list[str] = []
    ep = await RtpEndpoint.create(HOST, on_dtmf=flashes.append)
    src = raw_socket()
    try:
        sched: dict[int, list[bytes]] = {t: [audio(t).serialize()] for t in range(30)}
        # frame 5 with 2 CSRCs, a one-byte-header extension and 7 bytes of padding
        sched[5] = [audio(5, csrc=[11, 22], extension_profile=0xBEDE,
                          extension=b"\x10\x01\x00\x00", padding_size=7).serialize()]

        def ev(event: int, end: bool, seq: int, ts: int = 555) -> bytes:
            return RtpPacket(101, seq, ts, 0xCAFE,
                             TelephoneEvent(event, end, 10, 160).serialize()).serialize()
        sched[8] += [ev(16, False, 2000), ev(16, True, 2001), ev(16, True, 2002)]
        sched[9] += [ev(17, False, 2003, 999), ev(255, True, 2004, 1000)]
        sched[10] += [
            b"\x80",                                          # short
            b"\x40\x00" + b"\x00" * 20,                       # RTP version 1
            b"\xa0\x00" + b"\x00" * 10 + b"\xff\x40",         # bad padding
            b"\x90\x00" + b"\x00" * 10 + b"\xbe\xde\x00\x09",  # extension beyond the end
            RtpPacket(101, 2005, 1001, 0xCAFE, b"\x01").serialize(),  # short event payload
            RtpPacket(96, 2006, 1002, 0xCAFE, b"\x00" * 160).serialize(),  # unknown PT
            b"\x80\xc8\x00\x06" + b"\x00" * 24,               # RTCP SR on the RTP port
        ]
        frames = await _feed(ep, src, sched, 32)
        ids = [ident(f) for f in frames]
        assert ids[2:32] == list(range(30))                   # every frame, in order
        assert ep.stats.concealed == 0
        assert flashes == ["!"]                               # event 16 = flash, once
        assert ep.stats.malformed == 5
        assert ep.stats.ignored == 4                          # events 17/255, PT 96, RTCP
    finally:
        ep.close()
        src.close()


@pytest.mark.asyncio
async def test_dtmf_between_endpoints_in_order():
    digits: list[str] = []
    a = await RtpEndpoint.create(HOST)
    b = await RtpEndpoint.create(HOST, on_dtmf=digits.append)
    a.set_remote(b.local_address)
    try:
        sent = "0123456789*#ABCD!"
        a.send_dtmf(sent[:8], duration_ms=60)
        a.send_dtmf(sent[8:], duration_ms=100)
        silence = np.zeros(N, dtype=np.int16)
        for _ in range(200):
            a.write_frame(silence)
            await asyncio.sleep(0)
            if not a.dtmf_pending:
                break
        await wait_until(lambda: len(digits) >= len(sent))
        await asyncio.sleep(0.02)
        assert "".join(digits) == sent                        # in order, each exactly once
        assert a.stats.dtmf_sent == b.stats.dtmf_received == len(sent)
    finally:
        a.close()
        b.close()


@pytest.mark.asyncio
async def test_dtmf_packets_follow_rfc4733_and_audio_timestamps():
    sink = raw_socket()
    ep = await RtpEndpoint.create(HOST, remote=sink.getsockname(), dtmf_payload_type=96)
    try:
        tone = np.full(N, 1000, dtype=np.int16)
        ep.write_frame(tone)
        ep.send_dtmf("5", duration_ms=100)
        for _ in range(10):
            ep.write_frame(tone)
        pkts = await recv_all(sink)
        seqs = [p.sequence_number for p in pkts]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
        ts0 = pkts[0].timestamp
        events = [p for p in pkts if p.payload_type == 96]
        audio_pkts = [p for p in pkts if p.payload_type == 0]
        assert len(events) == 4 + 3                            # start, 3 updates, end x3
        assert events[0].marker and not any(e.marker for e in events[1:])
        assert {e.timestamp for e in events} == {(ts0 + N) & 0xFFFFFFFF}
        parsed = [TelephoneEvent.parse(e.payload) for e in events]
        assert all(p.event == 5 for p in parsed)
        assert [p.duration for p in parsed] == [160, 320, 480, 640, 800, 800, 800]
        assert [p.end for p in parsed] == [False] * 4 + [True] * 3
        # audio resumes right after the event on the same timestamp clock, with the marker set
        assert [(p.timestamp - ts0) & 0xFFFFFFFF for p in audio_pkts] == [0] + [k * N for k in range(6, 11)]
        assert audio_pkts[1].marker and not audio_pkts[2].marker
    finally:
        ep.close()
        sink.close()


@pytest.mark.asyncio
async def test_received_events_are_deduplicated():
    got: list[str] = []
    ep = await RtpEndpoint.create(HOST, on_dtmf=got.append)
    src = raw_socket()
    try:
        def ev(code, end, dur, seq, ts):
            return RtpPacket(101, seq, ts, 7, TelephoneEvent(code, end, 10, dur).serialize(),
                             marker=dur == 160).serialize()
        pkts = [ev(1, False, 160 * i, 10 + i, 8000) for i in range(1, 5)]
        pkts += [ev(1, True, 800, 15 + i, 8000) for i in range(3)]
        pkts += pkts[:3]                                       # network duplicates
        pkts += [ev(1, False, 160, 30, 9600), ev(1, True, 320, 31, 9600)]  # same digit again
        pkts += [ev(9, True, 800, 40, 12000)]                  # start packets lost: end only
        for p in pkts:
            src.sendto(p, ep.local_address)
        await wait_until(lambda: ep.stats.packets_received >= len(pkts))
        assert got == ["1", "1", "9"]
    finally:
        ep.close()
        src.close()


@pytest.mark.asyncio
async def test_dtmf_queue_when_no_callback():
    a = await RtpEndpoint.create(HOST)
    b = await RtpEndpoint.create(HOST)
    a.set_remote(b.local_address)
    try:
        a.send_dtmf("#7", duration_ms=40)
        for _ in range(10):
            a.write_frame(np.zeros(N, dtype=np.int16))
        first = await asyncio.wait_for(b.dtmf_queue.get(), 1)
        second = await asyncio.wait_for(b.dtmf_queue.get(), 1)
        assert (first, second) == ("#", "7")
    finally:
        a.close()
        b.close()


def raw_socket_on(host: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


@pytest.mark.asyncio
async def test_symmetric_rtp_latches_once_and_cannot_be_hijacked():
    dead = raw_socket()                                        # the address from SDP (NATed)
    real = raw_socket()                                        # where packets really come from
    other = raw_socket()                                       # an attacker on an allowed network
    outsider = raw_socket_on("127.0.0.2")                      # an attacker outside the media networks
    ep = await RtpEndpoint.create(HOST, remote=dead.getsockname(), source_allowed=lambda ip: ip == HOST)
    try:
        assert ep.remote_address == dead.getsockname()
        outsider.sendto(audio(0).serialize(), ep.local_address)        # not allowed: never latched
        await wait_until(lambda: ep.stats.foreign == 1)
        assert ep.remote_address == dead.getsockname() and ep.stats.packets_received == 0
        real.sendto(audio(1).serialize(), ep.local_address)            # the first allowed source
        await wait_until(lambda: ep.stats.packets_received == 1)
        assert ep.remote_address == real.getsockname()
        ep.write_frame(np.zeros(N, dtype=np.int16))
        assert len(await recv_all(real)) == 1
        assert await recv_all(dead, 0.02) == []
        # a source that keeps sending does not take the stream over, however long it tries
        for k in range(2, 22):
            other.sendto(audio(k).serialize(), ep.local_address)
        await wait_until(lambda: ep.stats.foreign == 21)
        assert ep.remote_address == real.getsockname() and ep.stats.packets_received == 1
        ep.write_frame(np.zeros(N, dtype=np.int16))
        assert len(await recv_all(real)) == 1 and await recv_all(other, 0.02) == []
        # packets from the signalled address itself are always taken
        dead.sendto(audio(30).serialize(), ep.local_address)
        await wait_until(lambda: ep.stats.packets_received == 2)
        assert ep.remote_address == dead.getsockname()
        # signalling moves the stream: a new SDP address latches anew (to an allowed source)
        ep.set_remote(real.getsockname())
        assert ep.remote_address == real.getsockname()
        other.sendto(audio(31).serialize(), ep.local_address)
        await wait_until(lambda: ep.stats.packets_received == 3)
        assert ep.remote_address == other.getsockname()
    finally:
        ep.close()
        for s in (dead, real, other, outsider):
            s.close()


@pytest.mark.asyncio
async def test_hold_directions_keep_socket_and_stream():
    sink = raw_socket()
    ep = await RtpEndpoint.create(HOST, remote=sink.getsockname())
    local = ep.local_address
    try:
        f = np.zeros(N, dtype=np.int16)
        ep.write_frame(f)
        for direction in ("recvonly", "inactive"):
            ep.set_direction(direction)
            ep.write_frame(f)
            ep.write_frame(f)
        ep.set_direction("sendonly")
        ep.write_frame(f)
        ep.set_direction("sendrecv")
        ep.write_frame(f)
        pkts = await recv_all(sink)
        assert len(pkts) == 3
        assert ep.local_address == local
        assert [(p.sequence_number - pkts[0].sequence_number) & 0xFFFF for p in pkts] == [0, 1, 2]
        assert [(p.timestamp - pkts[0].timestamp) & 0xFFFFFFFF for p in pkts] == [0, 5 * N, 6 * N]
        assert pkts[1].marker and not pkts[2].marker
        # while we hold the remote (sendonly), its audio is not played
        ep.set_direction("sendonly")
        sink.sendto(audio(0).serialize(), local)
        await wait_until(lambda: ep.stats.packets_received == 1)
        assert not ep.read_frame().any() and len(ep.jitter) == 0
        with pytest.raises(ValueError):
            ep.set_direction("hold")
    finally:
        ep.close()
        sink.close()
    assert ep.closed


# -- ports ------------------------------------------------------------------------------------


def _free_range(width: int = 20) -> int:
    """An even base port whose range looks free (the test still checks via the pool)."""
    for _ in range(50):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        port = s.getsockname()[1] & ~1
        s.close()
        if 10000 < port < 65000 - width:
            return port
    raise RuntimeError("no port range")


def test_port_pool_skips_busy_ports_and_never_duplicates():
    base = _free_range()
    busy_rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy_rtp.bind((HOST, base))                                # another process' RTP port
    busy_rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy_rtcp.bind((HOST, base + 3))                           # ... and an RTCP port
    pool = PortPool(base, base + 11, host=HOST)
    try:
        got = [pool.acquire() for _ in range(4)]
        assert got == [base + 4, base + 6, base + 8, base + 10]
        assert all(p % 2 == 0 for p in got)
        with pytest.raises(PortPoolExhausted):
            pool.acquire()
        assert pool.busy_skips >= 2 and pool.in_use == 4
        pool.release(base + 6)
        with pytest.raises(ValueError):
            pool.release(base + 6)                             # not out twice
        busy_rtp.close()
        again = [pool.acquire(), pool.acquire()]
        assert sorted(again) == [base, base + 6]
        assert len(set(got + again)) == 5 and pool.in_use == 5
    finally:
        busy_rtp.close()
        busy_rtcp.close()


def test_port_pool_stress_unique():
    base = _free_range(200)
    pool = PortPool(base, base + 199, host=HOST)
    out: set[int] = set()
    held = []
    for i in range(2000):
        if held and i % 3 == 0:
            p = held.pop(0)
            out.discard(p)
            pool.release(p)
        else:
            try:
                p = pool.acquire()
            except PortPoolExhausted:
                continue
            assert p not in out
            out.add(p)
            held.append(p)
    assert pool.in_use == len(out)


@pytest.mark.asyncio
async def test_endpoint_uses_and_releases_pool_port():
    base = _free_range()
    pool = PortPool(base, base + 5, host=HOST)
    a = await RtpEndpoint.create(HOST, port_pool=pool)
    b = await RtpEndpoint.create(HOST, port_pool=pool)
    assert {a.local_address[1], b.local_address[1]} <= {base, base + 2, base + 4}
    assert a.local_address[1] != b.local_address[1] and pool.in_use == 2
    a.close()
    a.close()
    assert pool.in_use == 1
    await asyncio.sleep(0)
    c = await RtpEndpoint.create(HOST, port_pool=pool)
    d = await RtpEndpoint.create(HOST, port_pool=pool)
    assert len({b.local_address, c.local_address, d.local_address}) == 3
    with pytest.raises(PortPoolExhausted):
        await RtpEndpoint.create(HOST, port_pool=pool)
    for e in (b, c, d):
        e.close()
    assert pool.in_use == 0
