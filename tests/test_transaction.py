"""The four transaction state machines of RFC 3261 section 17, timer by timer, over a real UDP
socket to a scripted peer (T1 = 50 ms, so 64*T1 = 3.2 s). docs/interop.md cites these tests."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from bridge.sip.message import Request, SipMessage, new_branch, response
from bridge.sip.timers import Timers
from bridge.sip.transaction import TransactionLayer
from bridge.sip.transport import UdpTransport
from sippeer import SipPeer, parse

T = Timers(t1=0.05, t2=0.4, t4=0.5)


@pytest.fixture
async def peer():
    p = await SipPeer().start()
    p.auto_options = False
    yield p
    p.close()


@pytest.fixture
async def layer():
    inbox: asyncio.Queue = asyncio.Queue()
    transport = UdpTransport(lambda data, addr: inbox.put_nowait((SipMessage(data), addr)))
    await transport.open("127.0.0.1", 0)
    tl = TransactionLayer(transport, T)
    tl.inbox = inbox                                        # type: ignore[attr-defined]

    async def pump() -> None:                               # what the user agent does with input
        while True:
            msg, addr = await inbox.get()
            if msg.is_request:
                tx = tl.find_server(msg)
                if tx is not None:
                    tx.ack() if msg.method == "ACK" else tx.retransmission()
                else:
                    tl.requests.put_nowait((msg, addr))     # type: ignore[attr-defined]
            else:
                tl.on_response(msg, addr)
    tl.requests = asyncio.Queue()                           # type: ignore[attr-defined]
    task = asyncio.ensure_future(pump())
    yield tl
    task.cancel()
    tl.close()
    transport.close()


def request(method: str, layer: TransactionLayer, peer: SipPeer) -> Request:
    port = layer.transport.local[1]
    return Request(method, f"sip:2001@127.0.0.1:{peer.port}", f"SIP/2.0/UDP 127.0.0.1:{port};branch={new_branch()}",
                   "<sip:bridge@127.0.0.1>;tag=x", f"<sip:2001@127.0.0.1:{peer.port}>", "cid@x", 1)


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 2) for a, b in zip(times, times[1:])]


async def test_invite_client_timer_a_doubles_and_timer_b_ends_calling(layer, peer):
    tx = layer.invite(request("INVITE", layer, peer), peer.addr)
    assert await asyncio.wait_for(tx.next(), 5) is None              # Timer B: 64*T1
    sent = [m.at for m in peer.log if m.method == "INVITE"]
    assert gaps(sent)[:4] == pytest.approx([0.05, 0.1, 0.2, 0.4], abs=0.03)    # Timer A
    assert sent[-1] - sent[0] < T.long and tx.state == "terminated" and not layer.client


async def test_invite_client_proceeding_has_no_timer(layer, peer):
    tx = layer.invite(request("INVITE", layer, peer), peer.addr)
    invite = await peer.expect("INVITE")
    peer.send(peer.response(invite, 180, "Ringing", to_tag="r"), invite.source)
    assert (await tx.next()).code == 180
    await asyncio.sleep(T.long + 1)
    assert tx.state == "proceeding" and len([m for m in peer.log if m.method == "INVITE"]) == 1
    tx.terminate()


async def test_invite_client_completed_acks_each_final_until_timer_d(layer, peer):
    tx = layer.invite(request("INVITE", layer, peer), peer.addr)
    invite = await peer.expect("INVITE")
    busy = peer.response(invite, 486, "Busy Here", to_tag="b")
    peer.send(busy, invite.source)
    assert (await tx.next()).code == 486 and tx.state == "completed"
    first = await peer.expect("ACK")
    peer.send(busy, invite.source)                                    # retransmitted: ACKed again
    again = await peer.expect("ACK")
    assert first.raw == again.raw and first.all("Via") == invite.all("Via")
    assert tx.timer_d.handle is not None and tx.timer_d.handle.when() - asyncio.get_running_loop().time() > 30


async def test_invite_client_accepted_passes_every_2xx_until_timer_m(layer, peer):
    tx = layer.invite(request("INVITE", layer, peer), peer.addr)
    invite = await peer.expect("INVITE")
    for tag in ("a", "b", "a"):
        peer.send(peer.response(invite, 200, "OK", to_tag=tag), invite.source)
    got = [(await tx.next()).to_tag for _ in range(3)]
    assert got == ["a", "b", "a"] and tx.state == "accepted"
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(tx.next(), T.long + 1) is None      # Timer M ends the wait too
    assert asyncio.get_running_loop().time() - started == pytest.approx(T.long, abs=0.2)
    assert tx.state == "terminated" and not layer.client             # (a waiter left hanging kept
                                                                      # each answered call's ~40 objects)


async def test_non_invite_client_timer_e_caps_at_t2_then_t2_when_proceeding_and_timer_f(layer, peer):
    tx = layer.request(request("OPTIONS", layer, peer), peer.addr)
    assert await asyncio.wait_for(tx.next(), 5) is None              # Timer F
    sent = [m.at for m in peer.log if m.method == "OPTIONS"]
    assert gaps(sent)[:5] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.4], abs=0.03)   # E, capped at T2
    peer.log.clear()
    while not peer.received.empty():
        peer.received.get_nowait()
    tx = layer.request(request("OPTIONS", layer, peer), peer.addr)
    options = await peer.expect("OPTIONS")
    peer.send(peer.response(options, 100, "Trying"), options.source)
    assert (await tx.next()).code == 100
    await asyncio.sleep(1.0)
    sent = [m.at for m in peer.log if m.method == "OPTIONS"]
    assert gaps(sent[1:]) and all(g == pytest.approx(0.4, abs=0.05) for g in gaps(sent[1:]))   # T2 in Proceeding


async def test_non_invite_client_completed_absorbs_finals_for_timer_k(layer, peer):
    tx = layer.request(request("OPTIONS", layer, peer), peer.addr)
    options = await peer.expect("OPTIONS")
    ok = peer.response(options, 200, "OK")
    peer.send(ok, options.source)
    assert (await tx.next()).code == 200 and tx.state == "completed"
    peer.send(ok, options.source)                                     # absorbed, not delivered
    await asyncio.sleep(0.1)
    assert tx._responses.empty()
    await asyncio.sleep(T.t4)                                         # Timer K
    assert tx.state == "terminated"


async def invite_from_peer(layer, peer):
    text = peer.request("INVITE", f"sip:bridge@127.0.0.1:{layer.transport.local[1]}")
    peer.send(text, layer.transport.local)
    msg, addr = await asyncio.wait_for(layer.requests.get(), 2)
    return parse(text.encode(), peer.addr), layer.new_server(msg, addr)


async def test_invite_server_timer_g_resends_the_failure_until_timer_h(layer, peer):
    invite, tx = await invite_from_peer(layer, peer)
    from bridge.sip.message import response
    tx.respond(response(tx.request, 486, to_tag="t"), 486)
    assert await asyncio.wait_for(tx.confirmed, 5) is False          # Timer H: no ACK in 64*T1
    sent = [m.at for m in peer.log if m.code == 486]
    assert gaps(sent)[:4] == pytest.approx([0.05, 0.1, 0.2, 0.4], abs=0.03) and tx.state == "terminated"


async def test_invite_server_confirmed_by_ack_absorbs_for_timer_i(layer, peer):
    invite, tx = await invite_from_peer(layer, peer)
    from bridge.sip.message import response
    tx.respond(response(tx.request, 603, to_tag="t"), 603)
    decline = await peer.expect(603)
    peer.send(peer.ack_for(invite, decline), layer.transport.local)
    assert await asyncio.wait_for(tx.confirmed, 2) is True and tx.state == "confirmed"
    count = len([m for m in peer.log if m.code == 603])
    await asyncio.sleep(0.3)
    assert len([m for m in peer.log if m.code == 603]) == count       # G stopped
    await asyncio.sleep(T.t4)                                         # Timer I
    assert tx.state == "terminated"


async def test_invite_server_proceeding_waits_as_long_as_the_user_and_resends_provisionals(layer, peer):
    invite, tx = await invite_from_peer(layer, peer)
    from bridge.sip.message import response
    tx.respond(response(tx.request, 180, to_tag="t"), 180)
    await peer.expect(180)
    await asyncio.sleep(T.long + 1)
    assert tx.state == "proceeding"
    peer.send(invite.raw, layer.transport.local)                      # the INVITE again: 180 again
    await peer.expect(180)
    tx.terminate()


async def test_invite_server_accepted_resends_2xx_until_ack_then_timer_l(layer, peer):
    invite, tx = await invite_from_peer(layer, peer)
    from bridge.sip.message import response
    tx.respond(response(tx.request, 200, to_tag="t"), 200)
    await asyncio.sleep(0.4)
    assert len([m for m in peer.log if m.code == 200]) >= 3           # resent until the ACK
    tx.ack()                                                          # (the dialog routes the 2xx's ACK)
    assert await tx.confirmed is True
    count = len([m for m in peer.log if m.code == 200])
    await asyncio.sleep(0.3)
    assert len([m for m in peer.log if m.code == 200]) == count
    assert tx.state == "accepted"
    await asyncio.sleep(T.long)                                       # Timer L
    assert tx.state == "terminated"


async def test_non_invite_server_resends_its_final_until_timer_j(layer, peer):
    text = peer.request("OPTIONS", f"sip:bridge@127.0.0.1:{layer.transport.local[1]}")
    peer.send(text, layer.transport.local)
    msg, addr = await layer.requests.get()
    tx = layer.new_server(msg, addr)
    peer.send(text, layer.transport.local)                            # Trying: absorbed, no answer yet
    await asyncio.sleep(0.1)
    assert not [m for m in peer.log if m.code]
    from bridge.sip.message import response
    tx.respond(response(tx.request, 200, to_tag="t"), 200)
    await peer.expect(200)
    peer.send(text, layer.transport.local)                            # Completed: the 200 again
    await peer.expect(200)
    await asyncio.sleep(T.long + 0.2)                                 # Timer J
    assert tx.state == "terminated" and not layer.server


@pytest.mark.parametrize("method,code", [("OPTIONS", 401), ("INVITE", 486)])
async def test_over_a_reliable_transport_the_final_comes_before_the_transactions_end(layer, peer, method, code):
    make = layer.invite if method == "INVITE" else layer.request
    tx = make(request(method, layer, peer), peer.addr)
    tx.reliable = True              # as over TCP or TLS: no Timer D or K, it ends with its final
    sent = await peer.expect(method)
    peer.send(peer.response(sent, code, "No"), sent.source)
    assert (await asyncio.wait_for(tx.next(), 2)).code == code
    assert await asyncio.wait_for(tx.next(), 2) is None and tx.state == "terminated" and not layer.client


async def test_an_ended_transaction_is_freed_as_it_ends_not_by_the_collector(layer, peer):
    """Its timers call its methods: once it ends they let go, so a terminated transaction (and
    the message and call it holds) goes with its last reference, not at a full collection
    (which stalls every call that is up)."""
    gc.collect()
    gc.disable()
    try:
        client = layer.invite(request("INVITE", layer, peer), peer.addr)
        invite = await peer.expect("INVITE")
        peer.send(peer.response(invite, 486, "Busy Here"), invite.source)
        assert (await client.next()).code == 486
        options = layer.request(request("OPTIONS", layer, peer), peer.addr)
        sent = await peer.expect("OPTIONS")
        peer.send(peer.response(sent, 200, "OK"), sent.source)
        assert (await options.next()).code == 200
        _, server = await invite_from_peer(layer, peer)
        server.respond(response(server.request, 603, to_tag="t"), 603)
        text = peer.request("OPTIONS", f"sip:bridge@127.0.0.1:{layer.transport.local[1]}")
        peer.send(text, layer.transport.local)
        msg, addr = await asyncio.wait_for(layer.requests.get(), 2)
        answering = layer.new_server(msg, addr)
        answering.respond(response(answering.request, 200, to_tag="t"), 200)
        watched = [client, options, server, answering]
        for tx in watched:
            tx.terminate()
        refs = [weakref.ref(tx) for tx in watched]
        del client, options, server, answering, watched, tx
        await asyncio.sleep(0.1)
        assert [ref() for ref in refs] == [None, None, None, None]
    finally:
        gc.enable()
