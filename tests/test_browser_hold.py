"""Hold in the browser SDK and the dialer, in headless Chromium against `bridge run`, Kamailio and
baresip: the desk phone's hold and resume reach the page (evtPeerHold / evtPeerUnhold, "on hold"
shown), and the page's Hold button puts the phone on hold (a re-INVITE; the phone is sent
silence, read off the wire) and Resume brings the page's microphone back to it."""

from __future__ import annotations

import asyncio
import time

from stack import kamailio, start_bridge  # noqa: F401  (fixtures)
from test_browser import CHROME_AGC_SETTLES, MIC_HZ, PHONE_HZ, Dialer, browser, connect_time, mic_wav  # noqa: F401
from test_hold import level_dbfs, rtp_ports
from testbed import dominant_frequency
from testbed.fixtures import baresip_factory, kamailio_factory  # noqa: F401
from testbed.sniff import RtpSniffer


async def blocking(fn, *args, **kw):
    return await asyncio.to_thread(fn, *args, **kw)


async def hold_shown(dialer: Dialer) -> dict:
    return await dialer.page.evaluate("""() => {
        const s = document.getElementById('hold-state');
        return {text: s.textContent, mine: s.dataset.mine, peer: s.dataset.peer,
                state: document.getElementById('state').textContent,
                button: document.getElementById('hold').getAttribute('aria-pressed'),
                sdk: {held: window.dialer.call.held, peerHeld: window.dialer.call.peerHeld}};
    }""")


async def test_hold_both_ways_in_the_page(start_bridge, kamailio, baresip_factory, browser):  # noqa: F811
    bridge = await start_bridge()
    phone = baresip_factory("2001", kamailio, tone_hz=PHONE_HZ)
    dialer = await Dialer.open(browser, bridge, width=360)
    await dialer.sign_in("alice")
    with RtpSniffer(range(33000, 34000), range(10000, 19999)) as wire:      # the bridge -> the phone
        await connect_time(dialer, lambda: dialer.dial("desk-2001@demo-desk"))
        await dialer.layout_fits(360, ("#call", "#hangup", "#mute", "#hold", "#hold-state", "#state"))
        assert await dialer.page.is_enabled("#hold")
        await asyncio.sleep(CHROME_AGC_SETTLES + 1)

        # the desk phone holds, then resumes: the page is told and says so
        assert (await blocking(phone.command, "hold")).get("ok")
        await dialer.until("document.getElementById('hold-state').dataset.peer === 'true'")
        shown = await hold_shown(dialer)
        assert shown["text"] == "on hold (by the peer)" and shown["state"] == "on hold", shown
        assert shown["sdk"] == {"held": False, "peerHeld": True}, shown
        assert (await blocking(phone.command, "resume")).get("ok")
        await dialer.until("document.getElementById('hold-state').dataset.peer === 'false'")
        assert (await hold_shown(dialer))["state"] == "connected"
        log = await dialer.page.text_content("#log")      # (inside a closed <details>)
        assert "evtPeerHold" in log and "evtPeerUnhold" in log, log
        await asyncio.sleep(2)

        # the page holds: the phone gets a re-INVITE and silence; Resume: the microphone again
        talking = time.monotonic()
        await dialer.page.click("#hold")
        await dialer.until("document.getElementById('hold').getAttribute('aria-pressed') === 'true'")
        held = time.monotonic()
        shown = await hold_shown(dialer)
        assert (shown["text"], shown["state"], shown["sdk"]["held"]) == ("on hold (by you)", "on hold", True), shown
        await asyncio.sleep(4)
        await dialer.page.click("#hold")
        await dialer.until("document.getElementById('hold').getAttribute('aria-pressed') === 'false'")
        resumed = time.monotonic()
        assert (await hold_shown(dialer))["text"] == "-"
        await asyncio.sleep(CHROME_AGC_SETTLES + 1)
        ended = time.monotonic()
        await dialer.page.click("#hangup")
        await dialer.ended(5)
    ports = rtp_ports(bridge.log())
    for since, until in ((talking - 2, talking), (resumed + CHROME_AGC_SETTLES, ended)):
        freq, snr = dominant_frequency(wire.pcm(since, until, ports), 8000)
        assert abs(freq - MIC_HZ) < 10 and snr > 20, (since - talking, freq, snr)
    # (the page shows Resume a moment after the bridge acted on it: leave the last 0.5 s out)
    assert wire.count(held + 0.5, resumed - 0.5, ports) >= 0.9 * 50 * (resumed - held - 1)   # a stream...
    assert level_dbfs(wire.pcm(held + 0.5, resumed - 0.5, ports)) < -60                  # ... of silence
    log = bridge.log()
    assert "the phone holds the call" in log and "the app user holds the call: the phone is on hold" in log
    assert "the app user resumes the call: the phone is back" in log
