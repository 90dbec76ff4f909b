"""SDP offer/answer (RFC 3264) as the SIP leg answers a PBX: sipp offers, the answer is checked
line by line. One case per row of the "RFC 3264 offer/answer" table in docs/interop.md.

sipp sends the INVITE straight to the bridge's user agent (the PBX's address, trusted); the agent
answers as the bridge would, and sipp's message log gives the bodies of its 2xx responses.
"""

from __future__ import annotations

import asyncio

import pytest

from sipagent import Agent, blocking
from stack import kamailio  # noqa: F401  (fixture)
from testbed.fixtures import kamailio_factory, sipp  # noqa: F401
from testbed.sipp import SippProcess
from testbed.sipp_offer import DELAYED_ANSWER, answers, offer_scenario, sections

HEAD = """v=0
o=pbx 1 1 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
"""
PCMU = "m=audio [media_port] RTP/AVP 0 101\na=rtpmap:0 PCMU/8000\na=rtpmap:101 telephone-event/8000\n"
VIDEO = "m=video 6000 RTP/AVP 96 97\na=rtpmap:96 H264/90000\na=rtpmap:97 VP8/90000\na=sendrecv\n"
ELSEWHERE = "192.0.2.99"     # not the signalling peer, not in sip.media_networks: the policy refuses it


@pytest.fixture
async def agent(kamailio):
    a = await Agent(kamailio).start()
    yield a
    await a.ua.stop()


async def offer(agent: Agent, sipp, body: str, *, expect: int = 200, reoffers=(), answer: bool = True,
                ack_answer: str = DELAYED_ANSWER):
    """sipp offers `body` (and re-offers `reoffers`); the agent answers: (sipp's result, the call)."""
    workdir = sipp._dir()
    scenario = offer_scenario(workdir / "offer.xml", body, expect=expect, reoffers=reoffers, ack_answer=ack_answer)
    run = SippProcess(scenario, agent.addr[1], service="7001", timeout=20, workdir=workdir).start()
    call = None
    if expect < 300:
        call = await asyncio.wait_for(agent.incoming.get(), 10)
        if answer:
            await call.answer()
    result = await blocking(run.wait)
    sipp.results.append(result)
    assert result.ok, result.describe()
    return result, call


def m_lines(body: str) -> list[str]:
    """The m= lines, a port other than 0 (ours) written PORT."""
    lines = []
    for section in sections(body):
        parts = section[0].split()
        lines.append(" ".join(parts[:1] + ["PORT" if parts[1] != "0" else "0"] + parts[2:]))
    return lines


def direction(section: list[str]) -> str:
    found = [line[2:] for line in section if line[2:] in ("sendrecv", "sendonly", "recvonly", "inactive")]
    assert len(found) == 1, section
    return found[0]


# --- the answer has one m-line per offered m-line, in order (RFC 3264 6) --------------------

@pytest.mark.parametrize("name,body,expected", [
    ("audio+video", HEAD + PCMU + VIDEO,
     ["m=audio PORT RTP/AVP 0 101", "m=video 0 RTP/AVP 96"]),
    ("video first", HEAD + VIDEO + PCMU,
     ["m=video 0 RTP/AVP 96", "m=audio PORT RTP/AVP 0 101"]),
    ("audio+application", HEAD + PCMU + "m=application 6010 UDP/BFCP *\na=floorctrl:c-s\n",
     ["m=audio PORT RTP/AVP 0 101", "m=application 0 UDP/BFCP *"]),
    ("disabled stream first", HEAD + "m=audio 0 RTP/AVP 0\n" + PCMU,
     ["m=audio 0 RTP/AVP 0", "m=audio PORT RTP/AVP 0 101"]),
    ("second audio has PCMU", HEAD + "m=audio 6020 RTP/AVP 18\na=rtpmap:18 G729/8000\n" + PCMU,
     ["m=audio 0 RTP/AVP 18", "m=audio PORT RTP/AVP 0 101"]),
    ("second audio stream", HEAD + PCMU + "m=audio 6030 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n",
     ["m=audio PORT RTP/AVP 0 101", "m=audio 0 RTP/AVP 0"]),
    ("SRTP audio, then RTP", HEAD + "m=audio 6040 RTP/SAVP 0\na=crypto:1 AES_CM_128_HMAC_SHA1_80 "
     "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\n" + PCMU,
     ["m=audio 0 RTP/SAVP 0", "m=audio PORT RTP/AVP 0 101"]),
    ("tolerated lines", HEAD.replace("t=0 0", "b=AS:84\nt=0 0") +
     "m=audio [media_port] RTP/AVPF 96 0 101\nb=TIAS:64000\na=rtpmap:96 opus/48000/2\na=fmtp:96 useinbandfec=1\n"
     "a=RTPMAP:0 pcmu/8000\na=rtpmap:101 Telephone-Event/8000\na=fmtp:101 0-15\na=rtcp:6051\n"
     "a=ptime:30\na=maxptime:40\na=x-unknown:1\n",
     ["m=audio PORT RTP/AVPF 0 101"]),
])
async def test_the_answer_mirrors_every_offered_stream(agent, sipp, name, body, expected):  # noqa: F811
    result, call = await offer(agent, sipp, body)
    answer = answers(result)[0]
    assert m_lines(answer) == expected, answer
    ours = [s for s in sections(answer) if s[0].split()[1] != "0"]
    assert len(ours) == 1 and "a=rtpmap:0 PCMU/8000" in ours[0] and direction(ours[0]) == "sendrecv", answer
    assert all(len(s) == 1 for s in sections(answer) if s[0].split()[1] == "0"), answer   # declined: no attributes
    assert call.codec == "PCMU" and call.media.remote_address[1] == sipp_media_port(result)


def sipp_media_port(result) -> int:
    """The port sipp's offer named for its audio ([media_port], sipp's -mp)."""
    argv = result.log_path.read_text().split("start: ", 1)[1].split("\n", 1)[0].split()
    return int(argv[argv.index("-mp") + 1])


# --- direction and connection: media level wins over session level -----------------------------

@pytest.mark.parametrize("name,session,media,answered,held", [
    ("session sendonly", "a=sendonly\n", "", "recvonly", True),
    ("session sendonly, media sendrecv", "a=sendonly\n", "a=sendrecv\n", "sendrecv", False),
    ("session inactive, media recvonly", "a=inactive\n", "a=recvonly\n", "sendonly", False),
    ("media inactive", "", "a=inactive\n", "inactive", True),
])
async def test_direction_session_level_and_media_level(agent, sipp, name, session, media, answered, held):  # noqa: F811
    result, call = await offer(agent, sipp, HEAD + session + PCMU + media)
    ours = sections(answers(result)[0])
    assert len(ours) == 1 and direction(ours[0]) == answered, ours
    assert call.media.direction == answered and call.on_hold_now is held


async def test_media_level_connection_wins_over_session_level(agent, sipp):  # noqa: F811
    body = HEAD.replace("c=IN IP[media_ip_type] [media_ip]", f"c=IN IP4 {ELSEWHERE}") + PCMU + \
        "c=IN IP[media_ip_type] [media_ip]\n"
    result, call = await offer(agent, sipp, body)          # the stream's own c= is the allowed one
    assert m_lines(answers(result)[0]) == ["m=audio PORT RTP/AVP 0 101"]
    assert call.media.remote_address[0] == "127.0.0.1"


# --- refusals: 488, before any port is taken ------------------------------------------------

@pytest.mark.parametrize("name,body,reason", [
    ("video only", HEAD + VIDEO, "no audio stream"),
    ("every audio stream disabled", HEAD + "m=audio 0 RTP/AVP 0\n" + VIDEO, "disabled"),
    ("no common codec", HEAD + "m=audio [media_port] RTP/AVP 18\na=rtpmap:18 G729/8000\n", "no common codec"),
    ("PCMU with a wrong clock", HEAD + "m=audio [media_port] RTP/AVP 96\na=rtpmap:96 PCMU/16000\n",
     "no common codec"),
    ("media c= against the policy", HEAD + PCMU + f"c=IN IP4 {ELSEWHERE}\n", "not allowed"),
    ("17 m-lines", HEAD + PCMU + "m=video 0 RTP/AVP 96\n" * 16, "more than 16 media streams"),
])
async def test_unusable_offers_get_488(agent, sipp, name, body, reason):  # noqa: F811
    result, _ = await offer(agent, sipp, body, expect=488)
    text = result.received_text()
    assert reason in text.split("SIP/2.0 488", 1)[1].split("\n", 1)[0], text
    assert not agent.ua.calls and agent.incoming.empty() and agent.ua.ports.in_use == 0


# --- re-offers keep the m-lines of the session (RFC 3264 8) -----------------------------------

async def test_re_offers_keep_every_m_line_in_order(agent, sipp):  # noqa: F811
    first = HEAD + VIDEO + PCMU
    hold = HEAD.replace("o=pbx 1 1", "o=pbx 1 2") + VIDEO + PCMU + "a=sendonly\n"
    resume = HEAD.replace("o=pbx 1 1", "o=pbx 1 3") + "m=video 0 RTP/AVP 96\n" + PCMU + "a=sendrecv\n"
    result, call = await offer(agent, sipp, first, reoffers=[hold, None], ack_answer=resume)
    got = answers(result)
    assert len(got) == 3, got
    assert m_lines(got[0]) == m_lines(got[1]) == ["m=video 0 RTP/AVP 96", "m=audio PORT RTP/AVP 0 101"]
    assert direction(sections(got[1])[1]) == "recvonly"          # the re-offer put us on hold
    # a re-INVITE without SDP: our offer keeps the session's two m-lines, the video still declined
    assert m_lines(got[2]) == ["m=video 0 RTP/AVP 96", "m=audio PORT RTP/AVP 0 101"], got[2]
    assert call.ended.done() and not call.on_hold_now          # the ACK's answer resumed; then BYE


# --- wideband: a phone that offers only G.722 ---------------------------------------------------

@pytest.mark.parametrize("codecs,body,expected", [
    (("G722", "PCMU", "PCMA"), HEAD + "m=audio [media_port] RTP/AVP 9 101\na=rtpmap:101 telephone-event/8000\n",
     "m=audio PORT RTP/AVP 9 101"),
    (("PCMU", "PCMA", "G722"), HEAD + "m=audio [media_port] RTP/AVP 0 8 9\n",     # both sides can: G.722
     "m=audio PORT RTP/AVP 9"),
    (("PCMU", "PCMA"), HEAD + "m=audio [media_port] RTP/AVP 9 0\n", "m=audio PORT RTP/AVP 0"),
])
async def test_g722_is_answered_and_preferred_when_configured(kamailio, sipp, codecs, body, expected):  # noqa: F811
    agent = await Agent(kamailio, codecs=codecs).start()
    try:
        result, call = await offer(agent, sipp, body)
        answer = answers(result)[0]
        assert m_lines(answer) == [expected], answer
        assert call.codec == ("G722" if " 9" in expected else "PCMU")
        if call.codec == "G722":
            assert "a=rtpmap:9 G722/8000" in answer and call.media.sample_rate == 16000
    finally:
        await agent.ua.stop()


async def test_a_g722_only_offer_gets_488_without_g722_configured(agent, sipp):  # noqa: F811
    result, _ = await offer(agent, sipp, HEAD + "m=audio [media_port] RTP/AVP 9\n", expect=488)
    assert "no common codec" in result.received_text()
