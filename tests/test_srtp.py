"""SRTP on the SIP leg: keys and suites (bridge.srtp), SDES lines (bridge.sip.sdes), the SDP
offer/answer with crypto (bridge.sip.sdp), and two RtpEndpoints talking SRTP over 127.0.0.1.

What crosses the wire is checked as it is: the payload of a protected packet is not the audio,
a packet with a bad tag, a replay or a wrong key is dropped and counted, and a stranger's packet
cannot latch the stream. Malformed a=crypto lines are refused without their key in the message.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging

import numpy as np
import pytest

from bridge import g711
from bridge.clock import FrameClock
from bridge.rtp import RTP_HEADER, RtpEndpoint, RtpPacket
from bridge.sip import sdes, sdp
from bridge.sip.transport import trace
from bridge.srtp import KEY_LENGTH, SUITES, Srtp, SrtpKey, new_key, protector, unprotector
from test_rtp import raw_socket, wait_until

HOST = "127.0.0.1"
N = 160
SUITE80, SUITE32 = "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"


def packet(seq: int, payload: bytes = b"\xff" * N, ssrc: int = 0x1234) -> bytes:
    return RtpPacket(0, seq, seq * N, ssrc, payload).serialize()


# --- bridge.srtp ---------------------------------------------------------------------------------

@pytest.mark.parametrize("suite,tag", [(SUITE80, 10), (SUITE32, 4)])
def test_protect_unprotect_both_suites_and_what_fails(suite, tag):
    ours, theirs = SrtpKey(suite, new_key()), SrtpKey(suite, new_key())
    sender, receiver = Srtp(ours, theirs), Srtp(theirs, ours)
    clear = packet(1, bytes(range(160)))
    wire = sender.protect(clear)
    assert len(wire) == len(clear) + tag                       # the authentication tag
    assert wire[:RTP_HEADER.size] == clear[:RTP_HEADER.size]   # the header stays readable
    assert bytes(range(160)) not in wire                       # the payload does not
    assert receiver.unprotect(wire) == clear
    assert receiver.unprotect(wire) is None                    # a replay
    tampered = bytearray(sender.protect(packet(2)))
    tampered[20] ^= 1
    assert receiver.unprotect(bytes(tampered)) is None         # a flipped payload bit
    assert receiver.unprotect(packet(3)) is None               # plain RTP
    assert receiver.unprotect(b"\x80\x00") is None             # too short to hold anything
    stranger = Srtp(SrtpKey(suite, new_key()), SrtpKey(suite, new_key()))
    assert receiver.unprotect(stranger.protect(packet(4))) is None    # another key
    assert receiver.unprotect(sender.protect(packet(5))) == packet(5)  # and it still works


def test_new_keys_are_random_and_never_shown():
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100 and all(len(k) == KEY_LENGTH for k in keys)
    key = SrtpKey(SUITE80, new_key())
    assert key.key.hex() not in repr(key) and base64.b64encode(key.key).decode() not in repr(key)
    with pytest.raises(ValueError):
        SrtpKey("AEAD_AES_256_GCM", new_key())
    with pytest.raises(ValueError):
        SrtpKey(SUITE80, b"short")


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_the_lean_transforms_are_pylibsrtps_bit_for_bit(suite):
    """protector/unprotector give what pylibsrtp's protect/unprotect give, on the same session
    state; what pylibsrtp refuses with an exception they refuse with None; a packet too long
    for the session's buffer is refused, not written past it."""
    import pylibsrtp

    key = new_key()

    def session(direction: int) -> pylibsrtp.Session:
        return pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=direction, srtp_profile=SUITES[suite]))

    theirs, ours = session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND), session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    protect = protector(ours)
    wires = []
    for seq in range(1, 40):
        clear = packet(seq, bytes(range(seq, seq + N)))
        wire = protect(clear)
        assert wire == theirs.protect(clear) and wire != clear
        wires.append((wire, clear))
    assert protect(packet(99, bytes(1500))) is None              # no room for the tag
    theirs_rx, ours_rx = session(pylibsrtp.Policy.SSRC_ANY_INBOUND), session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    unprotect = unprotector(ours_rx)
    for wire, clear in wires:
        assert unprotect(wire) == theirs_rx.unprotect(wire) == clear
        assert unprotect(wire) is None                             # a replay
        with pytest.raises(pylibsrtp.Error):
            theirs_rx.unprotect(wire)
    assert unprotect(b"\x80\x00") is None and unprotect(packet(50)) is None
    assert unprotect(bytes(1600)) is None
    lone = protector(session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND))   # its session referenced by it only
    gc.collect()
    assert lone(packet(1)) == session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND).protect(packet(1))


def test_a_renegotiation_with_the_same_keys_keeps_the_replay_window():
    ours, theirs = SrtpKey(SUITE80, new_key()), SrtpKey(SUITE80, new_key())
    sender, receiver = Srtp(ours, theirs), Srtp(theirs, ours)
    first = sender.protect(packet(7))
    assert receiver.unprotect(first) == packet(7)
    receiver.update(theirs, ours)                               # a re-INVITE repeating the keys
    assert receiver.unprotect(first) is None                    # still a replay
    fresh = SrtpKey(SUITE80, new_key())
    receiver.update(theirs, fresh)                              # the peer's new key: a new stream
    assert receiver.unprotect(Srtp(fresh, ours).protect(packet(7))) == packet(7)


# --- bridge.sip.sdes --------------------------------------------------------------------------------

KEY = bytes(range(30))
INLINE = base64.b64encode(KEY).decode()


def test_a_crypto_line_round_trips():
    line = sdes.Crypto(3, SUITE32, KEY).attribute()
    assert line == f"a=crypto:3 {SUITE32} inline:{INLINE}"
    parsed = sdes.parse(line.split(":", 1)[1])
    assert parsed == sdes.Crypto(3, SUITE32, KEY)
    assert INLINE not in repr(parsed)
    assert sdes.parse(f"1 {SUITE80} inline:{INLINE}|2^31").key == KEY            # a lifetime
    assert sdes.parse(f"1 {SUITE80.lower()} inline:{INLINE}|2147483648 WSH=64").suite == SUITE80


@pytest.mark.parametrize("value,why", [
    ("", "without tag"),
    ("1 AES_CM_128_HMAC_SHA1_80", "without tag"),
    (f"x {SUITE80} inline:{INLINE}", "without tag"),
    (f"1234567890 {SUITE80} inline:{INLINE}", "without tag"),
    (f"1 AEAD_AES_256_GCM inline:{INLINE}", "unsupported suite"),
    (f"1 F8_128_HMAC_SHA1_80 inline:{INLINE}", "unsupported suite"),
    (f"1 {SUITE80} inline:{INLINE};inline:{INLINE}", "more than one key"),
    (f"1 {SUITE80} uri:{INLINE}", "not an inline key"),
    (f"1 {SUITE80} inline:", "not an inline key"),
    (f"1 {SUITE80} inline:{INLINE}|2^20|1:4", "MKI"),
    (f"1 {SUITE80} inline:{INLINE}|1:4", "MKI"),
    (f"1 {SUITE80} inline:{INLINE}|forever", "lifetime"),
    (f"1 {SUITE80} inline:{INLINE}|1|2|3", "MKI"),
    (f"1 {SUITE80} inline:{INLINE} UNENCRYPTED_SRTP", "UNENCRYPTED_SRTP"),
    (f"1 {SUITE80} inline:{INLINE} KDR=24", "KDR"),
    (f"1 {SUITE80} inline:{INLINE[:-4]}!!!!", "not base64"),
    (f"1 {SUITE80} inline:{base64.b64encode(KEY[:16]).decode()}", "16 bytes"),
    (f"1 {SUITE80} inline:{base64.b64encode(KEY + KEY).decode()}", "60 bytes"),
])
def test_malformed_crypto_lines_are_refused_without_showing_the_key(value, why):
    with pytest.raises(sdes.SdesError) as info:
        sdes.parse(value)
    assert why in str(info.value)
    assert INLINE[:12] not in str(info.value) and "inline:" not in str(info.value)
    assert sdes.usable([value]) == []


def test_usable_skips_what_the_bridge_lacks_and_keeps_order():
    lines = [f"1 AEAD_AES_128_GCM inline:{base64.b64encode(bytes(28)).decode()}",
             f"2 {SUITE32} inline:{INLINE}", f"3 {SUITE80} inline:{INLINE}"]
    assert [c.tag for c in sdes.usable(lines)] == [2, 3]
    assert [c.tag for c in sdes.offer({s: new_key() for s in SUITES})] == [1, 2]


def test_redact_removes_every_inline_key_and_nothing_else():
    body = (f"v=0\r\nm=audio 4000 RTP/SAVP 0\r\na=crypto:1 {SUITE80} inline:{INLINE}|2^31\r\n"
            f"a=crypto:2 {SUITE32} inline:{INLINE}\r\na=rtpmap:0 PCMU/8000\r\n").encode()
    shown = sdes.redact(body)
    assert INLINE.encode() not in shown
    assert shown.count(b"inline:<redacted>") == 2 and b"|2^31" in shown and b"a=rtpmap:0 PCMU/8000" in shown
    assert sdes.redact(b"no keys here") == b"no keys here"


def test_the_sip_trace_never_holds_a_key(caplog):
    body = f"m=audio 4000 RTP/SAVP 0\r\na=crypto:1 {SUITE80} inline:{INLINE}\r\n"
    message = f"INVITE sip:2001@pbx SIP/2.0\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
    with caplog.at_level(logging.INFO, "bridge.sip.trace"):
        trace("sent to", message, ("::1", 5061), "TLS")
    assert "inline:<redacted>" in caplog.text and INLINE not in caplog.text
    assert "SIP sent to [::1]:5061 over TLS" in caplog.text


# --- bridge.sip.sdp with SDES --------------------------------------------------------------------------

def offer(profile: str, *crypto: str, port: int = 4000) -> sdp.SessionDescription:
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
             f"m=audio {port} {profile} 0 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000"]
    lines += [f"a=crypto:{c}" for c in crypto]
    return sdp.parse("\r\n".join(lines) + "\r\n")


GOOD = f"1 {SUITE80} inline:{INLINE}"
ONLY_GCM = f"1 AEAD_AES_128_GCM inline:{base64.b64encode(bytes(28)).decode()}"


@pytest.mark.parametrize("profile,crypto,mode,secure,refused", [
    ("RTP/AVP", [], "off", False, None),
    ("RTP/AVP", [GOOD], "off", False, None),                 # best-effort SRTP, answered plain
    ("RTP/SAVP", [GOOD], "off", None, "unsupported media profile RTP/SAVP (sip.srtp is off)"),
    ("RTP/AVP", [], "optional", False, None),
    ("RTP/AVP", [GOOD], "optional", True, None),
    ("RTP/AVP", [ONLY_GCM], "optional", False, None),
    ("RTP/SAVP", [GOOD], "optional", True, None),
    ("RTP/SAVPF", [GOOD], "optional", True, None),
    ("RTP/SAVP", [], "optional", None, "no usable a=crypto line"),
    ("RTP/SAVP", [ONLY_GCM], "optional", None, "no usable a=crypto line"),
    ("RTP/SAVP", [GOOD], "required", True, None),
    ("RTP/AVP", [GOOD], "required", True, None),
    ("RTP/AVP", [], "required", None, "SRTP is required"),
    ("RTP/SAVP", [ONLY_GCM], "required", None, "no usable a=crypto line"),
])
def test_choose_by_srtp_mode(profile, crypto, mode, secure, refused):
    if refused:
        with pytest.raises(sdp.SdpError) as info:
            sdp.choose(offer(profile, *crypto), srtp=mode)
        assert refused in str(info.value) and INLINE not in str(info.value)
        return
    audio, codec = sdp.choose(offer(profile, *crypto), srtp=mode)
    assert codec == ("PCMU", 0)
    assert (audio.crypto is not None) == secure
    if secure:
        assert audio.crypto == sdes.Crypto(1, SUITE80, KEY)


def test_an_srtp_stream_then_an_rtp_stream_takes_the_first_only_when_srtp_is_allowed():
    text = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio 4000 RTP/SAVP 0\r\na=crypto:{GOOD}\r\nm=audio 4002 RTP/AVP 0\r\n")
    assert sdp.choose(sdp.parse(text), srtp="off")[0].index == 1
    assert sdp.choose(sdp.parse(text), srtp="optional")[0].index == 0


def test_answers_keep_the_offers_profile_and_tag_with_our_key():
    audio, codec = sdp.choose(offer("RTP/SAVP", f"7 {SUITE32} inline:{INLINE}"), srtp="required")
    ours = new_key()
    answer = sdp.build("::1", 5000, [codec], session=sdp.SessionVersion(), like=audio,
                       crypto=[sdes.Crypto(audio.crypto.tag, audio.crypto.suite, ours)])
    assert "m=audio 5000 RTP/SAVP 0 101" in answer and "c=IN IP6 ::1" in answer
    assert f"a=crypto:7 {SUITE32} inline:{base64.b64encode(ours).decode()}" in answer
    mine = sdp.build("127.0.0.1", 5000, [codec], session=sdp.SessionVersion(), protocol="RTP/SAVP",
                     crypto=sdes.offer({s: new_key() for s in SUITES}))
    parsed = sdp.parse(mine)
    assert parsed.media[0].protocol == "RTP/SAVP" and len(sdes.usable(parsed.media[0].crypto)) == 2


# --- two endpoints over 127.0.0.1 ----------------------------------------------------------------------

@pytest.mark.parametrize("suite", [SUITE80, SUITE32])
async def test_a_tone_over_srtp_between_two_endpoints_and_strangers_are_dropped(suite):
    key_a, key_b = SrtpKey(suite, new_key()), SrtpKey(suite, new_key())
    a = await RtpEndpoint.create(HOST, codec="PCMU")
    b = await RtpEndpoint.create(HOST, codec="PCMU", source_allowed=lambda ip: ip == HOST)
    sniffer, stranger = raw_socket(), raw_socket()
    a.set_srtp(key_a, key_b)
    b.set_srtp(key_b, key_a)
    a.set_remote(b.local_address)
    b.set_remote(a.local_address)
    try:
        # before any packet of a: a stranger's packets, plain and with a wrong key, latch nothing
        stranger.sendto(packet(1), b.local_address)
        stranger.sendto(Srtp(SrtpKey(suite, new_key()), key_b).protect(packet(2)), b.local_address)
        stranger.sendto(b"\x80", b.local_address)
        await wait_until(lambda: b.stats.srtp_failed == 2 and b.stats.malformed == 1)
        assert b.stats.packets_received == 0 and b.remote_address == a.local_address
        frames = 50
        t = np.arange(frames * N) / 8000
        tone = np.round(0.3 * 32767 * np.sin(2 * np.pi * 1004 * t)).astype(np.int16)
        got = []
        async for tick in FrameClock(0.020):
            if tick.index < frames:
                a.write_frame(tone[tick.index * N:(tick.index + 1) * N])
            got.append(b.read_frame())
            if tick.index >= frames + 4:
                break
        out = np.concatenate(got)
        coded = g711.decode("PCMU", g711.encode("PCMU", tone))
        start = int(np.flatnonzero(out)[0]) - int(np.flatnonzero(coded)[0])
        assert np.array_equal(out[start:start + len(coded)], coded)      # bit-exact through SRTP
        assert b.stats.packets_received == frames and b.stats.srtp_failed == 2
        # what a listener on the path sees is not the audio
        a.set_remote(sniffer.getsockname())
        a.write_frame(tone[:N])
        wire, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(sniffer, 2048), 1)
        assert len(wire) == RTP_HEADER.size + N + (10 if suite == SUITE80 else 4)
        assert g711.encode("PCMU", tone[:N]) not in wire
        # that packet, sent on by the listener: genuine, but from elsewhere (foreign); again: a replay
        stranger.sendto(wire, b.local_address)
        await wait_until(lambda: b.stats.foreign == 1)
        stranger.sendto(wire, b.local_address)
        await wait_until(lambda: b.stats.srtp_failed == 3)
        assert b.stats.packets_received == frames
    finally:
        a.close()
        b.close()
        sniffer.close()
        stranger.close()


async def test_relayed_packets_are_protected_and_unprotected_too():
    """The relay path (on_audio -> write_payload) goes through the same protect/unprotect."""
    keys = [SrtpKey(SUITE80, new_key()) for _ in range(4)]
    phone, leg_in, leg_out, far = [await RtpEndpoint.create(HOST, codec="PCMU") for _ in range(4)]
    phone.set_srtp(keys[0], keys[1])
    leg_in.set_srtp(keys[1], keys[0])
    leg_out.set_srtp(keys[2], keys[3])
    far.set_srtp(keys[3], keys[2])
    phone.set_remote(leg_in.local_address)
    leg_out.set_remote(far.local_address)
    far.set_remote(leg_out.local_address)
    relayed: list[bytes] = []
    far.on_audio = lambda pt, seq, ts, ssrc, payload: relayed.append(payload)
    leg_in.on_audio = lambda pt, seq, ts, ssrc, payload: leg_out.write_payload(payload)
    try:
        for k in range(10):
            phone.write_payload(bytes([0x90 + k]) * N)
        await wait_until(lambda: len(relayed) == 10)
        assert [p[0] for p in relayed] == [0x90 + k for k in range(10)]
        assert leg_in.stats.srtp_failed == far.stats.srtp_failed == 0
    finally:
        for ep in (phone, leg_in, leg_out, far):
            ep.close()
