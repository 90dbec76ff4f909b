"""SIP over TCP and TLS (bridge/sip/stream.py): the framing of a stream, the limits a hostile
peer meets, keep-alive, and connections to a real Kamailio (TLS verified by a test CA).

A UserAgent listens on TCP or TLS on 127.0.0.1; the tests connect with raw sockets. 127.0.0.1 is
the registrar here (trusted); 127.0.0.2 and up are strangers, subject to `sip.connections`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import socket
import ssl
import time
import uuid

import pytest

from bridge.config import SipConnections, SipTls
from bridge.sip import UserAgent, connection
from bridge.sip.message import MAX_MESSAGE, Request, SipMessage, new_branch, response as respond
from bridge.sip.framing import PING, PONG, Framer, FramingError
from bridge.sip.stream import StreamTransport, response_target
from bridge.sip.timers import Timers
from bridge.sip.transaction import TransactionLayer
from sipagent import sip_config
from testbed.certs import make_ca_and_server
from testbed.fixtures import kamailio_factory  # noqa: F401
from stack import BRIDGE_PW, BRIDGE_USER
from testbed import DEFAULT_USERS, sip_request


def options(n: int = 0, *, host: str = "127.0.0.1", body: str = "", length: int | None = None,
            extra: str = "") -> bytes:
    head = (f"OPTIONS sip:bridge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP {host}:5060;branch=z9hG4bK{n}x{uuid.uuid4().hex}\r\n"
            f"From: <sip:probe@{host}>;tag=t{n}\r\nTo: <sip:bridge@127.0.0.1>\r\nCall-ID: {uuid.uuid4().hex}@x\r\n"
            f"CSeq: {n} OPTIONS\r\nMax-Forwards: 70\r\n{extra}")
    if length is not None or body:
        head += f"Content-Length: {len(body) if length is None else length}\r\n"
    return (head + "\r\n" + body).encode()


# --- the framing -------------------------------------------------------------------------------------

def test_messages_split_anywhere_or_pipelined_come_out_whole():
    one, two = options(1, body="x=1\r\n"), options(2, length=0)
    framer = Framer()
    out = []
    for byte in one + two:                            # one byte at a time
        out += framer.feed(bytes([byte]))
    assert out == [one, two] and not framer.partial
    assert Framer().feed(one + two + one) == [one, two, one]
    assert Framer().feed(b"\r\n" + one) == [PONG, one]  # a CRLF before a message is no message


def test_ping_and_pong():
    framer = Framer()
    assert framer.feed(PING) == [PING]
    assert framer.feed(b"\r\n") == [] and not framer.partial    # half a ping, or a stray CRLF
    assert framer.feed(b"\r\n") == [PING]
    framer.awaiting_pong = True
    assert framer.feed(PONG) == [PONG] and not framer.awaiting_pong
    framer.awaiting_pong = True                               # a pong first, then the peer's ping
    assert framer.feed(PONG + PING) == [PONG, PING]


@pytest.mark.parametrize("data,why", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a SIP start line"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200) + b"\r\n", "not a SIP start line"),  # TLS on TCP
    (b"x" * 2000, "no start line within 1024 bytes"),
    (options(length=None), "no Content-Length"),
    (options(extra="Content-Length: 0\r\n", length=0), "more than one Content-Length"),
    (options(extra="l: 3\r\n", length=0), "more than one Content-Length"),
    (options(length=None, extra="Content-Length: -1\r\n"), "a bad Content-Length"),
    (options(length=None, extra="Content-Length: 0x10\r\n"), "a bad Content-Length"),
    (options(length=None, extra="Content-Length: 9999999999\r\n"), "a bad Content-Length"),
    (options(length=MAX_MESSAGE), f"a message longer than {MAX_MESSAGE} bytes"),
    (options(length=0)[:-2] + b"X-Pad: " + b"a" * MAX_MESSAGE, "a message head longer"),   # no end in sight
    (options(body="v=0\r\nm=audio 1 RTP/AVP 0\r\n", length=5), "not a SIP start line"),   # lying: too short
])
def test_malformed_streams_are_framing_errors(data, why):
    framer = Framer()
    with pytest.raises(FramingError) as info:
        framer.feed(data)
    assert why in str(info.value)


def test_a_compact_content_length_frames_too():
    msg = options(extra="l: 4\r\n", length=None) + b"abcd"
    assert Framer().feed(msg + msg) == [msg, msg]


def test_where_a_response_goes_when_its_connection_is_gone():
    resp = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 10.0.0.2:5070;branch=z9hG4bKx;rport\r\n\r\n"
    assert response_target(resp, ("10.0.0.9", 40000)) == ("10.0.0.9", 5070)      # received IP, sent-by port
    v6 = b"SIP/2.0 200 OK\r\nv: SIP/2.0/TLS [2001:db8::1];branch=z9hG4bKx\r\n\r\n"
    assert response_target(v6, ("2001:db8::1", 40000), 5061) == ("2001:db8::1", 5061)
    assert response_target(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP [::1]:5062\r\n\r\n", ("::1", 9)) == ("::1", 5062)
    assert response_target(b"SIP/2.0 200 OK\r\n\r\n", ("10.0.0.9", 1)) is None


# --- a user agent on TCP and TLS, raw sockets at it -------------------------------------------------------

LIMITS = SipConnections(max=6, per_address=3, message_timeout=1.0, idle_timeout=2.5, keepalive=0)


async def agent(tmp_path, transport: str = "tcp", limits: SipConnections = LIMITS, **kw) -> UserAgent:
    tls_files = kw.pop("tls", SipTls())
    cfg = sip_config(9, register=False, bind_host="127.0.0.1", transport=transport, connections=limits,
                     tls=tls_files, journal=None, **kw)
    ua = UserAgent(cfg)
    await ua.start()
    return ua


async def connect(ua: UserAgent, source: str = "127.0.0.1", context: ssl.SSLContext | None = None,
                  server_hostname: str | None = None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ua.local)
    return await asyncio.open_connection(sock=sock, ssl=context, server_hostname=server_hostname)


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 3.0) -> float:
    """Seconds until the bridge closed the connection (EOF or reset); fails if it did not."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    return time.monotonic() - started


async def response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert b"Content-Length: 0" in head
    return head


async def connections_back_to(ua: UserAgent, count: int, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while ua.transport.open_connections != count:
            await asyncio.sleep(0.02)
    assert not ua.transport._untrusted


async def test_requests_are_answered_on_their_connection_and_pings_get_pongs(tmp_path):
    ua = await agent(tmp_path)
    try:
        reader, writer = await connect(ua)
        msg = options(1, length=0)
        for k in range(0, len(msg), 7):                       # in pieces
            writer.write(msg[k:k + 7])
            await writer.drain()
            await asyncio.sleep(0.001)
        assert (await response(reader)).startswith(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP")
        writer.write(options(2, length=0) + options(3, length=0) + PING)      # pipelined, then a ping
        assert b"CSeq: 2 OPTIONS" in await response(reader)
        assert b"CSeq: 3 OPTIONS" in await response(reader)
        assert await asyncio.wait_for(reader.readexactly(2), 2) == PONG
        assert ua.transport.open_connections == 1
        writer.close()
        await connections_back_to(ua, 0)
    finally:
        await ua.stop()


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: bridge\r\n\r\n",
    options(length=None),
    options(body="v=0\r\nm=audio 1 RTP/AVP 0\r\n", length=3),
    options(length=MAX_MESSAGE),
], ids=["http", "no content-length", "lying content-length", "too long"])
async def test_a_malformed_stream_is_closed_at_once(tmp_path, data):
    ua = await agent(tmp_path)
    try:
        reader, writer = await connect(ua, "127.0.0.2")
        writer.write(data)
        assert await closed_by_peer(reader) < 0.5
        assert ua.counters["stream_malformed"] == 1
        await connections_back_to(ua, 0)
    finally:
        await ua.stop()


async def test_half_sent_and_silent_connections_are_closed_after_the_message_timeout(tmp_path):
    ua = await agent(tmp_path)
    try:
        silent = await connect(ua, "127.0.0.2")
        half = await connect(ua, "127.0.0.2")
        half[1].write(options(1, body="x" * 100)[:-50])
        slow = await connect(ua, "127.0.0.3")
        msg = options(2, length=0)
        for k in range(41):                                  # a byte every 50 ms: 14 s for the message
            if slow[0].at_eof():
                break
            slow[1].write(msg[k:k + 1])
            await asyncio.sleep(0.05)
        for reader, _ in (silent, half, slow):
            assert 0.0 <= await closed_by_peer(reader, 3.0) < 2.5
        assert ua.counters["message_timeout"] == 3
        await connections_back_to(ua, 0)
    finally:
        await ua.stop()


async def test_idle_connections_are_closed(tmp_path):
    ua = await agent(tmp_path)
    try:
        reader, writer = await connect(ua, "127.0.0.2")
        writer.write(options(1, length=0))
        await response(reader)
        assert 1.5 < await closed_by_peer(reader, 5.0) < 4.0       # idle_timeout 2.5 s (checked each 250 ms)
        assert ua.counters["idle_closed"] == 1
        await connections_back_to(ua, 0)
    finally:
        await ua.stop()


async def test_connection_caps_for_strangers_but_not_for_the_pbx(tmp_path):
    ua = await agent(tmp_path)
    opened = []
    try:
        for source in ("127.0.0.2",) * 4:                        # per_address 3: the 4th is refused
            opened.append(await connect(ua, source))
        assert await closed_by_peer(opened[-1][0], 1.0) < 0.5
        for source in ("127.0.0.3", "127.0.0.3", "127.0.0.4", "127.0.0.4"):   # max 6: the 7th is refused
            opened.append(await connect(ua, source))
        assert await closed_by_peer(opened[-1][0], 1.0) < 0.5
        assert ua.counters["connections_refused"] == 2
        assert ua.transport.open_connections == 6
        pbx = await connect(ua, "127.0.0.1")                     # the registrar is never refused
        pbx[1].write(options(9, length=0))
        assert (await response(pbx[0])).startswith(b"SIP/2.0 200 OK")
        for _, writer in opened + [pbx]:
            writer.close()
        await connections_back_to(ua, 0)
        again = await connect(ua, "127.0.0.2")                   # the places are given back
        again[1].write(options(10, length=0))
        assert (await response(again[0])).startswith(b"SIP/2.0 403")     # a stranger: refused as over UDP
        again[1].close()
        await connections_back_to(ua, 0)
    finally:
        await ua.stop()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_thousands_of_connects_leave_no_descriptor_behind(tmp_path):
    ua = await agent(tmp_path, limits=dataclasses.replace(LIMITS, max=64, per_address=16))
    before = open_fds()
    try:
        async def hit(n: int) -> None:
            try:
                reader, writer = await connect(ua, f"127.0.1.{n % 200 + 1}")
            except OSError:
                return
            if n % 3 == 0:
                writer.write(options(n, length=0)[:n % 40])       # a third leave half a message
            elif n % 3 == 1:
                writer.write(b"\x00\xff" * (n % 50))             # a third send garbage
            writer.close()
        for batch in range(20):                                  # 3000 connections, 150 at a time
            await asyncio.gather(*(hit(batch * 150 + k) for k in range(150)))
        await connections_back_to(ua, 0, 5.0)
        assert open_fds() <= before + 2
        reader, writer = await connect(ua)                       # and it still serves
        writer.write(options(1, length=0))
        assert (await response(reader)).startswith(b"SIP/2.0 200 OK")
        writer.close()
    finally:
        await ua.stop()


# --- TLS -----------------------------------------------------------------------------------------------

@pytest.fixture
def certs(tmp_path):
    return make_ca_and_server(tmp_path / "certs", ["pbx.test", "bridge.test"], ["127.0.0.1", "::1"])


async def test_tls_listener_serves_verified_clients_and_closes_stalled_handshakes(tmp_path, certs):
    ua = await agent(tmp_path, "tls", tls=SipTls(ca=str(certs.ca), cert=str(certs.cert), key=str(certs.key)))
    try:
        assert ua.transport.listening
        context = ssl.create_default_context(cafile=str(certs.ca))
        reader, writer = await connect(ua, context=context, server_hostname="bridge.test")
        writer.write(options(1, length=0))
        assert (await response(reader)).startswith(b"SIP/2.0 200 OK")
        stalled = await connect(ua, "127.0.0.2")                           # TCP, never a ClientHello
        plain = await connect(ua, "127.0.0.3")
        plain[1].write(options(2, length=0))                               # SIP in clear to a TLS port
        assert await closed_by_peer(stalled[0], 3.0) < 2.5
        assert await closed_by_peer(plain[0], 3.0) < 2.5
        assert ua.counters["tls_handshake"] + ua.counters["message_timeout"] >= 2
        writer.close()
        await connections_back_to(ua, 0)
    finally:
        await ua.stop()


async def test_tls_without_a_certificate_of_ours_accepts_nothing(tmp_path, certs):
    ua = await agent(tmp_path, "tls", tls=SipTls(ca=str(certs.ca)))
    try:
        assert not ua.transport.listening
        with pytest.raises(ConnectionRefusedError):
            await connect(ua)
    finally:
        await ua.stop()


@pytest.mark.parametrize("how", ["right", "wrong name", "wrong CA"])
async def test_the_pbx_certificate_is_verified(tmp_path, certs, kamailio_factory, caplog, how):  # noqa: F811
    kamailio = kamailio_factory({**DEFAULT_USERS, BRIDGE_USER: BRIDGE_PW}, tls=certs)
    other = make_ca_and_server(tmp_path / "other", ["pbx.test"], ["127.0.0.1"])
    settings = {"right": SipTls(ca=str(certs.ca), server_name="pbx.test"),
                "wrong name": SipTls(ca=str(certs.ca), server_name="evil.test"),
                "wrong CA": SipTls(ca=str(other.ca), server_name="pbx.test")}[how]
    cfg = sip_config(kamailio.tls_port, transport="tls", tls=settings, bind_host="127.0.0.1", journal=None,
                     transaction_timeout=4.0)
    ua = UserAgent(cfg)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "bridge.sip"):
        await ua.start()
        try:
            async with asyncio.timeout(6):
                while ua.registration.state not in ("registered", "failed"):
                    await asyncio.sleep(0.02)
            if how == "right":
                assert ua.registration.state == "registered"
                assert kamailio.registered(BRIDGE_USER)
            else:
                assert ua.registration.state == "failed"
                assert time.monotonic() - started < 2.0, "a refused certificate ends the REGISTER at once"
                assert "certificate not trusted" in caplog.text and "sip.tls.server_name" in caplog.text
                assert ua.counters["connect_failed"] >= 1
                assert not kamailio.registered(BRIDGE_USER)
        finally:
            await ua.stop()


# --- flows to the PBX ------------------------------------------------------------------------------------

async def test_a_dropped_connection_to_the_pbx_is_reopened_at_once(tmp_path, kamailio_factory):  # noqa: F811
    kamailio = kamailio_factory({**DEFAULT_USERS, BRIDGE_USER: BRIDGE_PW})
    ua = UserAgent(sip_config(kamailio.port, transport="tcp", bind_host="127.0.0.1", journal=None,
                              keepalive=60.0, connections=dataclasses.replace(LIMITS, keepalive=0.5)))
    await ua.start()
    try:
        async with asyncio.timeout(5):
            while ua.registration.state != "registered":
                await asyncio.sleep(0.02)
        flow = next(iter(ua.transport.connections.values()))
        assert flow.outbound and flow.addr == ("127.0.0.1", kamailio.port)
        await asyncio.sleep(1.6)
        assert flow.pongs >= 2, "Kamailio answers our CRLF pings"
        await asyncio.to_thread(kamailio.restart)            # closes every connection, forgets bindings
        back = time.monotonic()
        await asyncio.to_thread(kamailio.wait_registered, BRIDGE_USER, 3.0)
        assert time.monotonic() - back < 3.0, "not the 60 s keepalive: the closed flow made it check"
        assert ua.transport.open_connections == 1
    finally:
        await ua.stop()


async def test_a_flow_whose_pongs_stop_is_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(connection, "PONG_TIMEOUT", 1.0)
    pongs = {"left": 2}
    pings = []

    async def fake_pbx(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if data == PING:
                pings.append(time.monotonic())
                if pongs["left"]:
                    pongs["left"] -= 1
                    writer.write(PONG)

    server = await asyncio.start_server(fake_pbx, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ua = await agent(tmp_path, limits=dataclasses.replace(LIMITS, keepalive=0.3), registrar_port=port)
    try:
        ua.transport.send(options(1, length=0), ("127.0.0.1", port))
        async with asyncio.timeout(8):
            while ua.counters["flow_failed"] == 0:
                await asyncio.sleep(0.05)
        assert len(pings) >= 3
        await connections_back_to(ua, 0)
    finally:
        await ua.stop()
        server.close()


async def test_a_pbx_that_refuses_connections_fails_the_request_at_once(tmp_path):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()                                              # nobody listens there
    ua = UserAgent(sip_config(port, transport="tcp", bind_host="127.0.0.1", journal=None,
                              transaction_timeout=4.0))
    started = time.monotonic()
    await ua.start()
    try:
        async with asyncio.timeout(3):
            while ua.registration.state != "failed":
                await asyncio.sleep(0.02)
        assert time.monotonic() - started < 1.0
        assert ua.counters["connect_failed"] >= 1
    finally:
        await ua.stop()


# --- dual stack ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_dual_stack_listener_registers_over_ipv4_and_answers_ipv6(tmp_path, kamailio_factory,  # noqa: F811
                                                                       transport):
    kamailio = kamailio_factory({**DEFAULT_USERS, BRIDGE_USER: BRIDGE_PW})      # IPv4 only
    ua = UserAgent(sip_config(kamailio.port, transport=transport, bind_host="::", contact_host="127.0.0.1",
                              rtp_host="127.0.0.1", trusted_peers=("::1",), journal=None))
    await ua.start()
    try:
        async with asyncio.timeout(5):
            while ua.registration.state != "registered":
                await asyncio.sleep(0.02)
        assert re.search(rf"REGISTER sip:127\.0\.0\.1 from 127\.0\.0\.1:{ua.local[1]} ", kamailio.log_text()), \
            "IPv4 through the IPv6 socket, from the listening port"
        assert ua.policy.trusted("127.0.0.1") and "::ffff:127.0.0.1" not in ua.policy.pbx
        if transport == "udp":
            answer = await asyncio.to_thread(sip_request, ua.local[1], "OPTIONS", "bridge", host="::1")
            assert answer is not None and answer.status == 200
        else:
            reader, writer = await asyncio.open_connection("::1", ua.local[1])
            writer.write(options(1, host="[::1]", length=0))
            assert (await response(reader)).startswith(b"SIP/2.0 200 OK")
            writer.close()
    finally:
        await ua.stop()


# --- the transaction layer over a reliable transport -------------------------------------------------------

async def test_over_tcp_nothing_is_retransmitted_and_timers_d_i_j_k_are_zero():
    """RFC 3261 17: no Timer A, E or G over TCP; D, I, J and K are 0 (T1 = 50 ms here, so over UDP
    Timer A alone would have resent the INVITE 4 times in the second we wait)."""
    got: asyncio.Queue[bytes] = asyncio.Queue()
    peer_writer: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_writer.set_result(writer)
        framer = Framer()
        while data := await reader.read(65536):
            for frame in framer.feed(data):
                got.put_nowait(frame)

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    dest = server.sockets[0].getsockname()[:2]
    requests: asyncio.Queue = asyncio.Queue()

    def on_message(data: bytes, addr) -> None:
        msg = SipMessage(data)
        if not msg.is_request:
            layer.on_response(msg, addr)
        elif (tx := layer.find_server(msg)) is not None:
            tx.ack() if msg.method == "ACK" else tx.retransmission()
        else:
            requests.put_nowait((msg, addr))

    transport = StreamTransport(on_message, LIMITS)
    await transport.open("127.0.0.1", 0)
    layer = TransactionLayer(transport, Timers(t1=0.05, t2=0.4, t4=0.5))

    def request(method: str, user: str = "bridge") -> Request:
        return Request(method, f"sip:2001@127.0.0.1:{dest[1]}", f"SIP/2.0/TCP 127.0.0.1:{transport.local[1]};"
                       f"branch={new_branch()}", f"<sip:{user}@127.0.0.1>;tag=x", "<sip:2001@127.0.0.1>",
                       uuid.uuid4().hex, 1)
    try:
        invite = layer.invite(request("INVITE"), dest)
        options_tx = layer.request(request("OPTIONS"), dest)
        await asyncio.sleep(1.0)
        sent = [got.get_nowait() for _ in range(got.qsize())]
        assert [s.split(b" ")[0] for s in sent] == [b"INVITE", b"OPTIONS"], "no Timer A or E"
        writer = await peer_writer
        writer.write(respond(SipMessage(sent[0]), 486, to_tag="t") + respond(SipMessage(sent[1]), 200, to_tag="t"))
        assert (await asyncio.wait_for(got.get(), 2)).startswith(b"ACK ")
        await asyncio.sleep(0.05)
        assert invite.state == options_tx.state == "terminated" and not layer.client, "Timers D and K are 0"

        writer.write(request("INVITE", "peer").render())          # the peer's requests, same connection
        msg, addr = await asyncio.wait_for(requests.get(), 1)
        stx = layer.new_server(msg, addr)
        stx.respond(respond(msg, 486, to_tag="s"), 486)
        await asyncio.sleep(0.5)
        finals = [got.get_nowait() for _ in range(got.qsize())]
        assert len(finals) == 1 and finals[0].startswith(b"SIP/2.0 486"), "no Timer G"
        writer.write(Request("ACK", msg.uri, msg.top_via, msg.first("From") or "", SipMessage(finals[0]).first("To")
                             or "", msg.call_id, 1).render())
        await asyncio.sleep(0.1)
        assert stx.state == "terminated" and not layer.server, "Timer I is 0"
        writer.write(request("OPTIONS", "peer").render())
        msg, addr = await asyncio.wait_for(requests.get(), 1)
        ntx = layer.new_server(msg, addr)
        ntx.respond(respond(msg, 200), 200)
        assert ntx.state == "terminated" and not layer.server, "Timer J is 0"
        assert (await asyncio.wait_for(got.get(), 1)).startswith(b"SIP/2.0 200")
        writer.close()
    finally:
        layer.close()
        transport.close()
        server.close()


async def test_sips_needs_tls(tmp_path):
    """A sips: Request-URI that came over TCP gets 416; a sips: target is not called without TLS."""
    ua = await agent(tmp_path)
    try:
        reader, writer = await connect(ua)
        writer.write(options(1, length=0).replace(b"OPTIONS sip:", b"OPTIONS sips:", 1))
        head = await response(reader)
        assert head.startswith(b"SIP/2.0 416 Unsupported URI Scheme"), head[:60]
        assert ua.counters["refused_sips"] == 1
        writer.close()
        call = await ua.call("sips:2001@127.0.0.1")
        end = await asyncio.wait_for(call.ended, 2)
        assert end.result.value == "failed" and ua.ports.in_use == 0
    finally:
        await ua.stop()
