"""The browser SDK (/sdk/planetkit.js) and the web dialer (/dialer) in real headless Chromium.

Chromium (Debian's, /usr/bin/chromium) is driven by Playwright; its microphone is a WAV file
with a 1000 Hz tone (--use-file-for-fake-audio-capture). The page talks to `bridge run` (a
subprocess on the sample config), which bridges to baresip desk phones through Kamailio.
Audio is checked by content at both ends: the phone's `-dec.wav` recording and the samples the
page plays (the peer MediaStream captured in the page with WebAudio), each by FFT frequency and
SNR. Missing Chromium or Playwright fails the tests: nothing is skipped.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge import ccparam, config, token, webapp
from bridge.reasons import DisconnectReason, StartFailReason
from stack import ROOT, Daemon, kamailio, start_bridge  # noqa: F401  (fixtures)
from testbed import DEFAULT_USERS, dominant_frequency
from testbed.audio import read_wav, tone_wav
from testbed.fixtures import baresip_factory, kamailio_factory, sipp  # noqa: F401

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # fail loudly in the fixture, never skip
    async_playwright = None

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-gpu",
]
ARTIFACTS = ROOT / "test-artifacts"
MIC_HZ, PHONE_HZ = 1000, 700
MEASURED: dict[str, object] = {}
# Chromium's default capture processing (AGC, noise suppression) takes the steady -13 dBFS tone
# from about -10 dBFS down to about -35 dBFS within 2.5 s of the first packet (measured at the
# phone); a test judges the steady part after it. The SDK keeps the browser's defaults.
CHROME_AGC_SETTLES = 3.0


async def blocking(fn, *args, **kw):
    return await asyncio.to_thread(fn, *args, **kw)


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def mic_wav(tmp_path_factory) -> Path:
    """What Chromium's fake microphone says: 1000 Hz at -13 dBFS, 48 kHz mono (looped)."""
    return tone_wav(tmp_path_factory.mktemp("mic") / "mic-1000hz.wav", MIC_HZ, 10.0, rate=48000, dbfs=-13.0)


@pytest.fixture
async def browser(mic_wav):
    if async_playwright is None:
        pytest.fail("Playwright is not installed: pip install playwright (never `playwright install`: "
                    "the tests use Debian's chromium)", pytrace=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium", pytrace=False)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=CHROMIUM_FLAGS + [f"--use-file-for-fake-audio-capture={mic_wav}"])
        try:
            yield b
        finally:
            await b.close()


# --- the page --------------------------------------------------------------------------------

class Dialer:
    """The dialer page, driven like a user would (clicks and fields), plus an audio tap."""

    def __init__(self, page: Page, bridge: Daemon) -> None:
        self.page = page
        self.bridge = bridge
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    @classmethod
    async def open(cls, browser: Browser, bridge: Daemon, width: int = 360, height: int = 780) -> "Dialer":
        context = await browser.new_context(viewport={"width": width, "height": height})
        page = await context.new_page()
        dialer = cls(page, bridge)
        await page.goto(bridge.platform_url + "/dialer")
        await page.wait_for_selector("body[data-ready=true]", timeout=10_000)
        return dialer

    async def sign_in(self, user: str, service: str = "demo-app") -> None:
        p = self.page
        await p.fill("#user", user)
        await p.fill("#service", service)
        await p.click("#dev-token")
        await self.until("document.getElementById('token').value.split('.').length === 3")
        await p.click("#sign-in")
        await p.wait_for_selector("#presence.on", timeout=10_000)
        assert await p.text_content("#me") == f"{user}@{service}"

    async def until(self, expression: str, timeout: float = 10) -> None:
        """Poll `expression` in the page (page.wait_for_function would need eval, which the CSP forbids)."""
        deadline = time.monotonic() + timeout
        while not await self.page.evaluate(expression):
            if time.monotonic() > deadline:
                pytest.fail(f"never true in the page: {expression}\n{self.dump()}")
            await asyncio.sleep(0.05)

    async def dial(self, callee: str) -> None:
        await self.page.fill("#callee", callee)
        await self.page.click("#call")

    async def wait_state(self, state: str, timeout: float = 20) -> None:
        try:
            await self.page.wait_for_selector(f'#state[data-state="{state}"]', timeout=timeout * 1000)
        except Exception:
            pytest.fail(f"the page never reached {state!r}; it shows {await self.shown()}\n" + self.dump())

    async def shown(self) -> dict:
        return await self.page.evaluate("""() => ({
            state: document.getElementById('state').dataset.state,
            reason: document.getElementById('reason').textContent,
            name: document.getElementById('reason').dataset.name,
            code: document.getElementById('reason').dataset.code})""")

    async def ended(self, timeout: float = 20) -> dict:
        await self.wait_state("disconnected", timeout)
        return await self.shown()

    def dump(self) -> str:
        return "page console:\n  " + "\n  ".join(self.console[-40:])

    async def log_text(self) -> str:
        return await self.page.inner_text("#log")

    async def capture(self, seconds: float) -> tuple[np.ndarray, int]:
        """`seconds` of what the page plays: the peer stream on <audio id=peer-audio>, via WebAudio."""
        got = await self.page.evaluate("""async (seconds) => {
            const stream = document.getElementById('peer-audio').srcObject;
            if (!stream) throw new Error('no peer stream on #peer-audio');
            const ctx = new AudioContext({sampleRate: 48000});
            await ctx.resume();
            const source = ctx.createMediaStreamSource(stream);
            const tap = ctx.createScriptProcessor(4096, 1, 1);
            const mute = ctx.createGain();
            mute.gain.value = 0;
            const want = Math.round(seconds * ctx.sampleRate);
            const chunks = [];
            let n = 0;
            const samples = await new Promise((resolve, reject) => {
                const guard = setTimeout(() => reject(new Error('WebAudio delivered ' + n + ' samples')),
                                         seconds * 1000 + 5000);
                tap.onaudioprocess = (e) => {
                    if (n >= want) return;
                    const data = e.inputBuffer.getChannelData(0);
                    chunks.push(Array.from(data));
                    n += data.length;
                    if (n >= want) { clearTimeout(guard); resolve([].concat(...chunks).slice(0, want)); }
                };
                source.connect(tap);
                tap.connect(mute);
                mute.connect(ctx.destination);
            });
            source.disconnect(); tap.disconnect();
            await ctx.close();
            return {rate: ctx.sampleRate, samples};
        }""", seconds)
        return np.asarray(got["samples"], dtype=np.float64), int(got["rate"])

    async def heard_tone(self, seconds: float = 2.0) -> tuple[float, float, float]:
        """(frequency, SNR dB, level dBFS) of what the page plays."""
        samples, rate = await self.capture(seconds)
        freq, snr = dominant_frequency(samples, rate)
        rms = float(np.sqrt(np.mean(samples ** 2))) if samples.size else 0.0
        return freq, snr, float(20 * np.log10(max(rms, 1e-9) * np.sqrt(2)))

    async def ice(self) -> dict:
        """What ICE did: Chromium's offered candidates and the selected pair (from getStats)."""
        return await self.page.evaluate("""async () => {
            const pc = window.dialer.call._pc;
            const lines = (sdp) => sdp.split('\\r\\n').filter((l) => l.startsWith('a=candidate:'));
            const stats = await pc.getStats();
            let pair = null;
            stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
            const cand = (id) => { const c = stats.get(id); return c && `${c.candidateType} ${c.address}:${c.port}`; };
            return {local: lines(pc.localDescription.sdp), remote: lines(pc.remoteDescription.sdp),
                    selected: pair && {state: pair.state, local: cand(pair.localCandidateId),
                                       remote: cand(pair.remoteCandidateId), rtt: pair.currentRoundTripTime}};
        }""")

    async def layout_fits(self, width: int, selectors: tuple[str, ...] = (
            "#call", "#hangup", "#mute", "#callee", "#keypad [data-digit='0']", "#state", "#reason")) -> None:
        scroll = await self.page.evaluate("document.documentElement.scrollWidth")
        body = await self.page.evaluate("document.body.scrollWidth")
        assert scroll <= width and body <= width, (scroll, body)
        for sel in selectors:
            box = await self.page.locator(sel).bounding_box()
            assert box is not None and await self.page.is_visible(sel), sel
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, (sel, box)


async def connect_time(dialer: Dialer, action) -> float:
    started = time.monotonic()
    await action()
    await dialer.wait_state("connected", 20)
    return time.monotonic() - started


def _frames_db(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    data, rate = read_wav(path)
    x = np.asarray(data, dtype=np.float64)
    if x.dtype.kind in "iu" or np.abs(x).max() > 1.5:
        x = x / 32768.0
    n = rate // 50
    frames = x[: x.size // n * n].reshape(-1, n)
    return x, 20 * np.log10(np.sqrt((frames ** 2).mean(axis=1)) + 1e-12), rate


def steady_tone(path: Path, skip: float, level_dbfs: float = -50.0) -> tuple[float, float, float]:
    """(frequency, SNR dB, level dBFS) of the longest uninterrupted sound in a recording, `skip`
    seconds after it starts (a mute would put the tone's on/off edges into one FFT)."""
    x, db, rate = _frames_db(path)
    start = end = best = 0          # the longest run of loud 20 ms frames: [start, end)
    run_start = None
    for i, value in enumerate(np.append(db, -200.0)):
        if value > level_dbfs and run_start is None:
            run_start = i
        elif value <= level_dbfs and run_start is not None:
            if i - run_start > best:
                start, end, best = run_start, i, i - run_start
            run_start = None
    first = start + int(skip * 50)
    segment = x[first * rate // 50:end * rate // 50]
    if segment.size < rate:
        return 0.0, float("-inf"), -120.0
    freq, snr = dominant_frequency(segment, rate)
    return freq, snr, float(20 * np.log10(np.sqrt((segment ** 2).mean()) * np.sqrt(2) + 1e-12))


def silent_run(path: Path, level_dbfs: float = -50.0) -> float:
    """Longest run (seconds) of 20 ms frames quieter than `level_dbfs` inside the active part."""
    _, db, _ = _frames_db(path)
    loud = db > level_dbfs
    idx = np.flatnonzero(loud)
    if idx.size == 0:
        return 0.0
    best = run = 0
    for is_loud in loud[idx[0]:idx[-1] + 1]:
        run = 0 if is_loud else run + 1
        best = max(best, run)
    return best / 50


def report(name: str, value) -> None:
    MEASURED[name] = value
    print(f"MEASURED {name}: {value}")


# --- (a) and (d): the page calls a desk phone ---------------------------------------------------

async def test_page_calls_desk_phone_audio_both_ways(start_bridge, kamailio, baresip_factory, browser):  # noqa: F811
    bridge = await start_bridge()
    phone = baresip_factory("2001", kamailio, tone_hz=PHONE_HZ)
    dialer = await Dialer.open(browser, bridge, width=360)
    await dialer.layout_fits(360, ("#user", "#service", "#token", "#dev-token", "#sign-in"))  # signed out
    await dialer.sign_in("alice")
    took = await connect_time(dialer, lambda: dialer.dial("desk-2001@demo-desk"))
    report("app->desk connect time (click to evtConnected, s)", round(took, 2))
    established = await blocking(phone.wait_established, 5)
    assert established["peerdisplayname"] == "alice (app)"
    ice = await dialer.ice()
    report("ICE (Chromium <-> aiortc)", ice)
    assert ice["selected"] and ice["selected"]["state"] == "succeeded", ice
    await asyncio.sleep(4)                                          # baresip's audio starts 1-3 s late
    freq, snr, level = await dialer.heard_tone(2.0)
    report("page hears desk phone (Hz, SNR dB, dBFS)", (round(freq, 1), round(snr, 1), round(level, 1)))
    assert abs(freq - PHONE_HZ) < 10 and snr > 20, (freq, snr, dialer.dump())

    # (d) a screenshot during the connected call, and the page fits 360 px
    ARTIFACTS.mkdir(exist_ok=True)
    await dialer.page.screenshot(path=str(ARTIFACTS / "dialer-connected.png"), full_page=True)
    await dialer.layout_fits(360)

    # DTMF: the desk phone gets the digit as an RFC 4733 telephone-event
    mark = phone.mark()
    await dialer.page.click("#keypad [data-digit='5']")
    await dialer.until("document.getElementById('dtmf-sent').textContent === '5'")
    dtmf = await blocking(phone.wait_event, ("CALL_DTMF_START",), 5, mark)
    assert dtmf is not None and "5" in dtmf.get("param", ""), phone.command("callstat")

    # mute: the phone hears silence for a while, then the tone again
    await dialer.page.click("#mute")
    assert await dialer.page.get_attribute("#mute", "aria-pressed") == "true"
    await asyncio.sleep(3)
    await dialer.page.click("#mute")
    assert await dialer.page.get_attribute("#mute", "aria-pressed") == "false"
    await asyncio.sleep(2.5)

    mark = phone.mark()
    await dialer.page.click("#hangup")
    shown = await dialer.ended(5)
    assert (shown["name"], shown["code"]) == ("NORMAL", "1001") and "by caller" in shown["reason"], shown
    await blocking(phone.wait_closed, 5, mark)
    recording = phone.latest_recording("dec")
    freq, snr, level = await blocking(steady_tone, recording, CHROME_AGC_SETTLES)
    report("desk phone hears page microphone (Hz, SNR dB, dBFS)", (round(freq, 1), round(snr, 1), round(level, 1)))
    assert abs(freq - MIC_HZ) < 10 and snr > 20, (freq, snr)
    muted = await blocking(silent_run, recording)
    report("silence at the phone while muted (s, of 3 s muted)", muted)
    assert 2.0 <= muted <= 4.0, muted


# --- (b): a desk phone calls the page's user ------------------------------------------------------

async def test_desk_phone_calls_page_user_audio_both_ways(start_bridge, kamailio, baresip_factory, browser):  # noqa: F811
    bridge = await start_bridge()
    phone = baresip_factory("2002", kamailio, tone_hz=PHONE_HZ)
    dialer = await Dialer.open(browser, bridge)
    await dialer.sign_in("agent-001")
    await blocking(phone.dial, "7001")
    await dialer.page.wait_for_selector("#incoming:not([hidden])", timeout=10_000)
    assert await dialer.page.text_content("#incoming-from") == "desk-2002@demo-desk"
    took = await connect_time(dialer, lambda: dialer.page.click("#accept"))
    report("desk->app connect time (accept click to evtConnected, s)", round(took, 2))
    await blocking(phone.wait_established, 5)
    await asyncio.sleep(4)
    freq, snr, level = await dialer.heard_tone(2.0)
    report("page (callee) hears desk phone (Hz, SNR dB, dBFS)", (round(freq, 1), round(snr, 1), round(level, 1)))
    assert abs(freq - PHONE_HZ) < 10 and snr > 20, (freq, snr, dialer.dump())
    mark = phone.mark()
    await blocking(phone.hangup)
    shown = await dialer.ended(5)
    assert (shown["name"], shown["code"]) == ("NORMAL", "1001") and "by caller" in shown["reason"], shown
    await blocking(phone.wait_closed, 5, mark)
    freq, snr, level = await blocking(steady_tone, phone.latest_recording("dec"), CHROME_AGC_SETTLES)
    report("desk phone hears page (callee) microphone (Hz, SNR dB, dBFS)",
           (round(freq, 1), round(snr, 1), round(level, 1)))
    assert abs(freq - MIC_HZ) < 10 and snr > 20, (freq, snr)


# --- (c): busy, decline and no answer, shown in the page --------------------------------------------

async def test_busy_decline_noanswer_shown_in_page(start_bridge, kamailio, baresip_factory, sipp, browser):  # noqa: F811
    def short_ring(data: dict) -> None:
        data["routes"]["to_sip"][0]["ring_timeout"] = "2s"
    bridge = await start_bridge(short_ring)
    busy_phone = baresip_factory("2001", kamailio, answermode="manual")
    baresip_factory("2002", kamailio, answermode="manual")          # rings, nobody answers
    await blocking(sipp.uas, kamailio, "2003", 603, "Decline")
    dialer = await Dialer.open(browser, bridge)
    await dialer.sign_in("agent-001")

    await dialer.dial("desk-2003@demo-desk")                        # sipp UAS: 603 Decline
    shown = await dialer.ended(15)
    assert (shown["name"], shown["code"]) == ("DECLINE", "1002") and "by callee" in shown["reason"], shown
    assert "DECLINE (1002)" in await dialer.page.text_content("#reason")

    started = time.monotonic()
    await dialer.dial("desk-2002@demo-desk")                        # ring_timeout 2 s: CANCEL
    shown = await dialer.ended(15)
    assert (shown["name"], shown["code"]) == ("NOANSWER", "1203"), shown
    report("NOANSWER after (s, ring_timeout 2 s)", round(time.monotonic() - started, 2))

    mark = busy_phone.mark()
    await dialer.dial("desk-2001@demo-desk")                        # baresip rejects: 486
    await blocking(busy_phone.wait_incoming, 10, mark)
    await blocking(busy_phone.hangup)
    shown = await dialer.ended(15)
    assert (shown["name"], shown["code"]) == ("BUSY", "1202"), shown

    mark = busy_phone.mark()                                       # the page declines a desk phone
    await blocking(busy_phone.dial, "7001")
    await dialer.page.wait_for_selector("#incoming:not([hidden])", timeout=10_000)
    await dialer.page.click("#decline")
    shown = await dialer.ended(5)
    assert (shown["name"], shown["code"]) == ("DECLINE", "1002") and "by callee" in shown["reason"], shown
    closed = await blocking(busy_phone.wait_closed, 5, mark)
    assert "603" in closed["param"], closed
    assert dialer.page.url.endswith("/dialer")


# --- (e): the SDK's local validation, evaluated in the page ------------------------------------------

VALIDATION_JS = """async ({token, ccGood, ccVersion2}) => {
  const audio = document.getElementById('peer-audio');
  const base = {myId: 'alice', myServiceId: 'demo-app', peerId: 'desk-2001', peerServiceId: 'demo-desk',
                accessToken: token, mediaType: 'audio', mediaHtmlElement: {peer: {audio}}};
  const vbase = {myId: 'desk-2001', myServiceId: 'demo-desk', mediaType: 'audio', ccParam: ccGood,
                 mediaHtmlElement: {peer: {audio}}};
  const b64 = (s) => btoa(s).replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');
  const mac = 'M'.repeat(32);
  const cases = {
    make: [
      ['myId empty', {myId: ''}], ['myId 65 chars', {myId: 'a'.repeat(65)}], ['myId space', {myId: 'a b'}],
      ['myId dot', {myId: 'a.b'}], ['myId number', {myId: 7}],
      ['myServiceId underscore', {myServiceId: 'demo_app'}], ['myServiceId 65', {myServiceId: 's'.repeat(65)}],
      ['peerId slash', {peerId: 'desk/2001'}], ['peerServiceId empty', {peerServiceId: ''}],
      ['mediaType video', {mediaType: 'video'}], ['mediaType missing', {mediaType: undefined}],
      ['appServerData 4097 bytes', {appServerData: 'x'.repeat(4097)}],
      ['appServerData 2049 two-byte chars', {appServerData: '\\u00e9'.repeat(2049)}],
      ['appServerData not a string', {appServerData: {a: 1}}],
      ['calls itself', {peerId: 'alice', peerServiceId: 'demo-app'}],
      ['no token', {accessToken: ''}],
    ],
    verify: [
      ['myId bad', {myId: 'x y'}], ['myServiceId bad', {myServiceId: 'demo_desk'}],
      ['mediaType video', {mediaType: 'video'}],
      ['ccParam not base64', {ccParam: '%%%'}], ['ccParam empty', {ccParam: ''}],
      ['ccParam short', {ccParam: b64('x'.repeat(32))}], ['ccParam not JSON', {ccParam: b64('not json' + mac)}],
      ['ccParam JSON without fields', {ccParam: b64('{"v":1}' + mac)}],
      ['ccParam version 2', {ccParam: ccVersion2}], ['ccParam number', {ccParam: 42}],
    ],
  };
  const out = {};
  for (const [kind, list] of Object.entries(cases)) {
    for (const [name, change] of list) {
      const call = new PlanetKit.Call();
      const params = Object.assign({}, kind === 'make' ? base : vbase, change);
      try {
        await (kind === 'make' ? call.makeCall(params) : call.verifyCall(params));
        out[kind + ': ' + name] = {resolved: true};
      } catch (err) {
        out[kind + ': ' + name] = {reason: err.reason, message: err.message, keys: Object.keys(err).sort()};
      }
    }
  }
  // within the limit: 4096 bytes of appServerData, a 64-char id: accepted (platform decides)
  const events = {};
  const ok = async (label, params) => {
    const call = new PlanetKit.Call();
    const done = new Promise((resolve) => {
      params.delegate = {evtDisconnected: (p) => resolve(p)};
    });
    try {
      await call.makeCall(params);
      events[label] = await Promise.race([done, new Promise((r) => setTimeout(() => r('no end'), 8000))]);
    } catch (err) {
      events[label] = {rejected: err};
    }
  };
  await ok('bad token', Object.assign({}, base, {accessToken: 'not-a-jwt', peerId: 'desk-2009'}));
  await ok('4096 bytes to a service nobody has', Object.assign({}, base, {appServerData: 'x'.repeat(4096),
            peerId: 'u'.repeat(64), peerServiceId: 'nowhere.example'}));
  const vcall = new PlanetKit.Call();
  const vdone = new Promise((resolve) => { vbase.delegate = {evtDisconnected: resolve}; });
  await vcall.verifyCall(Object.assign({}, vbase));
  events['forged ccParam'] = await vdone;
  return {
    out, events,
    startFail: PlanetKit.START_FAIL_REASON,
    reasons: PlanetKit.DISCONNECT_REASON,
  };
}"""


async def test_sdk_validates_like_the_seed(start_bridge, browser):
    bridge = await start_bridge()
    dialer = await Dialer.open(browser, bridge)
    cc_good = ccparam.mint(ccparam.CcParam("sid-1", "demo-desk", "desk-2001", "demo-app", "alice",
                                           bridge.cfg.platform.ws_url, time.time() + 60), b"k" * 32)
    payload = json.dumps({"v": 2, "sid": "s", "to": ["a", "b"], "from": ["c", "d"], "url": "ws://x", "exp": 1})
    cc_v2 = base64.urlsafe_b64encode(payload.encode() + b"m" * 32).decode().rstrip("=")
    got = await dialer.page.evaluate(VALIDATION_JS, {"token": bridge.token("alice"), "ccGood": cc_good,
                                                     "ccVersion2": cc_v2})
    F = StartFailReason
    want = {
        "make: myId empty": F.INVALID_USER_ID, "make: myId 65 chars": F.INVALID_USER_ID,
        "make: myId space": F.INVALID_USER_ID, "make: myId dot": F.INVALID_USER_ID,
        "make: myId number": F.INVALID_USER_ID,
        "make: myServiceId underscore": F.INVALID_SERVICE_ID, "make: myServiceId 65": F.INVALID_SERVICE_ID,
        "make: peerId slash": F.INVALID_USER_ID, "make: peerServiceId empty": F.INVALID_SERVICE_ID,
        "make: mediaType video": F.INVALID_MEDIA_TYPE, "make: mediaType missing": F.INVALID_MEDIA_TYPE,
        "make: appServerData 4097 bytes": F.TOO_LONG_APP_SERVER_DATA,
        "make: appServerData 2049 two-byte chars": F.TOO_LONG_APP_SERVER_DATA,
        "make: appServerData not a string": F.TOO_LONG_APP_SERVER_DATA,
        "make: calls itself": F.ID_CONFLICT, "make: no token": F.INVALID_PARAM,
        "verify: myId bad": F.INVALID_USER_ID, "verify: myServiceId bad": F.INVALID_SERVICE_ID,
        "verify: mediaType video": F.INVALID_MEDIA_TYPE,
        "verify: ccParam not base64": F.DECODE_CALL_PARAM, "verify: ccParam empty": F.DECODE_CALL_PARAM,
        "verify: ccParam short": F.DECODE_CALL_PARAM, "verify: ccParam not JSON": F.DECODE_CALL_PARAM,
        "verify: ccParam JSON without fields": F.DECODE_CALL_PARAM,
        "verify: ccParam version 2": F.DECODE_CALL_PARAM, "verify: ccParam number": F.DECODE_CALL_PARAM,
    }
    assert set(got["out"]) == set(want)
    for name, reason in want.items():
        result = got["out"][name]
        assert result.get("reason") == reason.value, (name, result)
        assert result["keys"] == ["message", "reason"] and result["message"], (name, result)
    # platform refusals are not rejections: they arrive as evtDisconnected from the cloud server
    R = DisconnectReason
    for label, reason in (("bad token", R.SERVICE_ACCESS_TOKEN_ERROR),
                          ("4096 bytes to a service nobody has", R.SERVICE_INVALID_ID),
                          ("forged ccParam", R.AUTH_ERROR)):
        event = got["events"][label]
        assert event == {"source": "cloud_server",
                         "reason": {"code": int(reason), "strCode": reason.str_code}}, (label, event)
    # the constants are the call model's
    assert got["startFail"] == {r.name: r.value for r in StartFailReason}
    assert got["reasons"] == {r.name: {"code": int(r), "strCode": r.str_code} for r in DisconnectReason}


# --- the web routes: static files, dev tokens ---------------------------------------------------------

async def test_web_routes_and_dev_tokens(start_bridge):
    bridge = await start_bridge()
    base = bridge.platform_url
    async with aiohttp.ClientSession() as http:
        for path, ctype in (("/sdk/planetkit.js", "application/javascript"), ("/dialer", "text/html"),
                            ("/dialer/dialer.js", "application/javascript"), ("/dialer/dialer.css", "text/css"),
                            ("/dialer/icon.svg", "image/svg+xml")):
            async with http.get(base + path) as r:
                assert r.status == 200 and r.content_type == ctype, (path, r.status, r.content_type)
                assert r.headers["X-Content-Type-Options"] == "nosniff"
        for path in ("/sdk/", "/sdk", "/dialer/web/", "/sdk/../config.yaml", "/dialer/%2e%2e/webapp.py",
                     "/dialer/dialer.html", "/sdk/planetkit.js/.."):
            async with http.get(base + path, allow_redirects=False) as r:
                assert r.status in (404, 405), (path, r.status)
        async with http.get(base + "/dialer/config.json") as r:
            assert (await r.json()) == {"dev_tokens": True}
        async with http.post(base + "/v1/dev/token", json={"service": "demo-app", "user": "alice"}) as r:
            assert r.status == 200
            issued = (await r.json())["token"]
        who = token.verify(issued, {s.api_key: token.ServiceKey(s.id, s.api_key, s.api_secret)
                                    for s in bridge.cfg.platform.services.values()}, max_age=60)
        assert (who.service_id, who.user_id) == ("demo-app", "alice")
        for body, status in (({"service": "nope", "user": "alice"}, 400), ({"service": "demo-app", "user": "a b"}, 400)):
            async with http.post(base + "/v1/dev/token", json=body) as r:
                assert r.status == status and (await r.json())["error"] == "bad_request"
        async with http.post(base + "/v1/dev/token", json={"service": "demo-app", "user": "alice"},
                             headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403 and (await r.json())["error"] == "forbidden"

    # dev_tokens off (the default), and a client that is not on loopback: 403 JSON
    off = config.loads("platform:\n  services:\n    demo-app: {api_key: k, api_secret: " + "s" * 32 + "}\n", "t.yaml")
    assert off.platform.dev_tokens is False
    on = config.loads("platform:\n  dev_tokens: true\n  services:\n    demo-app: {api_key: k, api_secret: "
                      + "s" * 32 + "}\n", "t.yaml")

    @web.middleware
    async def from_afar(request, handler):
        return await handler(request.clone(remote="192.0.2.7"))

    for cfg, middlewares, dev in ((off.platform, [], False), (on.platform, [from_afar], False)):
        app = web.Application(middlewares=middlewares)
        webapp.add_routes(app, cfg)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            r = await client.post("/v1/dev/token", json={"service": "demo-app", "user": "alice"})
            assert r.status == 403 and r.content_type == "application/json", r.status
            assert (await r.json())["error"] == "forbidden"
            r = await client.get("/dialer/config.json")
            assert (await r.json()) == {"dev_tokens": dev}
