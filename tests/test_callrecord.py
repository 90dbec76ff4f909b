"""Call records and HEP: real calls both ways through `bridge run` (Kamailio, baresip) leave one
JSON line each with plausible figures, and a UDP socket playing a Homer capture server gets a
HEPv3 copy of every SIP message, parsed here by hand (sipcapture's HEP3 layout)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import struct
import time
from datetime import datetime

import pytest

from bridge import config
from bridge.callrecord import CallRecord, CallRecordLog
from parties import Party
from stack import ROOT, kamailio, start_bridge  # noqa: F401  (fixtures)
from testbed.fixtures import baresip_factory, kamailio_factory  # noqa: F401


async def blocking(fn, *args, **kw):
    return await asyncio.to_thread(fn, *args, **kw)


def parse_hep(packet: bytes) -> dict[int, bytes]:
    """HEPv3: b"HEP3", total length (uint16), then chunks [vendor u16][type u16][length u16][value]."""
    assert packet[:4] == b"HEP3", packet[:8]
    assert struct.unpack("!H", packet[4:6])[0] == len(packet)
    chunks: dict[int, bytes] = {}
    pos = 6
    while pos < len(packet):
        vendor, kind, length = struct.unpack("!HHH", packet[pos:pos + 6])
        assert vendor == 0 and length >= 6 and pos + length <= len(packet), (vendor, kind, length)
        assert kind not in chunks, f"chunk {kind} twice"
        chunks[kind] = packet[pos + 6:pos + length]
        pos += length
    assert pos == len(packet)
    return chunks


def receive_all(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(65535))
        except BlockingIOError:
            return got


def when(text: str) -> float:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text[:-1] + "+00:00").timestamp()


async def lines_of(path, count: int, timeout: float = 10) -> list[dict]:
    async with asyncio.timeout(timeout):
        while True:
            lines = path.read_text().splitlines() if path.exists() else []
            if len(lines) >= count:
                return [json.loads(line) for line in lines]
            await asyncio.sleep(0.1)


async def test_calls_both_ways_leave_one_record_each_and_hep_copies_of_their_sip(
        start_bridge, kamailio, baresip_factory, tmp_path):  # noqa: F811
    records = tmp_path / "records" / "calls.jsonl"
    records.parent.mkdir()
    homer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    homer.bind(("127.0.0.1", 0))
    homer.setblocking(False)

    def edit(d: dict) -> None:
        d["bridge"]["call_records"] = str(records)
        d["sip"]["hep"] = {"address": f"127.0.0.1:{homer.getsockname()[1]}", "id": 2001,
                           "password": "homer-capture-key"}
    try:
        bridge = await start_bridge(edit)
        phone = baresip_factory("2001", kamailio, tone_hz=700)
        started = time.time()
        alice = Party(bridge.platform_url, "alice", tone=1000)            # app -> desk phone
        await alice.make_call(("desk-2001", "demo-desk"), bridge.token("alice"))
        await asyncio.wait_for(alice.events.connected.wait(), 15)
        await asyncio.sleep(5)
        mark = phone.mark()
        await alice.call.end_call()
        await blocking(phone.wait_closed, 5, mark)
        first = (await lines_of(records, 1))[0]

        agent = Party(bridge.platform_url, "agent-001", tone=440)         # desk phone -> app
        async with agent.listener(bridge.token("agent-001")) as pushes:
            mark = phone.mark()
            await blocking(phone.dial, "7001")
            push = await pushes.next(timeout=10)
            await agent.verify(push.cc_param)
            await asyncio.wait_for(agent.events.verified.wait(), 5)
            await agent.call.accept_call()
            await blocking(phone.wait_established, 5, mark)
            await asyncio.sleep(4)
            await blocking(phone.hangup)
            await agent.ended(5)
        both = await lines_of(records, 2)
        finished = time.time()
        await asyncio.sleep(0.5)
        packets = receive_all(homer)
    finally:
        homer.close()

    assert len(both) == 2 and both[0] == first
    # app -> desk phone: alice hung up
    assert first["sid"] == alice.call.sid and first["direction"] == "app_to_sip"
    assert (first["route"], first["result"]) == ("desk-phones", "normal")
    assert first["app"] == {"caller": "alice@demo-app", "callee": "desk-2001@demo-desk", "codec": "PCMU",
                            "end": {"source": "caller", "reason": "NORMAL", "code": 1001}}
    sip = first["sip"]
    assert (sip["from"], sip["to"], sip["codec"], len(sip["call_ids"])) == ("alice", "2001", "PCMU", 1)
    assert sip["end"] == {"result": "normal", "status": 0, "by": "local"}
    times = first["times"]
    assert started <= when(times["setup"]) <= when(times["answer"]) <= when(times["end"]) <= finished
    assert 0 < times["setup_seconds"] < 10 and 4.5 < times["talk_seconds"] < 8, times
    a2s, s2a = first["media"]["app_to_sip"], first["media"]["sip_to_app"]
    talk = times["talk_seconds"]
    assert 0.8 * 50 * talk <= a2s["received"] <= 1.1 * 50 * talk, (a2s, talk)     # 20 ms packets
    assert abs(a2s["sent"] - a2s["received"]) <= 5 and a2s["lost"] == 0 and 0 <= a2s["jitter_ms"] < 20, a2s
    assert 0.5 * 50 * talk <= s2a["received"] <= 1.1 * 50 * talk, (s2a, talk)      # baresip starts late
    assert s2a["lost"] == 0 and 0 <= s2a["jitter_ms"] < 20 and s2a["sent"] >= s2a["received"] - 5, s2a
    assert s2a["lost_at_app"] in (0, None) and (s2a["jitter_at_app_ms"] is None or s2a["jitter_at_app_ms"] < 20)

    # desk phone -> app: the phone hung up
    second = both[1]
    assert second["sid"] == agent.call.sid and second["direction"] == "sip_to_app"
    assert (second["route"], second["result"]) == ("agents", "normal")
    assert second["app"]["caller"] == "desk-2001@demo-desk" and second["app"]["callee"] == "agent-001@demo-app"
    # the bridge is the app call's caller here: it hung up for the phone
    assert second["app"]["end"] == {"source": "caller", "reason": "NORMAL", "code": 1001}, second["app"]
    assert (second["sip"]["from"], second["sip"]["to"]) == ("2001", "7001")
    assert second["sip"]["end"] == {"result": "normal", "status": 0, "by": "remote"}
    assert 3 < second["times"]["talk_seconds"] < 7 and second["media"]["app_to_sip"]["received"] > 100

    # HEP: every SIP message of both calls, whole, with its addresses and time
    assert packets, "no HEP packet arrived"
    sip_port = None
    messages = []
    for packet in packets:
        chunks = parse_hep(packet)
        assert {1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 14, 15} <= set(chunks), sorted(chunks)
        assert (chunks[1], chunks[2], chunks[11]) == (b"\x02", b"\x11", b"\x01")     # IPv4, UDP, SIP
        assert struct.unpack("!I", chunks[12])[0] == 2001 and chunks[14] == b"homer-capture-key"
        assert ipaddress.ip_address(chunks[3]) == ipaddress.ip_address(chunks[4]) == ipaddress.ip_address("127.0.0.1")
        stamp = struct.unpack("!I", chunks[9])[0] + struct.unpack("!I", chunks[10])[0] / 1e6
        assert started - 30 <= stamp <= finished + 1
        ports = struct.unpack("!H", chunks[7])[0], struct.unpack("!H", chunks[8])[0]
        sip_port = sip_port or (ports[0] if chunks[15].startswith(b"REGISTER") else None)
        payload = chunks[15]
        assert payload.startswith((b"INVITE ", b"ACK ", b"BYE ", b"REGISTER ", b"OPTIONS ", b"SIP/2.0 ")), payload[:40]
        messages.append((ports, payload))
    assert sip_port is not None and all(sip_port in ports for ports, _ in messages)
    for call_id in (first["sip"]["call_ids"][0], second["sip"]["call_ids"][0]):
        mine = [p for _, p in messages if f"Call-ID: {call_id}".encode() in p]
        starts = {p.split(b"\r\n", 1)[0].split(b" ")[0] for p in mine}
        assert {b"INVITE", b"ACK", b"BYE", b"SIP/2.0"} <= starts, (call_id, starts)
    invites = [p for _, p in messages if p.startswith(b"INVITE ")]
    assert any(b"Call-ID: " + first["sip"]["call_ids"][0].encode() in p and b"\r\n\r\nv=0" in p for p in invites)


def test_the_record_file_keeps_going_and_complains_once(tmp_path, caplog):
    folder = tmp_path / "later"
    log = CallRecordLog(str(folder / "calls.jsonl"))
    with caplog.at_level(logging.WARNING, "bridge.call"):
        for n in range(3):
            log.write(CallRecord("app_to_sip", time.time(), sid=f"s{n}"))
        folder.mkdir()
        log.write(CallRecord("sip_to_app", time.time(), sid="s3"))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot write" in errors[0].message
    assert any("writing" in r.message and "again" in r.message for r in caplog.records)
    lines = [json.loads(x) for x in (folder / "calls.jsonl").read_text().splitlines()]
    assert [x["sid"] for x in lines] == ["s3"] and log.written == 1
    assert lines[0]["times"]["talk_seconds"] == 0.0 and lines[0]["times"]["answer"] is None


def test_call_record_and_hep_keys_in_the_config(tmp_path):
    text = (ROOT / "config.yaml").read_text()
    (tmp_path / "logs").mkdir()
    ok = text.replace("  media: relay ", "  call_records: logs/calls.jsonl\n  media: relay ").replace(
        "  ring_timeout: 30s\n", "  ring_timeout: 30s\n  hep: {address: homer.example:9060, id: 7, password_env: HOMER}\n", 1)
    cfg = config.loads(ok, str(tmp_path / "c.yaml"), env={"HOMER": "s3cret"})
    assert cfg.bridge.call_records == str(tmp_path / "logs" / "calls.jsonl")
    hep = cfg.sip.hep
    assert (hep.host, hep.port, hep.agent_id, hep.password) == ("homer.example", 9060, 7, "s3cret")
    plain = config.loads(text, "c.yaml", env={})
    assert plain.bridge.call_records is None and plain.sip.hep is None
    assert config.loads(ok.replace("logs/calls.jsonl", "off"), str(tmp_path / "c.yaml"), env={}).bridge.call_records is None
    for old, new, message in (
            ("logs/calls.jsonl", "nowhere/calls.jsonl", "bridge.call_records: the folder of"),
            ("logs/calls.jsonl", "logs", "bridge.call_records: " + str(tmp_path / "logs") + " is a folder"),
            ("address: homer.example:9060", "address: homer.example", "sip.hep.address: 'homer.example' is not host:port"),
            ("id: 7", "id: 4294967296", "sip.hep.id: must fit in 32 bits"),
            ("id: 7", "id: -1", "sip.hep.id: must be a whole number"),
            ("password_env: HOMER", "port: 9060", "sip.hep.port: unknown key"),
            ("hep: {address: homer.example:9060, id: 7, password_env: HOMER}", "hep: [homer]", "sip.hep: must be a mapping"),
            ("hep: {address: homer.example:9060, id: 7, password_env: HOMER}", "hep: {id: 7}", "sip.hep.address: is required")):
        with pytest.raises(config.ConfigError) as err:
            config.loads(ok.replace(old, new), str(tmp_path / "c.yaml"), env={"HOMER": "s3cret"})
        assert any(message in e for e in err.value.errors), (new, err.value.errors)
