"""End to end: the PBX's RTP source switches (music on hold) and restarts; the app keeps hearing it.

A sipp "desk phone" answers the bridge and plays a pcap written byte by byte: a tone from SSRC A,
music on hold from SSRC B, A again where it left off, then A with its sequence and timestamp
restarted; each part has its own frequency. An SDK app user calls it through `bridge run`
(relayed packets or the transcoding jitter buffer) and must hear every part, in order, each
almost whole: a part the bridge dropped would be missing (one-way audio for the rest of the call).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bridge.audio import RATE, tone_analysis
from parties import Party
from stack import kamailio, start_bridge  # noqa: F401  (fixtures)
from testbed.fixtures import kamailio_factory  # noqa: F401
from testbed.pcap import PcapRecord, Rtp, ulaw_encode, write_pcap
from testbed.sipp_media import SippPcapUas

FRAME, PTIME, PART = 160, 0.020, 100           # 100 frames: 2 s per part
A, B = 0x0A0A0A0A, 0x0B0B0B0B
# (frequency, ssrc, first sequence number, first timestamp) of each part
PARTS = [
    (1000.0, A, 60_000, 4_000_000_000),              # the phone (sequence and timestamp wrap)
    (600.0, B, 7, 123_456),                          # music on hold: another source
    (1400.0, A, (60_000 + PART) & 0xFFFF, (4_000_000_000 + PART * FRAME) & 0xFFFFFFFF),  # A again
    (800.0, A, 0, 0),                                # A restarts its sequence and timestamp
]


def crafted_parts() -> list[PcapRecord]:
    records = []
    for p, (freq, ssrc, seq0, ts0) in enumerate(PARTS):
        n = np.arange(PART * FRAME)
        pcm = np.round(0.3 * 32767 * np.sin(2 * np.pi * freq * n / 8000)).astype(np.int16)
        for k in range(PART):
            rtp = Rtp(pt=0, seq=(seq0 + k) & 0xFFFF, ts=(ts0 + k * FRAME) & 0xFFFFFFFF, ssrc=ssrc,
                      payload=ulaw_encode(pcm[k * FRAME:(k + 1) * FRAME]), marker=k == 0)
            records.append(PcapRecord(1_700_000_000 + (p * PART + k) * PTIME, rtp.pack()))
    return records


def tone_runs(samples: np.ndarray, block: float = 0.1) -> list[tuple[float, float]]:
    """(frequency, seconds) of each run of 100 ms blocks where one of the parts' tones is heard."""
    size = int(block * RATE)
    runs: list[list[float]] = []
    for i in range(0, len(samples) - size + 1, size):
        freq, snr = tone_analysis(samples[i:i + size])
        tone = next((f for f, *_ in PARTS if abs(freq - f) < 25 and snr > 15), None)
        if tone is None:
            continue
        if runs and runs[-1][0] == tone:
            runs[-1][1] += block
        else:
            runs.append([tone, block])
    return [(f, round(s, 1)) for f, s in runs]


@pytest.mark.parametrize("media", ["transcode", "relay"])
async def test_app_hears_the_phone_through_source_switches_and_restarts(start_bridge, kamailio, tmp_path,  # noqa: F811
                                                                      media):
    bridge = await start_bridge(lambda d: d["bridge"].update(media=media))
    pcap = write_pcap(tmp_path / "moh.pcap", crafted_parts())
    seconds = len(PARTS) * PART * PTIME
    uas = await asyncio.to_thread(lambda: SippPcapUas(kamailio, "2003", pcap, hold_ms=int(seconds * 1000) + 1000,
                                                      workdir=tmp_path / "sipp").start())
    alice = Party(bridge.platform_url, "alice")
    await alice.make_call(("desk-2003", "demo-desk"), bridge.token("alice"))
    await asyncio.wait_for(alice.events.connected.wait(), 15)
    assert alice.call.codec == "PCMU"
    ended = await alice.ended(seconds + 10)                          # sipp hangs up after its pcap
    result = await asyncio.to_thread(uas.wait, 10)
    assert result.ok, result.describe()
    runs = tone_runs(alice.heard.samples)
    print(f"{media}: heard {runs}; ended {ended}")
    assert [f for f, _ in runs] == [f for f, *_ in PARTS], runs      # every part, in order, once
    assert runs[0][1] >= 1.4 and all(s >= 1.8 for _, s in runs[1:]), runs   # each almost whole
