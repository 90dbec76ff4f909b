"""End to end over every SIP transport (issue 12): `bridge run`, Kamailio listening on UDP, TCP
and TLS (a certificate from a CA the test makes), baresip desk phones on the same transport, SDK
app users. Each test places a call each way and checks both tones by FFT at both ends.

- UDP, TCP, TLS: the bridge registers and calls over `sip.transport`; over TLS it verifies
  Kamailio's certificate against the test CA and the name `pbx.test`, and the phone offers
  best-effort SRTP (baresip `mediaenc=srtp`: RTP/AVP with a=crypto) that `sip.srtp: optional` takes.
- An SRTP-only phone (baresip `mediaenc=srtp-mand`: RTP/SAVP only), with `sip.srtp: required`,
  and the SIP trace on: the trace shows the crypto lines, never a key.
- liblinphone (linphonec) over TLS with mandatory SRTP: a second, unrelated SIP and SRTP stack.
- IPv6: Kamailio, the bridge (`sip.listen: "[::1]:0"`) and baresip on ::1 only.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from bridge.audio import RATE, tone_analysis
from parties import Party, assert_heard
from stack import BRIDGE_PW, BRIDGE_USER, Daemon, real_call_works, stack_config, start_bridge  # noqa: F401
from testbed import DEFAULT_USERS, wav_dominant_frequency
from testbed.certs import ServerCert, make_ca_and_server
from test_linphone import assert_recorded
from testbed.fixtures import baresip_factory, kamailio_factory, linphone_factory  # noqa: F401


@pytest.fixture
def certs(tmp_path) -> ServerCert:
    return make_ca_and_server(tmp_path / "certs", ["pbx.test", "localhost"], ["127.0.0.1", "::1"])


@pytest.fixture
def kamailio(kamailio_factory, certs):  # noqa: F811   (start_bridge's PBX: this one speaks TLS too)
    return kamailio_factory({**DEFAULT_USERS, BRIDGE_USER: BRIDGE_PW}, invite_auth=True, tls=certs)


def phone_pem(certs: ServerCert) -> Path:
    """baresip's own TLS listener (Kamailio connects to it to reach the phone) needs cert + key."""
    pem = certs.cert.parent / "phone.pem"
    pem.write_text(certs.cert.read_text() + certs.key.read_text())
    return pem


def sip_edit(transport: str, kamailio, certs: ServerCert, **sip) -> callable:
    def edit(d: dict) -> None:
        port = kamailio.tls_port if transport == "tls" else kamailio.port
        d["sip"].update({"transport": transport, "registrar": f"{kamailio.hostref}:{port}", **sip})
        if transport == "tls":
            d["sip"]["tls"] = {"ca": str(certs.ca), "server_name": "pbx.test"}
    return edit


async def phone_calls_app(bridge: Daemon, phone) -> None:
    """Desk phone 2001 (700 Hz) dials 7001; agent-001 (440 Hz) answers: each hears the other."""
    agent = Party(bridge.platform_url, "agent-001", tone=440)
    async with agent.listener(bridge.token("agent-001")) as pushes:
        mark = phone.mark()
        await asyncio.to_thread(phone.dial, "7001")
        push = await pushes.next(timeout=10)
        await agent.verify(push.cc_param)
        await asyncio.wait_for(agent.events.verified.wait(), 5)
        await agent.call.accept_call()
        await asyncio.to_thread(phone.wait_established, 5, mark)
        await asyncio.sleep(5)                                     # baresip's audio starts 1-3 s late
        freq, snr = tone_analysis(agent.heard.samples[-int(1.5 * RATE):])
        assert abs(freq - 700) < 14 and snr > 20, ("the app heard", freq, snr)
        mark = phone.mark()
        await agent.call.end_call()
        await asyncio.to_thread(phone.wait_closed, 5, mark)
    freq, snr = await asyncio.to_thread(wav_dominant_frequency, phone.latest_recording("dec"), 1.0)
    assert abs(freq - 440) < 9 and snr > 20, ("the phone heard", freq, snr)


async def both_ways(bridge: Daemon, phone) -> None:
    await real_call_works(bridge, phone)          # alice (1000 Hz) -> desk-2001 (700 Hz), tones both ways
    await asyncio.sleep(1.1)                      # baresip names recordings by the second
    await phone_calls_app(bridge, phone)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_calls_both_ways_over_each_transport(start_bridge, kamailio, baresip_factory, certs,  # noqa: F811
                                                   transport):
    bridge = await start_bridge(sip_edit(transport, kamailio, certs, srtp="optional"))
    tls = transport == "tls"
    phone = baresip_factory("2001", kamailio, tone_hz=700, transport=transport,
                            mediaenc="srtp" if tls else None, cafile=certs.ca if tls else None,
                            certificate=phone_pem(certs) if tls else None)
    assert f"SIP on {transport} 127.0.0.1:" in bridge.log()
    await both_ways(bridge, phone)
    kamailio_log = kamailio.log_text()
    assert f"REGISTER saved sip:{BRIDGE_USER}@127.0.0.1" in kamailio_log
    if transport != "udp":                        # the Contact names the transport; INVITEs came over it
        assert f";transport={transport}" in kamailio_log
    legs = re.findall(r"SIP leg PCMU( SRTP)?,", bridge.log())
    assert legs == ([" SRTP"] * 2 if tls else [""] * 2), legs      # baresip's best-effort SRTP, taken
    connections = float(re.search(r"^bridge_sip_connections (\S+)$", await bridge.metrics(), re.M).group(1))
    assert connections == 0 if transport == "udp" else connections >= 1      # our flow to the PBX stays up


async def test_an_srtp_only_phone_is_reached_and_reaches_the_app(start_bridge, kamailio, baresip_factory,  # noqa: F811
                                                                  certs):
    bridge = await start_bridge(sip_edit("tls", kamailio, certs, srtp="required", trace=True))
    phone = baresip_factory("2001", kamailio, tone_hz=700, transport="tls", mediaenc="srtp-mand",
                            cafile=certs.ca, certificate=phone_pem(certs))
    await both_ways(bridge, phone)
    log = bridge.log()
    assert re.findall(r"SIP leg PCMU( SRTP)?,", log) == [" SRTP"] * 2
    assert "m=audio" in log and " RTP/SAVP " in log                # our offer and our answer
    assert "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:<redacted>" in log
    assert not re.search(r"inline:(?!<redacted>)", log), "an SRTP key reached the log"
    assert "SRTP is Enabled" in phone.log_text()
    assert 'bridge_sip_events_total{event="srtp_auth_failed"}' not in await bridge.metrics()


async def test_linphone_over_tls_with_srtp_both_ways(start_bridge, kamailio, linphone_factory, certs):  # noqa: F811
    """liblinphone offers RTP/SAVP (and answers an RTP/AVP offer's a=crypto with plain RTP): with
    `sip.srtp: required` both directions are SRTP."""
    bridge = await start_bridge(sip_edit("tls", kamailio, certs, srtp="required"))
    phone = linphone_factory("2001", kamailio, tone_hz=700, transport="tls", root_ca=certs.ca, srtp="mandatory")
    alice = Party(bridge.platform_url, "alice", tone=1000)
    await alice.make_call(("desk-2001", "demo-desk"), bridge.token("alice"))
    await asyncio.wait_for(alice.events.connected.wait(), 15)
    await asyncio.to_thread(phone.wait_connected, 5)
    await asyncio.sleep(4)
    assert_heard(alice, 700)
    mark = phone.mark()
    await alice.call.end_call()
    await asyncio.to_thread(phone.wait_ended, 5, mark)
    assert_recorded(phone.recorded, 1000)
    agent = Party(bridge.platform_url, "agent-001", tone=440)
    async with agent.listener(bridge.token("agent-001")) as pushes:
        mark = await asyncio.to_thread(phone.dial, "7001")
        push = await pushes.next(timeout=10)
        await agent.verify(push.cc_param)
        await asyncio.wait_for(agent.events.verified.wait(), 5)
        await agent.call.accept_call()
        await asyncio.to_thread(phone.wait_connected, 5, mark)
        await asyncio.sleep(4)
        assert_heard(agent, 700)
        mark = phone.mark()
        await asyncio.to_thread(phone.hangup)
        await asyncio.to_thread(phone.wait_ended, 5, mark)
        await agent.ended(5)
    assert_recorded(phone.recorded, 440)
    assert re.findall(r"SIP leg PCMU( SRTP)?,", bridge.log()) == [" SRTP"] * 2


@pytest.mark.parametrize("transport", ["udp", "tls"])
async def test_ipv6_bridge_kamailio_and_phone_on_loopback_call_both_ways(tmp_path, kamailio_factory,  # noqa: F811
                                                                        baresip_factory, certs, transport):
    kamailio = kamailio_factory({**DEFAULT_USERS, BRIDGE_USER: BRIDGE_PW}, host="::1", tls=certs)
    edit = sip_edit(transport, kamailio, certs, listen="[::1]:0", srtp="optional")
    bridge = Daemon(stack_config(tmp_path, kamailio.port, edit)).start()
    try:
        await bridge.ready()
        tls = transport == "tls"
        phone = baresip_factory("2001", kamailio, tone_hz=700, host="::1", transport=transport,
                                mediaenc="srtp" if tls else None, cafile=certs.ca if tls else None,
                                certificate=phone_pem(certs) if tls else None)
        await both_ways(bridge, phone)
        log = bridge.log()
        assert f"SIP on {transport} [::1]:" in log
        assert re.search(r"RTP \[::1\]:\d+ <-> \('::1', \d+\)", log), "RTP over IPv6 both ways"
        assert f"REGISTER saved sip:{BRIDGE_USER}@[::1]" in kamailio.log_text()
    finally:
        bridge.stop()
        print(f"===== bridge log =====\n{bridge.log()[-4000:]}")
