"""Safe on a hostile network (issue 10), SIP and RTP: `bridge run` with Kamailio, baresip and
sipp, attacked as scanners and toll-fraud bots do. Each test checks that nothing was lost (RTP
ports, file descriptors, tasks, calls and transactions back to their baseline, read from the
daemon's /metrics) and that a real call still carries tones both ways afterwards.

Addresses: the PBX (Kamailio) and the phones are on 127.0.0.1; an outsider sends from
127.0.0.2, a reflector target listens on 127.0.0.9 (all loopback on Linux).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time

import aiohttp
import pytest

from bridge.audio import RATE, tone, tone_analysis
from bridge.rtp import RtpPacket
from bridge import g711
from bridge.reasons import DisconnectReason as R
from parties import Party
from sipfuzz import Mutator
from stack import (BRIDGE_USER, Daemon, call_desk_phone, kamailio, real_call_works, stack_config,  # noqa: F401
                   start_bridge)
from testbed.fixtures import baresip_factory, kamailio_factory  # noqa: F401

FUZZ_PER_SEED = int(os.environ.get("BRIDGE_FUZZ_PER_SEED", "3400"))   # 3 seeds: 10,200 in CI


async def blocking(fn, *args, **kw):
    return await asyncio.to_thread(fn, *args, **kw)


LEAK_GAUGES = ("bridge_rtp_ports_in_use", "bridge_sip_calls", "process_open_fds", "bridge_active_calls",
               "bridge_platform_active_calls", 'bridge_sip_transactions{side="server"}', "bridge_sip_connections")


def gauges(text: str) -> dict[str, float]:
    """Every series by its full name, and each labelled family summed under its bare name too."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
            if "{" in name and "transactions" not in name:
                family = name.split("{")[0]
                values[family] = values.get(family, 0.0) + float(value)
    for name in LEAK_GAUGES:
        values.setdefault(name, 0.0)
    return values


async def settled(bridge: Daemon, base: dict[str, float], timeout: float = 15.0) -> dict[str, float]:
    """Wait until every leak gauge is back at its baseline (tasks within a few); fail naming the rest."""
    deadline = time.monotonic() + timeout
    while True:
        now = gauges(await bridge.metrics())
        behind = {k: (base[k], now[k]) for k in LEAK_GAUGES if now[k] > base[k]}
        if now["bridge_asyncio_tasks"] > base["bridge_asyncio_tasks"] + 3:
            behind["bridge_asyncio_tasks"] = (base["bridge_asyncio_tasks"], now["bridge_asyncio_tasks"])
        if not behind:
            return now
        if time.monotonic() > deadline:
            pytest.fail(f"not back to the baseline after {timeout} s: {behind}")
        await asyncio.sleep(0.25)


async def baseline(bridge: Daemon) -> dict[str, float]:
    await asyncio.sleep(0.5)
    return gauges(await bridge.metrics())


def udp(host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


async def drain(sock: socket.socket, quiet: float = 0.5) -> list[bytes]:
    loop = asyncio.get_running_loop()
    got = []
    while True:
        try:
            data, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 65535), quiet)
        except TimeoutError:
            return got
        got.append(data)


async def blast(src: socket.socket, datagrams, dest: tuple[str, int], batch: int = 20,
                pause: float = 0.01, settle: float = 2.0) -> list[bytes]:
    """Send `datagrams` in small batches (a socket buffer's worth at most), keeping every answer."""
    answers: list[bytes] = []
    for n, data in enumerate(datagrams):
        src.sendto(data, dest)
        if n % batch == batch - 1:
            await asyncio.sleep(pause)
            while True:
                try:
                    answers.append(src.recv(65535))
                except BlockingIOError:
                    break
    answers += await drain(src, settle)
    await ack_finals(src, answers, dest)
    return answers


async def ack_finals(src: socket.socket, answers: list[bytes], dest: tuple[str, int]) -> None:
    """ACK every failure response to an INVITE, as a caller does (the bridge stops resending it)."""
    for n, d in enumerate(answers):
        if n % 20 == 19:
            await asyncio.sleep(0.01)
        ack = ack_for(d)
        if ack is not None:
            src.sendto(ack, dest)


def ack_for(answer: bytes) -> bytes | None:
    """The ACK a caller sends for `answer` if it is a failure response to an INVITE, else None."""
    if not answer.startswith(b"SIP/2.0 ") or int(answer.split(b" ", 2)[1]) < 300:
        return None
    head = answer.split(b"\r\n\r\n")[0].decode(errors="replace").split("\r\n")
    fields = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), value.strip())
    if not fields.get("cseq", "").endswith("INVITE"):
        return None
    to = fields.get("to", "")
    target = re.search(r"<([^>]+)>", to)
    lines = [f"ACK {target.group(1) if target else 'sip:x@127.0.0.1'} SIP/2.0", f"Via: {fields.get('via', '')}",
             "Max-Forwards: 70", f"From: {fields.get('from', '')}", f"To: {to}",
             f"Call-ID: {fields.get('call-id', '')}", f"CSeq: {fields['cseq'].split()[0]} ACK", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def sip_port(bridge: Daemon) -> int:
    match = re.search(r"SIP on udp 127\.0\.0\.1:(\d+)", bridge.log())
    assert match, bridge.log()[-2000:]
    return int(match.group(1))


def invite(port: int, *, dialed: str = "9999", src: socket.socket, sdp_host: str = "127.0.0.1",
           from_header: str | None = None, n: int = 0) -> bytes:
    lport = src.getsockname()[1]
    host = src.getsockname()[0]
    body = (f"v=0\r\no=x 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {sdp_host}\r\nt=0 0\r\n"
            "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n")
    lines = [f"INVITE sip:{dialed}@127.0.0.1:{port} SIP/2.0",
             f"Via: SIP/2.0/UDP {host}:{lport};branch=z9hG4bKh{n}x{time.monotonic_ns()};rport",
             "Max-Forwards: 70", from_header or f"From: <sip:2002@{host}>;tag=h{n}",
             f"To: <sip:{dialed}@127.0.0.1>", f"Call-ID: hostile-{n}-{time.monotonic_ns()}@x", "CSeq: 1 INVITE",
             f"Contact: <sip:2002@{host}:{lport}>", "Content-Type: application/sdp", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def codes(datagrams: list[bytes]) -> list[int]:
    return [int(d.split(b" ", 2)[1]) for d in datagrams if d.startswith(b"SIP/2.0 ")]


def finals(datagrams: list[bytes]) -> dict[str, int]:
    """Call-ID -> final status (a final response resent until an ACK that never comes counts once)."""
    result = {}
    for d in datagrams:
        match = re.search(rb"\r\nCall-ID: *([^\r]+)", d)
        if d.startswith(b"SIP/2.0 ") and match and int(d.split(b" ", 2)[1]) >= 200:
            result[match.group(1).decode()] = int(d.split(b" ", 2)[1])
    return result


# --- every failure path gives back what it took --------------------------------------------------

async def test_bursts_of_bad_invites_leave_nothing_behind(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    base = await baseline(bridge)
    port, src = sip_port(bridge), udp()
    try:                                    # more than the 500 RTP ports of the range, each time
        bad = codes(await blast(src, (invite(port, src=src, n=n, from_header=f"From: <sip:2002@127.0.0.1;tag=b{n}")
                                      for n in range(600)), ("127.0.0.1", port)))
        unrouted = finals(await blast(src, (invite(port, src=src, n=1000 + n) for n in range(600)),
                                      ("127.0.0.1", port), pause=0.05))   # well-formed, no route: 404
    finally:
        src.close()
    assert bad.count(400) == 600, sorted(set(bad))
    assert list(unrouted.values()).count(404) == 600, sorted(set(unrouted.values()))
    await settled(bridge, base)
    await real_call_works(bridge, phone)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_sip_mutation_fuzzer(start_bridge, kamailio, baresip_factory, seed):  # noqa: F811
    bridge = await start_bridge()
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    base = await baseline(bridge)
    port, src = sip_port(bridge), udp()
    mutator = Mutator(seed, port, local_port=src.getsockname()[1])
    try:
        answers = await blast(src, (mutator.invite() for _ in range(FUZZ_PER_SEED)), ("127.0.0.1", port))
    finally:
        src.close()
    got = codes(answers)
    assert 500 not in got and 501 not in got, "an INVITE made the bridge fail inside"
    assert len(got) > FUZZ_PER_SEED * 0.5, (len(got), "most mutations are still requests and get an answer")
    await settled(bridge, base, timeout=30)
    status, health = await bridge.health()
    assert status == 200, health
    assert "Traceback" not in bridge.log() and "error handling SIP" not in bridge.log()
    await real_call_works(bridge, phone)


# --- trusted peers -----------------------------------------------------------------------------------

async def test_invites_from_an_untrusted_host_never_ring_anyone(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    base = await baseline(bridge)
    port, outsider = sip_port(bridge), udp("127.0.0.2")
    try:
        answers = await blast(outsider, (invite(port, dialed="7001", src=outsider, n=n) for n in range(50)),
                              ("127.0.0.1", port))          # 7001 is routed to agent-001: from the PBX it rings
    finally:
        outsider.close()
    assert codes(answers) == [403] * 50
    now = await settled(bridge, base)
    assert now['bridge_sip_events_total{event="untrusted"}'] == 50
    assert bridge.log().count("untrusted source 127.0.0.2") == 1     # logged once a minute, not 50 times
    assert "agent-001" not in bridge.log()                         # nobody was called
    await real_call_works(bridge, phone)


async def test_untrusted_drop_and_trusted_peers(start_bridge, kamailio):  # noqa: F811
    def edit(d: dict) -> None:
        d["sip"]["untrusted"] = "drop"
        d["sip"]["trusted_peers"] = ["127.0.0.3/32"]
    bridge = await start_bridge(edit)
    port = sip_port(bridge)
    outsider, peer = udp("127.0.0.2"), udp("127.0.0.3")
    try:
        outsider.sendto(invite(port, src=outsider), ("127.0.0.1", port))
        peer.sendto(invite(port, src=peer), ("127.0.0.1", port))
        assert codes(await drain(outsider)) == []                      # dropped: no answer at all
        assert 404 in codes(await drain(peer))                         # a trusted peer is routed
    finally:
        outsider.close()
        peer.close()


# --- the media policy ----------------------------------------------------------------------------------

async def test_sdp_aimed_at_a_third_address_is_refused_and_nothing_is_sent_there(start_bridge, kamailio):  # noqa: F811
    bridge = await start_bridge()
    base = await baseline(bridge)
    port, src = sip_port(bridge), udp()
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.9", 40000))
    target.setblocking(False)
    try:
        src.sendto(invite(port, dialed="7001", src=src, sdp_host="127.0.0.9"), ("127.0.0.1", port))
        src.sendto(invite(port, dialed="7001", src=src, sdp_host="evil.example.com", n=1), ("127.0.0.1", port))
        answers = await drain(src)
        assert await drain(target, 2.0) == []
    finally:
        src.close()
        target.close()
    assert codes(answers).count(488) == 2
    assert b"not allowed" in b"".join(answers) and b"not an IP address" in b"".join(answers)
    await settled(bridge, base)


async def test_rtp_from_a_third_source_mid_call_does_not_take_the_stream(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()
    baresip_factory("2001", kamailio, tone_hz=700)
    alice = await call_desk_phone(bridge)
    await asyncio.sleep(3)
    rtp_port = int(re.search(r"RTP 127\.0\.0\.1:(\d+) <->", bridge.log()).group(1))
    attacker = udp()
    loud = g711.encode("PCMU", tone(1500, 4.0, rate=8000, dbfs=-3))
    mark = len(alice.heard.samples)
    try:
        for k in range(200):                                  # 4 s of a 1500 Hz tone, 20 ms packets
            packet = RtpPacket(0, 1000 + k, 160 * k, 0xBADBAD, loud[160 * k:160 * (k + 1)], marker=k == 0)
            attacker.sendto(packet.serialize(), ("127.0.0.1", rtp_port))
            await asyncio.sleep(0.02)
        stolen = await drain(attacker, 0.5)
    finally:
        attacker.close()
    freq, snr = tone_analysis(alice.heard.samples[mark + RATE:])
    assert abs(freq - 700) < 14 and snr > 20, ("the app must keep hearing the phone", freq, snr)
    assert stolen == [], "the attacker received the caller's voice"
    await alice.call.end_call()
    async with asyncio.timeout(5):
        while 'bridge_sip_events_total{event="rtp_foreign"}' not in (text := await bridge.metrics()):
            await asyncio.sleep(0.1)
    assert gauges(text)['bridge_sip_events_total{event="rtp_foreign"}'] >= 190


# --- dead peers end calls ------------------------------------------------------------------------------

async def test_a_phone_that_vanishes_without_bye_ends_the_app_call(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge(lambda d: d["sip"].update({"media_timeout": "3s"}))
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    alice = await call_desk_phone(bridge)
    await asyncio.sleep(4)                                     # audio flowing (baresip starts late)
    phone.process.proc.kill()                                  # no BYE, no more RTP
    started = time.monotonic()
    ended = await alice.ended(10)
    assert ended.reason is R.NETWORK_UNSTABLE
    assert time.monotonic() - started < 6
    assert "media_timeout" in bridge.log() or "media timeout" in bridge.log()


async def test_hold_longer_than_the_media_timeout_is_not_a_dead_phone(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge(lambda d: d["sip"].update({"media_timeout": "2s"}))
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    alice = await call_desk_phone(bridge)
    assert (await blocking(phone.command, "hold")).get("ok")
    await asyncio.sleep(5)
    assert not alice.events.disconnected.done()
    assert (await blocking(phone.command, "resume")).get("ok")
    await asyncio.sleep(4)
    freq, snr = tone_analysis(alice.heard.samples[-int(1.5 * RATE):])
    assert abs(freq - 700) < 14 and snr > 20, (freq, snr)
    await alice.call.end_call()


async def test_kill_9_mid_call_the_restarted_bridge_sends_bye(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    alice = await call_desk_phone(bridge)
    await blocking(phone.wait_established, 5)
    mark = phone.mark()
    bridge.proc.kill()                                         # SIGKILL: no drain, no BYE
    bridge.proc.wait()
    await asyncio.sleep(1)
    assert not [e for e in phone.ctrl.events[mark:] if e.get("type") == "CALL_CLOSED"]   # a ghost call
    assert (await alice.ended(10)).reason is not R.NORMAL       # the app saw its platform go
    again = Daemon(bridge.path).start()
    started = time.monotonic()
    try:
        closed = await blocking(phone.wait_closed, 8, mark)
        assert closed["type"] == "CALL_CLOSED"
        assert time.monotonic() - started < 5 + 2               # within 5 s of start (+ process start)
        await again.ready()
        assert "left open by a previous run" in again.log()
        await real_call_works(again, phone)
    finally:
        again.stop()


# --- registration tracks the registrar ------------------------------------------------------------------

async def test_pbx_restart_desk_to_app_works_again_within_2_s(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()
    caller = baresip_factory("2002", kamailio, tone_hz=700)
    agent = Party(bridge.platform_url, "agent-001", tone=1000)
    await blocking(kamailio.restart)                           # forgets every registration
    back = time.monotonic()
    await blocking(kamailio.wait_registered, BRIDGE_USER, 2.0)
    assert time.monotonic() - back <= 2.0
    async with agent.listener(bridge.token("agent-001")) as pushes:
        await blocking(caller.dial, "7001")
        push = await pushes.next(10)
        await agent.verify(push.cc_param)
        await agent.call.accept_call()
        await blocking(caller.wait_established, 5)
        await asyncio.sleep(4)
        freq, snr = tone_analysis(agent.heard.samples[-int(1.5 * RATE):])
        assert abs(freq - 700) < 14 and snr > 20, (freq, snr)
        await agent.call.end_call()
    # down for a while (the keep-alive sees it), then back: registered within 2 s, /healthz follows
    await blocking(kamailio.stop)
    async with asyncio.timeout(10):
        while (await bridge.health())[0] != 503:
            await asyncio.sleep(0.1)
    await blocking(kamailio.start)
    back = time.monotonic()
    await blocking(kamailio.wait_registered, BRIDGE_USER, 2.0)
    assert time.monotonic() - back <= 2.0
    async with asyncio.timeout(3):
        while (await bridge.health())[0] != 200:
            await asyncio.sleep(0.1)


async def test_a_wrong_sip_password_is_an_error_in_the_log(tmp_path, kamailio):  # noqa: F811
    d = Daemon(stack_config(tmp_path, kamailio.port, lambda c: c["sip"].update({"password": "wrong-password"})))
    d.start()
    try:
        async with asyncio.timeout(10):
            while "ERROR bridge.sip: registration: failed registrar answered 401" not in d.log():
                await asyncio.sleep(0.1)
        assert "check sip.username, sip.auth_username and sip.password" in d.log()
        assert "wrong-password" not in d.log()
    finally:
        d.stop()


# --- the log --------------------------------------------------------------------------------------------

async def test_control_characters_from_sip_are_escaped_in_the_log(start_bridge, kamailio):  # noqa: F811
    bridge = await start_bridge()
    port, src = sip_port(bridge), udp()
    try:
        evil = "From: \"\x1b[31mBoss\x1b[0m\\r\\nFAKE LOG LINE\" <sip:2002\x1b[2J@127.0.0.1>;tag=e1"
        src.sendto(invite(port, dialed="7999", src=src, from_header=evil), ("127.0.0.1", port))
        src.sendto(invite(port, dialed="7\x1b[1m9", src=src, n=2), ("127.0.0.1", port))
        await drain(src)
    finally:
        src.close()
    log = bridge.log()
    assert "\x1b" not in log
    assert not any(line.startswith("FAKE LOG LINE") for line in log.splitlines())


async def test_a_make_call_with_unusable_sdp_ends_at_once_and_rings_nobody(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    base = await baseline(bridge)
    mark = phone.mark()
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(bridge.platform_url.replace("http", "ws", 1) + "/v1/ws") as ws:
            await ws.send_json({"type": "make_call", "token": bridge.token("alice"), "my_id": "alice",
                                "my_service_id": "demo-app", "peer_id": "desk-2001", "peer_service_id": "demo-desk",
                                "media_type": "audio", "sdp": "v=0\r\nthis is no offer\r\n"})
            started = time.monotonic()
            async with asyncio.timeout(5):
                while (message := json.loads((await ws.receive()).data))["type"] != "disconnected":
                    pass
            assert time.monotonic() - started < 2, "ended at once, not after the answer timeout"
            assert message["code"] == int(R.INTERNAL_ERROR), message
    assert await blocking(phone.wait_event, "CALL_INCOMING", 1.0, mark) is None     # nothing rang
    await settled(bridge, base)
    await real_call_works(bridge, phone)
