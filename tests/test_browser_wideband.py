"""Chromium's G.722, relayed packet by packet to a G.722 desk phone (baresip's g722 module):
the dialer page calls the phone with `webrtc.codecs: [G722]`, and tones above G.711's 4 kHz
band edge cross both ways. (Chromium offers opus, red, G722/8000, PCMU, PCMA...; the bridge, as
the answerer, takes the first of `webrtc.codecs`.)
"""

from __future__ import annotations

import asyncio
import os

import pytest

from stack import kamailio, start_bridge  # noqa: F401  (fixtures)
from test_browser import (CHROME_AGC_SETTLES, CHROMIUM, CHROMIUM_FLAGS, Dialer, async_playwright, blocking,
                          steady_tone)
from testbed.audio import tone_wav
from testbed.fixtures import baresip_factory, kamailio_factory  # noqa: F401

MIC_HZ, PHONE_HZ = 5000, 6000


@pytest.fixture
async def wide_browser(tmp_path):
    """Chromium whose fake microphone says 5 kHz (48 kHz WAV, looped)."""
    if async_playwright is None:
        pytest.fail("Playwright is not installed: pip install playwright", pytrace=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium", pytrace=False)
    mic = tone_wav(tmp_path / "mic-5khz.wav", MIC_HZ, 10.0, rate=48000, dbfs=-13.0)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=CHROMIUM_FLAGS + [f"--use-file-for-fake-audio-capture={mic}"])
        try:
            yield b
        finally:
            await b.close()


async def test_chromium_g722_relayed_to_a_g722_phone(start_bridge, kamailio, baresip_factory, wide_browser):  # noqa: F811
    def wide(d: dict) -> None:
        d["sip"]["codecs"] = ["G722", "PCMU", "PCMA"]
        d["webrtc"]["codecs"] = ["G722", "PCMU", "PCMA", "opus"]
    bridge = await start_bridge(wide)
    phone = baresip_factory("2001", kamailio, tone_hz=PHONE_HZ, codecs="G722/16000/1")
    dialer = await Dialer.open(wide_browser, bridge)
    await dialer.sign_in("alice")
    await dialer.dial("desk-2001@demo-desk")
    await dialer.wait_state("connected", 20)
    await bridge.wait_log("media relay, app leg G722, SIP leg G722")
    await blocking(phone.wait_established, 5)
    await asyncio.sleep(4)                                          # baresip's audio starts 1-3 s late
    freq, snr, _ = await dialer.heard_tone(2.0)
    assert abs(freq - PHONE_HZ) < 30 and snr > 15, (freq, snr, dialer.dump())   # 6 kHz reached the page
    await asyncio.sleep(2)
    mark = phone.mark()
    await dialer.page.click("#hangup")
    await dialer.ended(5)
    await blocking(phone.wait_closed, 5, mark)
    freq, snr, _ = await blocking(steady_tone, phone.latest_recording("dec"), CHROME_AGC_SETTLES)
    assert abs(freq - MIC_HZ) < 30 and snr > 15, (freq, snr)         # 5 kHz from the microphone reached the phone
