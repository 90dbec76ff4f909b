"""Transfer (issue 11): a desk phone hands the app caller on with REFER (RFC 3515), blind or
attended (Refer-To with Replaces, RFC 3891), and an INVITE with Replaces takes over one of the
bridge's SIP legs. The app call itself is never touched: the app user keeps talking, and hears
the new party (tones checked). Transfer targets are allowed by `routes.transfer` only.
"""

from __future__ import annotations

import asyncio
import re
import socket
from urllib.parse import quote

from bridge.audio import RATE, tone_analysis
from parties import Party
from sippeer import SipPeer, parse, stream_tone
from stack import Daemon, call_desk_phone, kamailio, stack_config, start_bridge  # noqa: F401  (fixtures)
from testbed import wav_dominant_frequency
from testbed.fixtures import baresip_factory, kamailio_factory  # noqa: F401  (fixtures)

TRANSFER_ROUTE = {"name": "internal", "match": {"target": "20\\d\\d"}}


async def blocking(fn, *args, **kw):
    return await asyncio.to_thread(fn, *args, **kw)


def heard(party: Party, seconds: float = 1.5) -> tuple[float, float]:
    return tone_analysis(party.heard.samples[-int(seconds * RATE):])


async def test_blind_transfer_by_a_desk_phone_keeps_the_app_call(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()                            # the sample's route: 20NN by 20NN
    first = baresip_factory("2001", kamailio, tone_hz=700)
    second = baresip_factory("2002", kamailio, tone_hz=900)
    alice = await call_desk_phone(bridge)
    await asyncio.sleep(4)
    assert abs(heard(alice)[0] - 700) < 14
    mark = first.mark()
    assert (await blocking(first.command, "transfer", f"sip:2002@127.0.0.1:{kamailio.port}")).get("ok")
    await blocking(second.wait_established, 10)
    await blocking(first.wait_closed, 10, mark)              # the transferor left after the NOTIFY
    await asyncio.sleep(4)
    freq, snr = heard(alice)
    assert abs(freq - 900) < 14 and snr > 20, ("the app hears the transfer target", freq, snr)
    assert alice.call.state == "connected" and not alice.events.disconnected.done()
    mark = second.mark()
    await alice.call.end_call()
    await blocking(second.wait_closed, 5, mark)
    freq, snr = await blocking(wav_dominant_frequency, second.latest_recording("dec"), 1.0)
    assert abs(freq - 1000) < 20 and snr > 20, ("the target heard the app", freq, snr)
    log = bridge.log()
    assert "transfers the call: transfer route desk-to-desk: call 2002" in log and "transferred to 2002" in log


async def test_a_transfer_no_route_allows_is_refused_and_the_call_stays(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge(lambda d: d["routes"].pop("transfer"))   # no transfer routes: deny
    first = baresip_factory("2001", kamailio, tone_hz=700)
    baresip_factory("2002", kamailio, tone_hz=900)
    alice = await call_desk_phone(bridge)
    await asyncio.sleep(3)
    await blocking(first.command, "transfer", f"sip:2002@127.0.0.1:{kamailio.port}")
    await asyncio.sleep(3)
    freq, snr = heard(alice)
    assert abs(freq - 700) < 14 and snr > 20, ("still the first phone", freq, snr)
    assert "denied: no transfer route to '2002'" in bridge.log()
    await alice.call.end_call()


# --- attended transfer and Replaces, with a scripted PBX ----------------------------------------

async def pbx_call(tmp_path, edit=None):
    """The daemon registered at a scripted peer (the PBX and its phones); alice calls desk 2001."""
    peer = await SipPeer().start()
    d = Daemon(stack_config(tmp_path, peer.port, edit)).start()
    await d.ready()
    alice = Party(d.platform_url, "alice", tone=1000)
    await alice.make_call(("desk-2001", "demo-desk"), d.token("alice"))
    invite = await peer.expect("INVITE", 15)
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    phone.setblocking(False)
    peer.send(peer.response(invite, 200, "OK", to_tag="phoneA", body=peer_sdp(phone), headers=[
        ("Contact", f"<sip:2001@127.0.0.1:{peer.port}>")]), invite.source)
    ack = await peer.expect("ACK")
    await asyncio.wait_for(alice.events.connected.wait(), 10)
    return peer, d, alice, invite, ack, phone


def peer_sdp(sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    return (f"v=0\r\no=p 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")


def ack_of(peer: SipPeer, invite_text: str, ok) -> str:
    """The peer's ACK for a 2xx to its INVITE: to the Contact, with the 2xx's To-tag (RFC 3261 13.2.2.4)."""
    invite = parse(invite_text.encode(), peer.addr)
    target = re.search(r"<([^>]+)>", ok.header("Contact")).group(1)
    lines = [f"ACK {target} SIP/2.0", f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bKack{invite.cseq}x",
             "Max-Forwards: 70", f"From: {invite.header('From')}", f"To: {ok.header('To')}",
             f"Call-ID: {invite.header('Call-ID')}", f"CSeq: {invite.cseq} ACK", "Content-Length: 0"]
    return "\r\n".join(lines) + "\r\n\r\n"


def rtp_port_of(sdp: str) -> int:
    return int(re.search(r"m=audio (\d+)", sdp).group(1))


def in_dialog(peer: SipPeer, method: str, invite, cseq: int, headers, body: str = "",
              content_type: str = "") -> str:
    """A request from phone A in the dialog the bridge's INVITE set up (we are its UAS)."""
    contact = re.search(r"<([^>]+)>", invite.header("Contact")).group(1)
    lines = [f"{method} {contact} SIP/2.0", f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bKa{cseq}{method}",
             "Max-Forwards: 70", f"From: {invite.header('To')};tag=phoneA", f"To: {invite.header('From')}",
             f"Call-ID: {invite.header('Call-ID')}", f"CSeq: {cseq} {method}"]
    lines += [f"{n}: {v}" for n, v in headers]
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


async def test_attended_transfer_refer_with_replaces(tmp_path):
    peer, d, alice, invite, _, phone_a = await pbx_call(tmp_path, lambda c: c["routes"].update(
        {"transfer": [TRANSFER_ROUTE]}))
    phone_c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone_c.bind(("127.0.0.1", 0))
    try:
        replaces = "consult-call@pbx;to-tag=tagC;from-tag=tagA"
        refer_to = f"<sip:2003@127.0.0.1?Replaces={quote(replaces, safe='')}>"
        bridge_addr = invite.source
        peer.send(in_dialog(peer, "REFER", invite, 2, [("Refer-To", refer_to), ("Referred-By", "<sip:2001@127.0.0.1>"),
                                                       ("Contact", f"<sip:2001@127.0.0.1:{peer.port}>")]), bridge_addr)
        accepted = await peer.expect(202)
        assert accepted.header("CSeq") == "2 REFER"
        trying = await peer.expect("NOTIFY")
        assert trying.header("Event") == "refer" and trying.body.startswith("SIP/2.0 100")
        assert trying.header("Content-Type").startswith("message/sipfrag")
        peer.send(peer.response(trying, 200, "OK"), trying.source)
        to_c = await peer.expect("INVITE")                      # the bridge calls C, replacing A-C
        assert to_c.uri.startswith("sip:2003@127.0.0.1")
        assert to_c.header("Replaces") == replaces and to_c.header("Referred-By") == "<sip:2001@127.0.0.1>"
        peer.send(peer.response(to_c, 200, "OK", to_tag="phoneC", body=peer_sdp(phone_c), headers=[
            ("Contact", f"<sip:2003@127.0.0.1:{peer.port}>")]), to_c.source)
        await peer.expect("ACK")
        done = await peer.expect("NOTIFY")
        assert done.body.startswith("SIP/2.0 200") and done.header("Subscription-State").startswith("terminated")
        peer.send(peer.response(done, 200, "OK"), done.source)
        peer.send(in_dialog(peer, "BYE", invite, 3, []), bridge_addr)    # A leaves (RFC 5589)
        assert (await peer.expect(200)).header("CSeq") == "3 BYE"
        await stream_tone(phone_c, ("127.0.0.1", rtp_port_of(to_c.body)), 1500, 3.0)
        freq, snr = heard(alice, 1.0)
        assert abs(freq - 1500) < 20 and snr > 20, ("the app hears C", freq, snr)
        assert alice.call.state == "connected"
        await alice.call.end_call()
        bye = await peer.expect("BYE")                          # to C, not A
        assert bye.header("Call-ID") == to_c.header("Call-ID")
    finally:
        await alice.call.end_call()
        phone_a.close()
        phone_c.close()
        d.stop()
        peer.close()


async def test_an_invite_with_replaces_takes_over_the_sip_leg(tmp_path):
    peer, d, alice, invite, ack, phone_a = await pbx_call(tmp_path)
    phone_c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone_c.bind(("127.0.0.1", 0))
    try:
        ours = re.search(r";tag=([^;>\s]+)", invite.header("From")).group(1)     # the bridge's tag
        replaces = f"{invite.header('Call-ID')};to-tag={ours};from-tag=phoneA"
        text = peer.request("INVITE", f"sip:bridge@127.0.0.1:{invite.source[1]}", from_user="2003",
                            body=peer_sdp(phone_c), headers=[("Replaces", replaces),
                                                             ("Contact", f"<sip:2003@127.0.0.1:{peer.port}>")])
        peer.send(text, invite.source)
        ok = await peer.expect(200)
        assert ok.header("CSeq") == "1 INVITE"
        peer.send(ack_of(peer, text, ok), invite.source)
        bye = await peer.expect("BYE")                          # the replaced leg (to A) is ended
        assert bye.header("Call-ID") == invite.header("Call-ID")
        peer.send(peer.response(bye, 200, "OK"), bye.source)
        await stream_tone(phone_c, ("127.0.0.1", rtp_port_of(ok.body)), 1500, 3.0)
        freq, snr = heard(alice, 1.0)
        assert abs(freq - 1500) < 20 and snr > 20, ("the app hears C", freq, snr)
        assert alice.call.state == "connected"
        await alice.call.end_call()
    finally:
        await alice.call.end_call()
        phone_a.close()
        phone_c.close()
        d.stop()
        peer.close()


async def test_replaces_naming_no_dialog_of_ours_gets_481(tmp_path):
    peer, d, alice, invite, _, phone_a = await pbx_call(tmp_path)
    try:
        peer.send(peer.request("INVITE", f"sip:bridge@127.0.0.1:{invite.source[1]}", body=peer_sdp(phone_a),
                               headers=[("Replaces", "nobody@x;to-tag=1;from-tag=2")]), invite.source)
        assert (await peer.expect(481)).header("CSeq") == "1 INVITE"
    finally:
        await alice.call.end_call()
        phone_a.close()
        d.stop()
        peer.close()
