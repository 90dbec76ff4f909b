"""Safe on a hostile network over TCP (issue 12): `bridge run` with `sip.transport: tcp`, Kamailio
and baresip over TCP, and strangers (127.0.x.y) that connect by the thousand, send half a
message, garbage, or nothing, or hold connections open. As in test_hostile_sip.py, every
leak gauge of /metrics (connections, file descriptors, RTP ports, calls, transactions, tasks)
must come back to its baseline, and a real call must still carry tones both ways.
"""

from __future__ import annotations

import asyncio
import re
import time

from stack import Daemon, kamailio, real_call_works, start_bridge  # noqa: F401
from test_hostile_sip import ack_for, baseline, codes, finals, gauges, invite, settled
from testbed.fixtures import baresip_factory, kamailio_factory  # noqa: F401

TCP = {"transport": "tcp", "connections": {"max": 64, "per_address": 8, "message_timeout": "2s",
                                           "idle_timeout": "20s"}}


def tcp_port(bridge: Daemon) -> int:
    match = re.search(r"SIP on tcp 127\.0\.0\.1:(\d+)", bridge.log())
    assert match, bridge.log()[-2000:]
    return int(match.group(1))


async def connect(port: int, source: str):
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def read_all(reader: asyncio.StreamReader, quiet: float = 1.0) -> bytes:
    got = b""
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), quiet)
        except (TimeoutError, ConnectionResetError):
            return got
        if not chunk:
            return got
        got += chunk


def responses(stream: bytes) -> list[bytes]:
    return [b"SIP/2.0 " + part for part in stream.split(b"SIP/2.0 ")[1:]]


async def test_thousands_of_connects_garbage_and_half_messages_leave_nothing_behind(start_bridge, kamailio,  # noqa: F811
                                                                                     baresip_factory):
    bridge = await start_bridge(lambda d: d["sip"].update(TCP))
    phone = baresip_factory("2001", kamailio, tone_hz=700, transport="tcp")
    base = await baseline(bridge)
    assert base["bridge_sip_connections"] >= 1                      # our flow to the PBX
    port = tcp_port(bridge)
    refused_by_os = 0

    async def stranger(n: int) -> None:
        nonlocal refused_by_os
        try:
            reader, writer = await connect(port, f"127.0.{n % 250 + 1}.{n % 7 + 2}")
        except OSError:
            refused_by_os += 1
            return
        kind = n % 4
        if kind == 0:
            writer.write(invite(port, src=writer.get_extra_info("socket"), n=n).replace(b"/UDP", b"/TCP")[:n % 300])
        elif kind == 1:
            writer.write(bytes((n * k) % 256 for k in range(n % 200 + 1)))
        elif kind == 2:
            writer.write(b"INVITE sip:7001@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP x\r\n\r\n")   # no Content-Length
        if n % 10 == 0:
            await asyncio.sleep(0.5)                                    # some hold on a while
        writer.close()

    started = time.monotonic()
    for batch in range(20):                                             # 4000 connections, 200 at a time
        await asyncio.gather(*(stranger(batch * 200 + k) for k in range(200)))
    print(f"4000 connections in {time.monotonic() - started:.1f} s; {refused_by_os} refused by the OS")
    now = await settled(bridge, base, timeout=20)
    events = {k: v for k, v in now.items() if k.startswith("bridge_sip_events_total")}
    refused = events['bridge_sip_events_total{event="connections_refused"}']
    malformed = events['bridge_sip_events_total{event="stream_malformed"}']
    assert refused >= 1000 and malformed >= 100 and refused + malformed >= 2000, events   # (the rest closed first)
    status, health = await bridge.health()
    assert status == 200, health
    assert "Traceback" not in bridge.log() and "error handling SIP" not in bridge.log()
    await real_call_works(bridge, phone)


async def test_bad_and_unrouted_invites_pipelined_by_the_pbx_are_answered_and_forgotten(start_bridge, kamailio):  # noqa: F811
    bridge = await start_bridge(lambda d: d["sip"].update(TCP))
    base = await baseline(bridge)
    port = tcp_port(bridge)
    reader, writer = await connect(port, "127.0.0.1")                   # the PBX's address: trusted
    sock = writer.get_extra_info("socket")
    for n in range(300):
        bad = invite(port, src=sock, n=n, from_header=f"From: <sip:2002@127.0.0.1;tag=b{n}")   # no closing '>'
        writer.write(bad.replace(b"/UDP", b"/TCP"))
        writer.write(invite(port, src=sock, n=1000 + n).replace(b"/UDP", b"/TCP"))     # fine, but no route
        await writer.drain()
    answers = responses(await read_all(reader, 3.0))
    assert codes(answers).count(400) == 300
    unrouted = [code for call_id, code in finals(answers).items() if int(call_id.split("-")[1]) >= 1000]
    assert len(unrouted) == 300 and set(unrouted) <= {404, 503}, sorted(set(unrouted))   # 503: bridge.max_calls
    for answer in answers:                                              # ACKed, as a PBX does
        writer.write(ack_for(answer) or b"")
    await writer.drain()
    writer.close()
    await settled(bridge, base)


def options(n: int, source: str) -> bytes:
    return (f"OPTIONS sip:bridge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP {source}:5060;branch=z9hG4bKo{n}x{time.monotonic_ns()}"
            f"\r\nFrom: <sip:scan@{source}>;tag=o{n}\r\nTo: <sip:bridge@127.0.0.1>\r\nCall-ID: o{n}-{time.monotonic_ns()}"
            "\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


async def test_strangers_holding_every_connection_cannot_lock_out_the_pbx(start_bridge, kamailio,  # noqa: F811
                                                                          baresip_factory):
    bridge = await start_bridge(lambda d: d["sip"].update(TCP))
    phone = baresip_factory("2001", kamailio, tone_hz=700, transport="tcp")
    base = await baseline(bridge)
    port = tcp_port(bridge)
    stop = asyncio.Event()
    answered = []

    async def hold(n: int) -> None:
        """A stranger that keeps its connection busy (an OPTIONS every 0.5 s: never idle, never late)."""
        source = f"127.0.9.{n % 10 + 1}"
        try:
            reader, writer = await connect(port, source)
            while not stop.is_set():
                writer.write(options(n, source))
                answered.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2))
                await asyncio.sleep(0.5)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            return                                                      # refused: beyond the caps
        writer.close()

    holders = [asyncio.ensure_future(hold(n)) for n in range(80)]       # max 64 from strangers
    await asyncio.sleep(1.5)
    during = gauges(await bridge.metrics())
    assert during["bridge_sip_connections"] == base["bridge_sip_connections"] + 64
    assert during['bridge_sip_events_total{event="connections_refused"}'] == 16
    await real_call_works(bridge, phone)                                # the PBX still gets through
    assert sum(1 for h in holders if not h.done()) == 64, "the strangers held on all along"
    assert all(a.startswith(b"SIP/2.0 403") for a in answered)          # and got nothing but 403s
    stop.set()
    await asyncio.gather(*holders)
    await settled(bridge, base)
