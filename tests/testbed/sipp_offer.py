"""sipp as a PBX that offers a chosen SDP to a user agent, and the answers it got.

``offer_scenario(path, offer, expect=200, reoffers=())`` writes a UAC scenario: an INVITE with
``offer`` as its body, sent straight to the agent under test (no proxy); a final ``expect``. A
refusal (>= 300) is ACKed in its transaction and that is all. A 2xx is ACKed (Request-URI: its
Contact), then each re-offer follows as a re-INVITE in the dialog: a body, or ``None`` for a
re-INVITE without SDP (the 2xx then carries the agent's offer, the ACK ``ack_answer``);
then BYE. Bodies may use sipp's keywords ([media_ip], [media_port], [local_ip]...).

``answers(result)`` gives the SDP bodies of the 2xx responses sipp received, in order;
``sections(body)`` splits one into its media sections.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

from .sipp import SippResult

# An answer to the agent's offer in a 2xx to a re-INVITE without SDP: PCMU and telephone-event.
DELAYED_ANSWER = """v=0
o=pbx 1 3 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=sendrecv"""

_HEAD = """      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:2002@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      {to}
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      Contact: <sip:2002@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70"""


def _send(first_line: str, cseq: int, method: str, body: Optional[str], *, to: str = "[last_To:]",
          retrans: bool = True) -> str:
    head = _HEAD.format(to=to, cseq=cseq, method=method)
    if body is None:
        tail = "      Content-Length: 0\n\n"
    else:
        tail = "      Content-Type: application/sdp\n      Content-Length: [len]\n\n" + \
               "\n".join(f"      {line}" for line in body.strip().splitlines()) + "\n"
    attr = ' retrans="500"' if retrans else ""
    return f"""  <send{attr}>
    <![CDATA[
      {first_line}
{head}
{tail}
    ]]>
  </send>
"""


def offer_scenario(path: Path, offer: str, *, expect: int = 200, reoffers: Sequence[Optional[str]] = (),
                   ack_answer: str = DELAYED_ANSWER, pause_ms: int = 300) -> Path:
    """Write the scenario (see the module docstring) to ``path``."""
    parts = [_send("INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0", 1, "INVITE", offer,
                   to="To: <sip:[service]@[remote_ip]:[remote_port]>"),
             '  <recv response="100" optional="true"/>\n  <recv response="180" optional="true"/>\n']
    if expect >= 300:
        parts.append(f'  <recv response="{expect}"/>\n')
        parts.append(_send("ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0", 1, "ACK", None, retrans=False))
    else:
        parts.append(f'  <recv response="{expect}" rrs="true"/>\n')
        parts.append(_send("ACK [next_url] SIP/2.0", 1, "ACK", None, retrans=False))
        for n, body in enumerate(reoffers, start=2):
            parts.append(f'  <pause milliseconds="{pause_ms}"/>\n')
            parts.append(_send("INVITE [next_url] SIP/2.0", n, "INVITE", body))
            parts.append('  <recv response="100" optional="true"/>\n  <recv response="200"/>\n')
            parts.append(_send("ACK [next_url] SIP/2.0", n, "ACK", ack_answer if body is None else None,
                               retrans=False))
        parts.append(f'  <pause milliseconds="{pause_ms}"/>\n')
        parts.append(_send("BYE [next_url] SIP/2.0", len(reoffers) + 2, "BYE", None))
        parts.append('  <recv response="200"/>\n')
    path.write_text('<?xml version="1.0" encoding="ISO-8859-1" ?>\n<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'
                    f'<scenario name="uac offer">\n{"".join(parts)}</scenario>\n')
    return path


def answers(result: SippResult) -> list[str]:
    """SDP bodies of the 2xx responses to INVITEs that sipp received, one per INVITE, in order
    (a retransmitted 2xx is left out)."""
    bodies: dict[int, str] = {}
    for block in re.split(r"(?m)^-{10,} .*$", result.messages()):
        if not re.match(r"\s*\S+ message received", block):
            continue
        message = block.replace("\r\n", "\n").strip("\n").split("\n", 1)[1].strip("\n")
        head, _, body = message.partition("\n\n")
        cseq = re.search(r"(?mi)^CSeq:\s*(\d+) INVITE", head)
        if re.match(r"SIP/2\.0 2\d\d ", head) and cseq:
            bodies.setdefault(int(cseq.group(1)), body.strip())
    return [bodies[n] for n in sorted(bodies)]


def sections(body: str) -> list[list[str]]:
    """The media sections of an SDP body: each m= line with the lines under it."""
    found: list[list[str]] = []
    for line in body.splitlines():
        if line.startswith("m="):
            found.append([line])
        elif found:
            found[-1].append(line)
    return found
