"""HTTPS and WSS: the daemon serves its platform and notification listeners with a certificate of
a private CA made by the test, and everything talks TLS to it.

Headless Chromium opens the dialer at https://bridge.test (a name, not localhost: mapped to
127.0.0.1 by --host-resolver-rules; the test CA's server key trusted by
--ignore-certificate-errors-spki-list), so the page is a secure context only through TLS; it
signs in over wss, and calls a baresip desk phone through Kamailio. The platform pushes to the
notification endpoint over https (platform.callback_ca), the bridge's own app leg connects to
wss (bridge.platform_ca). Tones are checked both ways. The guarded listener keeps its rules
over TLS: a silent connection is closed within header_timeout, counted as a TLS handshake
refusal, and TLS below 1.2 is refused.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
import warnings
from urllib.parse import urlsplit

import pytest

from bridge import tls
from stack import kamailio, start_bridge  # noqa: F401  (fixtures)
from test_browser import (CHROME_AGC_SETTLES, CHROMIUM, CHROMIUM_FLAGS, MIC_HZ, PHONE_HZ, Dialer, mic_wav,  # noqa: F401
                          steady_tone)
from testbed.certs import make_ca_and_server
from testbed.fixtures import baresip_factory, kamailio_factory  # noqa: F401

try:
    from playwright.async_api import async_playwright
except ImportError:  # fail loudly in the test, never skip
    async_playwright = None

NAME = "bridge.test"


async def blocking(fn, *args, **kw):
    return await asyncio.to_thread(fn, *args, **kw)


@pytest.fixture
def certs(tmp_path):
    return make_ca_and_server(tmp_path / "pki", [NAME], ["127.0.0.1"])


def over_tls(certs):
    """The sample config with both listeners on TLS, and every client trusting the test CA."""
    def edit(d: dict) -> None:
        web = d["platform"]["listen"].rsplit(":", 1)[1]
        notify = d["notifications"]["listen"].rsplit(":", 1)[1]
        files = {"cert": str(certs.cert), "key": str(certs.key)}
        d["platform"].update({"tls": files, "public_url": f"https://127.0.0.1:{web}",
                              "callback_ca": str(certs.ca)})
        d["platform"]["services"]["demo-desk"]["push_url"] = f"https://127.0.0.1:{notify}/v1/notifications"
        d["notifications"]["tls"] = files
        d["notifications"]["http"] = {"header_timeout": "2s"}
        d["bridge"]["platform_ca"] = str(certs.ca)
    return edit


async def test_chromium_opens_the_dialer_over_https_by_name_and_calls_a_desk_phone(
        start_bridge, kamailio, baresip_factory, certs, mic_wav):  # noqa: F811
    if async_playwright is None:
        pytest.fail("Playwright is not installed (pip install playwright; never `playwright install`)", pytrace=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium", pytrace=False)
    bridge = await start_bridge(over_tls(certs))
    assert bridge.platform_url.startswith("https://") and bridge.admin.startswith("https://")
    port = urlsplit(bridge.platform_url).port
    phone = baresip_factory("2001", kamailio, tone_hz=PHONE_HZ)
    flags = CHROMIUM_FLAGS + [f"--use-file-for-fake-audio-capture={mic_wav}",
                              f"--host-resolver-rules=MAP {NAME} 127.0.0.1",
                              f"--ignore-certificate-errors-spki-list={certs.spki_sha256}"]
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        try:
            page = await (await browser.new_context()).new_page()
            dialer = Dialer(page, bridge)
            await page.goto(f"https://{NAME}:{port}/dialer")
            await page.wait_for_selector("body[data-ready=true]", timeout=10_000)
            assert await page.evaluate("[location.origin, window.isSecureContext]") == [f"https://{NAME}:{port}", True]
            await page.fill("#user", "alice")
            await page.fill("#service", "demo-app")
            await page.fill("#token", bridge.token("alice"))   # dev tokens are for loopback names only
            await page.click("#sign-in")
            await page.wait_for_selector("#presence.on", timeout=10_000)   # listening over wss
            await dialer.dial("desk-2001@demo-desk")
            await dialer.wait_state("connected", 20)
            await blocking(phone.wait_established, 5)
            await asyncio.sleep(4)                          # baresip's audio starts 1-3 s late
            freq, snr, _ = await dialer.heard_tone(2.0)
            assert abs(freq - PHONE_HZ) < 10 and snr > 20, (freq, snr, dialer.dump())
            await asyncio.sleep(CHROME_AGC_SETTLES)
            mark = phone.mark()
            await page.click("#hangup")
            shown = await dialer.ended(5)
            assert shown["name"] == "NORMAL", shown
            await blocking(phone.wait_closed, 5, mark)
        finally:
            await browser.close()
    freq, snr, _ = await blocking(steady_tone, phone.latest_recording("dec"), CHROME_AGC_SETTLES)
    assert abs(freq - MIC_HZ) < 10 and snr > 20, (freq, snr)
    log = bridge.log()
    assert f"listening on https://127.0.0.1:{port}" in log, log[-2000:]


async def test_tls_listener_keeps_its_guard(start_bridge, certs):  # noqa: F811
    bridge = await start_bridge(over_tls(certs))
    n = bridge.cfg.notifications
    assert n is not None and n.tls is not None
    status, body = await bridge.health()                    # https, verified against the test CA
    assert status == 200, body

    # a client that never starts its handshake is closed within header_timeout (2 s)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(n.host, n.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert 1.5 < time.monotonic() - started < 4
    writer.close()
    assert 'bridge_http_refused_total{listener="notifications",reason="tls_handshake"} 1.0' in await bridge.metrics()

    # TLS 1.1 is refused; plain HTTP gets no answer
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(str(certs.ca))
    with warnings.catch_warnings():                        # deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.wait_for(asyncio.open_connection(n.host, n.port, ssl=old, server_hostname="127.0.0.1"), 5)
    with socket.create_connection((n.host, n.port), timeout=5) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert not raw.recv(4096).startswith(b"HTTP/")

    # a client that does not trust the CA fails, one that does gets in
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.wait_for(asyncio.open_connection(n.host, n.port, ssl=tls.client_context()), 5)
    reader, writer = await asyncio.open_connection(n.host, n.port, ssl=tls.client_context(str(certs.ca)))
    assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    writer.close()
