"""RFC 3261 transactions and dialogs, made exact: each defect of the protocol review (issue 16)
has a test here that failed on the old user agent. The far end is a scripted SIP peer on a real
socket (tests/sippeer.py) where Kamailio or baresip cannot misbehave on cue, a real DNS server
(tests/testbed/dnsserver.py) for names, and real RTP for DTMF.
"""

from __future__ import annotations

import asyncio
import re
import socket
import uuid

import pytest

from bridge.rtp import RtpPacket, TelephoneEvent
from bridge.sip import SipResult
from sipagent import Agent
from sippeer import Msg, SipPeer, parse, sdp
from testbed.dnsserver import DnsServer


@pytest.fixture
async def peer():
    p = await SipPeer().start()
    yield p
    p.close()


@pytest.fixture
async def agents():
    started: list[Agent] = []

    async def start(registrar, registered: bool = True, **kw) -> Agent:
        a = await Agent(registrar, **kw).start(registered)
        started.append(a)
        return a

    yield start
    for a in started:
        await a.ua.stop()


def uri_of(agent: Agent) -> str:
    return f"sip:bridge@127.0.0.1:{agent.ua.local[1]}"


async def invite_in(peer: SipPeer, agent: Agent, *, body: str | None = None, headers=None,
                    cseq: int = 1) -> tuple[Msg, object]:
    """The peer calls the bridge's account; returns (the INVITE as sent, the IncomingCall)."""
    text = peer.request("INVITE", uri_of(agent), cseq=cseq, body=sdp(40000) if body is None else body,
                        headers=[("Contact", f"<sip:2002@127.0.0.1:{peer.port}>")] + (headers or []))
    peer.send(text, agent.addr)
    await peer.expect(100)
    call = await asyncio.wait_for(agent.incoming.get(), 5)
    return parse(text.encode(), peer.addr), call


def cancel_of(invite: Msg) -> str:
    return "\r\n".join([f"CANCEL {invite.uri} SIP/2.0", f"Via: {invite.all('Via')[0]}", "Max-Forwards: 70",
                        f"From: {invite.header('From')}", f"To: {invite.header('To')}",
                        f"Call-ID: {invite.header('Call-ID')}", f"CSeq: {invite.cseq} CANCEL",
                        "Content-Length: 0"]) + "\r\n\r\n"


def in_dialog(peer: SipPeer, method: str, invite: Msg, answer: Msg, cseq: int, *, headers=None,
              body: str = "", target: str | None = None) -> str:
    """A request from the peer inside the dialog its INVITE set up (our tag from `answer`)."""
    branch = "z9hG4bK" + uuid.uuid4().hex[:12]
    lines = [f"{method} {target or answer.header('Contact').strip('<>')} SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch={branch};rport", "Max-Forwards: 70",
             f"From: {invite.header('From')}", f"To: {answer.header('To')}",
             f"Call-ID: {invite.header('Call-ID')}", f"CSeq: {cseq} {method}"]
    lines += [f"{n}: {v}" for n, v in headers or []]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


def answer_headers(peer: SipPeer, host: str = "127.0.0.1", port: int | None = None) -> list[tuple[str, str]]:
    return [("Contact", f"<sip:2001@{host}:{port or peer.port}>")]


async def answered_outgoing(peer: SipPeer, agent: Agent, tag: str = "a1"):
    call = await agent.ua.call("2001")
    invite = await peer.expect("INVITE")
    peer.send(peer.response(invite, 200, "OK", to_tag=tag, headers=answer_headers(peer), body=sdp(40010)),
              invite.source)
    await asyncio.wait_for(call.answered, 5)
    ack = await peer.expect("ACK")
    return call, invite, ack


# --- 1. host names everywhere SIP routes -------------------------------------------------------

async def test_registrar_given_as_localhost_registers_and_calls(peer, agents):
    a = await agents(peer, registrar_host="localhost", domain="localhost")
    assert peer.registrations >= 1 and a.ua.registration.state == "registered"
    call = await a.ua.call("2001")
    invite = await peer.expect("INVITE")
    assert invite.uri == "sip:2001@localhost"
    peer.send(peer.response(invite, 486, "Busy Here", to_tag="x"), invite.source)
    assert (await asyncio.wait_for(call.ended, 5)).result is SipResult.BUSY


async def test_registrar_found_by_dns_srv_on_a_test_dns_server(peer, agents):
    dns = await DnsServer().start()
    try:
        dns.add("_sip._udp.pbx.test", "SRV", f"10 60 {peer.port} host1.pbx.test.")
        dns.add("host1.pbx.test", "A", "127.0.0.1")
        a = await agents(peer, registrar_host="pbx.test", registrar_port=None, domain="pbx.test",
                         dns_servers=[("127.0.0.1", dns.port)])
        assert a.ua.registration.state == "registered"
        assert ("_sip._udp.pbx.test", "SRV") in dns.queries and ("host1.pbx.test", "A") in dns.queries
        call, invite, _ = await answered_outgoing(peer, a)
        assert invite.uri == "sip:2001@pbx.test"
        await call.hangup()
        bye = await peer.expect("BYE")
        peer.send(peer.response(bye, 200, "OK"), bye.source)
    finally:
        dns.close()


async def test_an_unresolvable_registrar_fails_visibly_then_recovers_when_dns_does(peer, agents):
    dns = await DnsServer().start()
    try:
        a = await agents(peer, registrar_host="pbx.test", registrar_port=peer.port, domain="pbx.test",
                         dns_servers=[("127.0.0.1", dns.port)], max_backoff=1.0, registered=False)
        async with asyncio.timeout(5):
            while a.ua.registration.state != "failed":
                await asyncio.sleep(0.05)
        assert "cannot resolve" in a.ua.registration.detail
        dns.add("pbx.test", "A", "127.0.0.1")                   # DNS fixed: resolved again, registered
        await a.wait_registered(timeout=12)
        assert peer.registrations >= 1
    finally:
        dns.close()


async def test_host_names_in_record_route_and_contact_are_resolved(peer, agents):
    a = await agents(peer)
    call = await a.ua.call("2001")
    invite = await peer.expect("INVITE")
    peer.send(peer.response(invite, 200, "OK", to_tag="t1", body=sdp(40012), headers=[
        ("Contact", f"<sip:2001@localhost:{peer.port}>"), ("Record-Route", f"<sip:localhost:{peer.port};lr>")]),
        invite.source)
    await asyncio.wait_for(call.answered, 5)
    ack = await peer.expect("ACK")
    assert ack.uri == f"sip:2001@localhost:{peer.port}" and ack.header("Route") == f"<sip:localhost:{peer.port};lr>"
    await call.hangup()
    bye = await peer.expect("BYE")
    assert bye.header("Route") == f"<sip:localhost:{peer.port};lr>"
    peer.send(peer.response(bye, 200, "OK"), bye.source)
    assert not a.ua.calls and a.ua.ports.in_use == 0


async def test_an_unresolvable_contact_ends_the_call_and_frees_its_port(peer, agents):
    a = await agents(peer)
    call = await a.ua.call("2001")
    invite = await peer.expect("INVITE")
    peer.send(peer.response(invite, 200, "OK", to_tag="t1", body=sdp(40014),
                            headers=[("Contact", "<sip:2001@nowhere.invalid>")]), invite.source)
    end = await asyncio.wait_for(call.ended, 10)
    assert end.result is SipResult.FAILED
    assert not a.ua.calls and a.ua.ports.in_use == 0


# --- 2, 9. the INVITE server transaction lives as long as the ringing ---------------------------

async def test_cancel_after_long_ringing_gets_487(peer, agents):
    a = await agents(peer, t1=0.05)          # 64*T1 = 3.2 s: the old code forgot the INVITE after 8.2 s
    invite, call = await invite_in(peer, a)
    await call.ringing()
    await peer.expect(180)
    await asyncio.sleep(10)
    assert call.state == "ringing"
    peer.send(cancel_of(invite), a.addr)
    ok = await peer.expect(200)
    assert ok.header("CSeq").endswith("CANCEL")
    terminated = await peer.expect(487)
    assert terminated.header("CSeq").endswith("INVITE")
    end = await asyncio.wait_for(call.ended, 2)
    assert (end.result, end.code, end.by) == (SipResult.CANCELLED, 487, "remote")
    assert a.ua.ports.in_use == 0


async def test_bye_in_the_early_dialog_gets_200_and_the_invite_487(peer, agents):
    a = await agents(peer)
    invite, call = await invite_in(peer, a)
    await call.ringing()
    ringing = await peer.expect(180)
    peer.send(in_dialog(peer, "BYE", invite, ringing, 2), a.addr)
    got = {(m.code, m.header("CSeq").split()[1]) for m in [await peer.expect(200), await peer.expect(487)]}
    assert got == {(200, "BYE"), (487, "INVITE")}
    assert (await asyncio.wait_for(call.ended, 2)).result is SipResult.CANCELLED


# --- 3, 7. Timer B only while nothing was heard; CANCEL crossing a 200 ---------------------------

async def test_a_ringing_phone_is_cancelled_at_the_ring_timeout_not_dropped_by_timer_b(peer, agents):
    a = await agents(peer, t1=0.05)          # Timer B = 3.2 s
    call = await a.ua.call("2001", ring_timeout=6)
    invite = await peer.expect("INVITE")
    peer.send(peer.response(invite, 180, "Ringing", to_tag="r1"), invite.source)
    await asyncio.sleep(4.5)
    assert call.state == "ringing" and not call.ended.done()
    cancel = await peer.expect("CANCEL", timeout=4)
    assert cancel.all("Via")[0] == invite.all("Via")[0] and cancel.cseq == invite.cseq
    peer.send(peer.response(cancel, 200, "OK"), cancel.source)
    peer.send(peer.response(invite, 487, "Request Terminated", to_tag="r1"), invite.source)
    end = await asyncio.wait_for(call.ended, 3)
    assert (end.result, end.code) == (SipResult.NO_ANSWER, 487)
    ack = await peer.expect("ACK")
    assert ack.all("Via")[0] == invite.all("Via")[0]          # ACK of a non-2xx: the INVITE's branch


async def test_no_answer_at_all_ends_by_timer_b(peer, agents):
    a = await agents(peer, t1=0.05)
    call = await a.ua.call("2001", ring_timeout=30)
    await peer.expect("INVITE")
    end = await asyncio.wait_for(call.ended, 6)
    assert (end.result, end.code) == (SipResult.UNAVAILABLE, 408)
    invites = [m for m in peer.log if m.is_request and m.method == "INVITE"]
    assert len(invites) >= 5                                   # Timer A retransmitted it


async def test_a_200_crossing_the_ring_timeout_cancel_is_acked_byed_and_stays_no_answer(peer, agents):
    a = await agents(peer)
    call = await a.ua.call("2001", ring_timeout=1)
    invite = await peer.expect("INVITE")
    peer.send(peer.response(invite, 180, "Ringing", to_tag="c1"), invite.source)
    cancel = await peer.expect("CANCEL", timeout=3)
    peer.send(peer.response(cancel, 200, "OK"), cancel.source)  # the phone had answered already
    peer.send(peer.response(invite, 200, "OK", to_tag="c1", headers=answer_headers(peer), body=sdp(40020)),
              invite.source)
    await peer.expect("ACK")
    bye = await peer.expect("BYE")
    peer.send(peer.response(bye, 200, "OK"), bye.source)
    end = await asyncio.wait_for(call.ended, 3)
    assert (end.result, end.by) == (SipResult.NO_ANSWER, "local")   # so fallback targets are tried


async def test_a_cancel_that_is_never_answered_still_ends_the_call(peer, agents):
    a = await agents(peer, t1=0.05)
    call = await a.ua.call("2001")
    invite = await peer.expect("INVITE")
    peer.send(peer.response(invite, 180, "Ringing", to_tag="n1"), invite.source)
    await asyncio.sleep(0.2)
    await asyncio.wait_for(call.hangup(), 8)                    # 64*T1 after the CANCEL at most
    assert (await call.ended).result is SipResult.CANCELLED
    assert not a.ua.calls and a.ua.ports.in_use == 0


# --- 4. a second 2xx from another fork ------------------------------------------------------------

async def test_a_forked_second_2xx_is_acked_and_byed(peer, agents):
    a = await agents(peer)
    call, invite, ack_a = await answered_outgoing(peer, a, tag="forkA")
    assert ";tag=forkA" in ack_a.header("To")
    peer.send(peer.response(invite, 200, "OK", to_tag="forkB", headers=answer_headers(peer), body=sdp(40022)),
              invite.source)
    ack_b = await peer.expect("ACK")
    bye_b = await peer.expect("BYE")
    assert ";tag=forkB" in ack_b.header("To") and ";tag=forkB" in bye_b.header("To")
    peer.send(peer.response(bye_b, 200, "OK"), bye_b.source)
    peer.send(peer.response(invite, 200, "OK", to_tag="forkA", headers=answer_headers(peer), body=sdp(40010)),
              invite.source)                                   # a retransmission of the first 2xx
    again = await peer.expect("ACK")
    assert ";tag=forkA" in again.header("To")
    assert call.state == "answered" and call.dialog.remote_tag == "forkA"
    await call.hangup()
    bye = await peer.expect("BYE")
    assert ";tag=forkA" in bye.header("To")


# --- 8. target refresh and stale CSeq --------------------------------------------------------------

async def test_reinvite_moves_the_remote_target_and_a_stale_cseq_gets_500(peer, agents):
    a = await agents(peer)
    invite, call = await invite_in(peer, a, cseq=10)
    answering = asyncio.ensure_future(call.answer())
    ok = await peer.expect(200)
    peer.send(in_dialog(peer, "ACK", invite, ok, 10), a.addr)
    await asyncio.wait_for(answering, 3)
    moved = await SipPeer().start()
    try:
        reinvite = in_dialog(peer, "INVITE", invite, ok, 11, body=sdp(40030),
                             headers=[("Contact", f"<sip:2002@127.0.0.1:{moved.port}>")])
        peer.send(reinvite, a.addr)
        ok2 = await peer.expect(200)
        peer.send(in_dialog(peer, "ACK", invite, ok2, 11), a.addr)
        peer.send(in_dialog(peer, "INVITE", invite, ok, 5, body=sdp(40030)), a.addr)    # out of order
        stale = await peer.expect(500)
        assert stale.cseq == 5
        await call.hangup()
        bye = await moved.expect("BYE")                           # to the new target, not the old one
        moved.send(moved.response(bye, 200, "OK"), bye.source)
        assert bye.uri == f"sip:2002@127.0.0.1:{moved.port}"
    finally:
        moved.close()


# --- 10. Require with an option we do not support ------------------------------------------------

async def test_require_with_an_unknown_option_gets_420_with_unsupported(peer, agents):
    a = await agents(peer)
    peer.send(peer.request("INVITE", uri_of(a), body=sdp(40040), headers=[("Require", "foo, timer")]), a.addr)
    refused = await peer.expect(420)
    assert refused.header("Unsupported") == "foo"
    assert a.incoming.empty() and a.ua.ports.in_use == 0


# --- 11. server transactions are bounded, stateless answers keep nothing ---------------------------

async def test_requests_keep_no_state_or_bounded_state(peer, agents):
    a = await agents(peer, t1=0.05, max_transactions=20)
    for n in range(300):
        peer.send(peer.request("OPTIONS", uri_of(a)), a.addr)
        if n % 20 == 19:
            await asyncio.sleep(0.01)                            # not more than a socket buffer at once
    answers = [m for m in await peer.quiet(1.0) if m.code == 200]
    assert len(answers) == 300 and len(a.ua.layer.server) == 0    # answered statelessly
    invite, call = await invite_in(peer, a)
    answering = asyncio.ensure_future(call.answer())
    ok = await peer.expect(200)
    peer.send(in_dialog(peer, "ACK", invite, ok, 1), a.addr)
    await asyncio.wait_for(answering, 3)
    for n in range(60):                                         # 60 in-dialog INFOs, each a transaction
        peer.send(in_dialog(peer, "INFO", invite, ok, 2 + n), a.addr)
    codes = [m.code for m in await peer.quiet(1.0)]
    assert len(a.ua.layer.server) <= 20
    assert codes.count(200) >= 15 and codes.count(503) >= 30      # the rest told to come back later
    await asyncio.sleep(64 * 0.05 + 0.5)                          # Timer J
    assert len(a.ua.layer.server) <= 1                            # only the INVITE's, until Timer L
    await call.hangup()


# --- 12. stopping hangs up first -------------------------------------------------------------------

async def test_stop_sends_bye_for_answered_calls_before_closing(peer):
    a = await Agent(peer).start()
    call, _, _ = await answered_outgoing(peer, a)
    await a.ua.stop()
    bye = await peer.expect("BYE")
    assert bye.header("Call-ID") == call.call_id


# --- 13. credentials on the ACK of a 2xx; a challenged BYE is retried --------------------------

async def test_ack_of_2xx_carries_the_invites_credentials_and_bye_answers_a_challenge(peer, agents):
    a = await agents(peer)
    call = await a.ua.call("2001")
    invite = await peer.expect("INVITE")
    challenge = [("Proxy-Authenticate", 'Digest realm="peer", nonce="n1", qop="auth"')]
    peer.send(peer.response(invite, 407, "Proxy Authentication Required", to_tag="p0", headers=challenge),
              invite.source)
    await peer.expect("ACK")
    invite2 = await peer.expect("INVITE")
    creds = invite2.header("Proxy-Authorization")
    assert creds.startswith("Digest") and 'nonce="n1"' in creds
    peer.send(peer.response(invite2, 200, "OK", to_tag="p1", headers=answer_headers(peer), body=sdp(40050)),
              invite2.source)
    ack = await peer.expect("ACK")
    assert ack.header("Proxy-Authorization") == creds and ack.cseq == invite2.cseq
    await asyncio.wait_for(call.answered, 3)
    hangup = asyncio.ensure_future(call.hangup())
    bye = await peer.expect("BYE")
    peer.send(peer.response(bye, 407, "Proxy Authentication Required",
                            headers=[("Proxy-Authenticate", 'Digest realm="peer", nonce="n2", qop="auth"')]),
              bye.source)
    bye2 = await peer.expect("BYE")
    assert 'nonce="n2"' in bye2.header("Proxy-Authorization") and bye2.cseq > bye.cseq
    peer.send(peer.response(bye2, 200, "OK"), bye2.source)
    await hangup


# --- 15. DTMF on the payload type we offered when the answer named another -------------------------

async def test_dtmf_arrives_on_either_telephone_event_payload_type(peer, agents):
    a = await agents(peer)
    call = await a.ua.call("2001")
    invite = await peer.expect("INVITE")
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    try:
        answer = sdp(phone.getsockname()[1], codecs="0 96").replace("a=rtpmap:0 PCMU/8000",
                                                                     "a=rtpmap:0 PCMU/8000\r\na=rtpmap:96 telephone-event/8000")
        peer.send(peer.response(invite, 200, "OK", to_tag="d1", headers=answer_headers(peer), body=answer),
                  invite.source)
        await asyncio.wait_for(call.answered, 3)
        ours = int(re.search(r"m=audio (\d+)", invite.body).group(1))
        for seq, (pt, digit) in enumerate([(101, 5), (96, 9)]):
            event = TelephoneEvent(digit, end=True, duration=800).serialize()
            phone.sendto(RtpPacket(pt, 100 + seq, 8000 * (seq + 1), 0x1234, event, marker=True).serialize(),
                         ("127.0.0.1", ours))
        got = [await asyncio.wait_for(call.media.dtmf_queue.get(), 2) for _ in range(2)]
        assert got == ["5", "9"]
    finally:
        phone.close()
        await call.hangup()


# --- 19. a truncated datagram is refused (RFC 3261 18.3) --------------------------------------------

async def test_a_datagram_shorter_than_its_content_length_is_refused(peer, agents):
    a = await agents(peer)
    body = sdp(40060)
    truncated = peer.request("INVITE", uri_of(a), body=body).replace(
        f"Content-Length: {len(body)}", f"Content-Length: {len(body) + 200}")
    peer.send(truncated, a.addr)
    answers = [m.code for m in await peer.quiet(1.0) if m.code]
    assert answers == [400]                                    # a request: 400, and nothing rings
    assert a.incoming.empty() and a.ua.ports.in_use == 0
    call = await a.ua.call("2001")                              # a response: discarded
    invite = await peer.expect("INVITE")
    ok = peer.response(invite, 200, "OK", to_tag="t", headers=answer_headers(peer), body=sdp(40062))
    peer.send(ok.replace(f"Content-Length: {len(sdp(40062))}", "Content-Length: 900"), invite.source)
    await asyncio.sleep(0.5)
    assert call.state == "new" and not [m for m in peer.log if m.is_request and m.method == "ACK"]
    peer.send(ok, invite.source)                                # the whole one is taken
    await asyncio.wait_for(call.answered, 3)
    await call.hangup()


# --- session timers (RFC 4028), both roles ----------------------------------------------------------

async def test_uas_session_timer_ends_a_call_the_peer_stops_refreshing(peer, agents):
    a = await agents(peer, session_expires=4, min_se=2)
    invite, call = await invite_in(peer, a, headers=[("Supported", "timer"), ("Session-Expires", "4;refresher=uac")])
    answering = asyncio.ensure_future(call.answer())
    ok = await peer.expect(200)
    assert ok.header("Session-Expires") == "4;refresher=uac" and ok.header("Require") == "timer"
    peer.send(in_dialog(peer, "ACK", invite, ok, 1), a.addr)
    await asyncio.wait_for(answering, 3)
    await asyncio.sleep(2)                        # a refresh (UPDATE, no SDP) keeps the call
    peer.send(in_dialog(peer, "UPDATE", invite, ok, 2, headers=[("Session-Expires", "4;refresher=uac")]), a.addr)
    refreshed = await peer.expect(200)
    assert refreshed.header("CSeq") == "2 UPDATE" and not refreshed.body
    await asyncio.sleep(2)
    assert call.state == "answered"
    bye = await peer.expect("BYE", timeout=4)     # no refresh: BYE before the interval ends (4 - 4/3 s)
    peer.send(peer.response(bye, 200, "OK"), bye.source)
    end = await call.ended
    assert (end.result, end.by) == (SipResult.SESSION_EXPIRED, "local")


async def test_uac_session_timer_refreshes_and_ends_when_the_dialog_is_gone(peer, agents):
    a = await agents(peer, session_expires=4, min_se=2)
    call = await a.ua.call("2001")
    invite = await peer.expect("INVITE")
    assert invite.header("Session-Expires") == "4" and invite.header("Min-SE") == "2"
    assert "timer" in invite.header("Supported")
    peer.send(peer.response(invite, 422, "Session Interval Too Small", to_tag="s0", headers=[("Min-SE", "6")]),
              invite.source)
    await peer.expect("ACK")
    invite2 = await peer.expect("INVITE")
    assert invite2.header("Session-Expires") == "6"
    peer.send(peer.response(invite2, 200, "OK", to_tag="s1", body=sdp(40070), headers=answer_headers(peer) + [
        ("Session-Expires", "6;refresher=uac"), ("Require", "timer"), ("Allow", "INVITE, ACK, BYE, UPDATE")]),
        invite2.source)
    await asyncio.wait_for(call.answered, 3)
    await peer.expect("ACK")
    update = await peer.expect("UPDATE", timeout=5)          # at half the interval
    assert update.header("Session-Expires").startswith("6") and not update.body
    peer.send(peer.response(update, 200, "OK", headers=[("Session-Expires", "6;refresher=uac")]), update.source)
    update2 = await peer.expect("UPDATE", timeout=5)
    peer.send(peer.response(update2, 481, "Call/Transaction Does Not Exist"), update2.source)
    end = await asyncio.wait_for(call.ended, 3)
    assert end.result is SipResult.SESSION_EXPIRED


async def test_an_interval_below_min_se_gets_422(peer, agents):
    a = await agents(peer, session_expires=120, min_se=90)
    peer.send(peer.request("INVITE", uri_of(a), body=sdp(40080), headers=[("Session-Expires", "30")]), a.addr)
    refused = await peer.expect(422)
    assert refused.header("Min-SE") == "90" and a.ua.ports.in_use == 0


# --- the media policy on answers ----------------------------------------------------------------------

async def test_an_answer_aiming_media_at_a_third_address_is_hung_up(peer, agents):
    a = await agents(peer)
    call = await a.ua.call("2001")
    invite = await peer.expect("INVITE")
    peer.send(peer.response(invite, 200, "OK", to_tag="m1", headers=answer_headers(peer),
                            body=sdp(40090, host="127.0.0.9")), invite.source)
    await peer.expect("ACK")
    bye = await peer.expect("BYE")
    peer.send(peer.response(bye, 200, "OK"), bye.source)
    end = await asyncio.wait_for(call.ended, 3)
    assert end.result is SipResult.FAILED and a.ua.ports.in_use == 0


# --- DTMF modes (issue 11): SIP INFO both ways ----------------------------------------------------

async def test_dtmf_goes_as_info_when_telephone_event_was_not_negotiated(peer, agents):
    a = await agents(peer)
    call = await a.ua.call("2001")
    invite = await peer.expect("INVITE")
    peer.send(peer.response(invite, 200, "OK", to_tag="i1", headers=answer_headers(peer), body=sdp(40100, codecs="0")),
              invite.source)
    await asyncio.wait_for(call.answered, 3)
    sending = asyncio.ensure_future(call.send_dtmf("1#"))
    for digit in "1#":
        info = await peer.expect("INFO")
        assert info.header("Content-Type") == "application/dtmf-relay"
        assert info.body.splitlines()[0] == f"Signal={digit}"
        peer.send(peer.response(info, 200, "OK"), info.source)
    await asyncio.wait_for(sending, 3)
    await call.hangup()


async def test_sip_dtmf_info_forces_info_and_incoming_info_digits_arrive(peer, agents):
    a = await agents(peer, dtmf="info")
    call, invite, ack = await answered_outgoing(peer, a)       # telephone-event negotiated, still INFO
    sending = asyncio.ensure_future(call.send_dtmf("9"))
    info = await peer.expect("INFO")
    assert info.body.startswith("Signal=9")
    peer.send(peer.response(info, 200, "OK"), info.source)
    await sending
    ours = re.search(r";tag=([^;>\s]+)", invite.header("From")).group(1)

    def from_phone(cseq: int, content_type: str, body: str) -> str:
        lines = [f"INFO sip:bridge@127.0.0.1:{a.ua.local[1]} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bKinfo{cseq}", "Max-Forwards: 70",
                 f"From: <sip:2001@127.0.0.1>;tag=a1", f"To: {invite.header('From')}",
                 f"Call-ID: {invite.header('Call-ID')}", f"CSeq: {cseq} INFO", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}"]
        return "\r\n".join(lines) + "\r\n\r\n" + body
    assert ours
    for cseq, (ctype, body) in enumerate([("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n"),
                                          ("application/dtmf", "7"), ("application/xml", "<x/>")], start=10):
        peer.send(from_phone(cseq, ctype, body), a.addr)
    got = [await asyncio.wait_for(call.media.dtmf_queue.get(), 2) for _ in range(2)]
    assert got == ["5", "7"]
    codes = sorted(m.code for m in await peer.quiet(0.5) if m.code)
    assert codes == [200, 200, 415]
    await call.hangup()


# --- reliable provisional responses (RFC 3262) ------------------------------------------------------

async def test_uas_sends_a_reliable_180_until_its_prack(peer, agents):
    a = await agents(peer)
    invite, call = await invite_in(peer, a, headers=[("Require", "100rel")])
    await call.ringing()
    first = await peer.expect(180)
    assert first.header("Require") == "100rel" and first.header("RSeq").isdigit()
    again = await peer.expect(180, timeout=2)                  # resent until PRACKed
    assert again.header("RSeq") == first.header("RSeq")
    prack = in_dialog(peer, "PRACK", invite, first, 2, headers=[("RAck", f"{first.header('RSeq')} 1 INVITE")])
    peer.send(prack, a.addr)
    assert (await peer.expect(200)).header("CSeq") == "2 PRACK"
    assert [m for m in await peer.quiet(1.5) if m.code == 180] == []     # no more copies
    wrong = in_dialog(peer, "PRACK", invite, first, 3, headers=[("RAck", "1 1 INVITE")])
    peer.send(wrong, a.addr)
    assert (await peer.expect(481)).header("CSeq") == "3 PRACK"
    answering = asyncio.ensure_future(call.answer())
    ok = await peer.expect(200)
    peer.send(in_dialog(peer, "ACK", invite, ok, 1), a.addr)
    await asyncio.wait_for(answering, 3)
    await call.hangup()


async def test_uas_refuses_a_call_whose_reliable_180_is_never_pracked(peer, agents):
    a = await agents(peer, t1=0.05)
    invite, call = await invite_in(peer, a, headers=[("Require", "100rel")])
    await call.ringing()
    await peer.expect(180)
    refused = await peer.expect(500, timeout=6)               # 64*T1 = 3.2 s
    assert refused.header("CSeq") == "1 INVITE"
    assert (await asyncio.wait_for(call.ended, 2)).code == 500 and a.ua.ports.in_use == 0


async def test_uac_pracks_a_reliable_provisional_once_per_rseq(peer, agents):
    a = await agents(peer)
    call = await a.ua.call("2001")
    invite = await peer.expect("INVITE")
    assert "100rel" in invite.header("Supported")
    reliable = peer.response(invite, 180, "Ringing", to_tag="r7", headers=answer_headers(peer) + [
        ("Require", "100rel"), ("RSeq", "7")])
    peer.send(reliable, invite.source)
    prack = await peer.expect("PRACK")
    assert prack.header("RAck") == "7 1 INVITE" and prack.header("CSeq") == "2 PRACK" and ";tag=r7" in prack.header("To")
    peer.send(peer.response(prack, 200, "OK"), prack.source)
    peer.send(reliable, invite.source)                         # a copy: no second PRACK
    assert [m for m in await peer.quiet(0.5) if m.method == "PRACK"] == []
    peer.send(peer.response(invite, 200, "OK", to_tag="r7", headers=answer_headers(peer), body=sdp(40110)),
              invite.source)
    await asyncio.wait_for(call.answered, 3)
    await peer.expect("ACK")
    await call.hangup()
    bye = await peer.expect("BYE")
    assert bye.cseq > 2                                        # above the PRACK's CSeq


async def test_a_required_100rel_is_refused_when_reliable_provisionals_are_off(peer, agents):
    a = await agents(peer, reliable_provisionals="off")
    peer.send(peer.request("INVITE", uri_of(a), body=sdp(40120), headers=[("Require", "100rel")]), a.addr)
    assert (await peer.expect(420)).header("Unsupported") == "100rel"
