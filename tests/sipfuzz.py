"""A seeded mutation fuzzer for SIP INVITEs and their SDP.

`Mutator(seed).invite(n)` gives the n-th mutation of a well-formed INVITE: structural ones (a
header's value replaced by hostile text, a header dropped or repeated, the SDP bent line by
line, Content-Length lied about) and byte-level ones (flips, insertions, cuts). The same seed
gives the same inputs, so a failure is reproduced by its seed and index.
"""

from __future__ import annotations

import random
import uuid

HOSTILE = [
    "", " ", "<", ">", "<sip:", "sip:", "<sip:a@b", "sip:@", "\"", "\"unterminated", ";tag=", ";tag", ";;;",
    "a" * 5000, "9" * 400, "-1", "0", "4294967296", "99999999999999999999", "%00", "\x00", "\r\n", "\r\nX: y",
    "\x1b[31mred\x1b[0m", "\u202e", "ü€漢字", "sip:[::1", "sip:a@[zz::1]:5060", "sip:a@host:0", "sip:a@host:70000",
    "sip:a@b;lr;lr;lr", "tel:", "tel:+", "sips:a@b", "<sip:a@127.0.0.1>;tag=" + "x" * 300, "SIP/2.0/UDP",
    "SIP/2.0/UDP 127.0.0.1", "SIP/2.0/UDP 127.0.0.1:5060;branch=", "1", "1 INVITE extra", "INVITE",
    "1 BYE", "abc INVITE", "Digest", "Digest realm=\"", ",", ",,,", "<sip:a@b>, <sip:c@d>", "*",
]
HEADERS = ["Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Content-Type", "Content-Length",
           "Record-Route", "Route", "Session-Expires", "Require", "Supported", "Min-SE", "Allow", "Expires",
           "P-Asserted-Identity", "Refer-To", "Replaces"]
SDP_LINES = ["v=0", "v=1", "o=", "o=- x y IN IP4", "c=IN IP4", "c=IN IP4 evil.example.com", "c=IN IP4 127.0.0.9",
             "c=IN IP6 ::1", "c=IN IP4 999.1.1.1", "c=IN IP4 0.0.0.0", "m=audio", "m=audio x RTP/AVP 0",
             "m=audio -5 RTP/AVP 0", "m=audio 70000 RTP/AVP 0", "m=audio 4000 RTP/SAVP 0", "m=video 4002 RTP/AVP 96",
             "m=audio 0 RTP/AVP 0", "m=audio 4000 RTP/AVP " + " ".join(str(i) for i in range(128)),
             "m=audio 4000 RTP/AVP 999", "a=rtpmap:0", "a=rtpmap:x PCMU/8000", "a=rtpmap:101 telephone-event/x",
             "a=rtpmap:0 PCMU/0", "a=ptime:0", "a=ptime:-20", "a=sendonly", "a=inactive", "a=crypto:1 bogus",
             "a=" + "z" * 3000, "b=AS:x", "t=0", "z", "=", "m=audio 4000/2 RTP/AVP 0 8 101"]


class Mutator:
    def __init__(self, seed: int, target_port: int, host: str = "127.0.0.1", local_port: int = 5999,
                 dialed: str = "9999") -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.target_port = target_port
        self.host = host
        self.local_port = local_port
        self.dialed = dialed

    def base(self) -> tuple[list[tuple[str, str]], list[str]]:
        call_id = uuid.UUID(int=self.rng.getrandbits(128)).hex
        uri = f"sip:{self.dialed}@{self.host}:{self.target_port}"
        headers = [
            ("Via", f"SIP/2.0/UDP {self.host}:{self.local_port};branch=z9hG4bK{self.rng.getrandbits(64):x};rport"),
            ("Max-Forwards", "70"), ("From", f"\"Fuzz\" <sip:2002@{self.host}>;tag={self.rng.getrandbits(32):x}"),
            ("To", f"<{uri}>"), ("Call-ID", f"{call_id}@fuzz"), ("CSeq", "1 INVITE"),
            ("Contact", f"<sip:2002@{self.host}:{self.local_port}>"), ("Content-Type", "application/sdp"),
        ]
        sdp = ["v=0", f"o=fuzz 1 1 IN IP4 {self.host}", "s=-", f"c=IN IP4 {self.host}", "t=0 0",
               "m=audio 40000 RTP/AVP 0 8 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
               "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=sendrecv"]
        return headers, sdp

    def invite(self) -> bytes:
        """One mutated INVITE (each call draws the next)."""
        headers, sdp = self.base()
        rng = self.rng
        for _ in range(rng.randint(1, 3)):
            kind = rng.random()
            if kind < 0.30:                                    # a header value made hostile
                i = rng.randrange(len(headers))
                headers[i] = (headers[i][0], rng.choice(HOSTILE) if rng.random() < 0.7 else
                              headers[i][1] + rng.choice(HOSTILE))
            elif kind < 0.40:                                  # a header dropped
                headers.pop(rng.randrange(len(headers)))
            elif kind < 0.50:                                  # a header added or repeated
                headers.insert(rng.randrange(len(headers) + 1), (rng.choice(HEADERS), rng.choice(HOSTILE)))
            elif kind < 0.75:                                  # an SDP line bent
                i = rng.randrange(len(sdp))
                sdp[i] = rng.choice(SDP_LINES)
            elif kind < 0.85:                                  # an SDP line added
                sdp.insert(rng.randrange(len(sdp) + 1), rng.choice(SDP_LINES))
            else:                                              # compact forms and odd spacing
                i = rng.randrange(len(headers))
                name = {"Via": "v", "From": "f", "To": "t", "Call-ID": "i", "Contact": "m"}.get(headers[i][0], headers[i][0])
                headers[i] = (name.lower() if rng.random() < 0.5 else name, headers[i][1])
        body = ("\r\n".join(sdp) + "\r\n").encode("utf-8", "replace")
        length = len(body)
        roll = rng.random()
        if roll < 0.05:
            length += rng.randint(1, 500)                      # a lie: longer than the body
        elif roll < 0.10:
            length = max(0, length - rng.randint(1, length))   # shorter: the rest is ignored
        start = f"INVITE sip:{self.dialed}@{self.host}:{self.target_port} SIP/2.0"
        if rng.random() < 0.05:
            start = rng.choice([f"INVITE {rng.choice(HOSTILE)} SIP/2.0", "INVITE sip:x SIP/3.0", "INVITE",
                                "INV\x00ITE sip:a@b SIP/2.0"])
        text = "\r\n".join([start] + [f"{n}: {v}" for n, v in headers] + [f"Content-Length: {length}"])
        data = text.encode("utf-8", "replace") + b"\r\n\r\n" + body
        if rng.random() < 0.15:                                # byte-level damage
            data = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                op = rng.random()
                pos = rng.randrange(len(data))
                if op < 0.5:
                    data[pos] = rng.randrange(256)
                elif op < 0.8:
                    data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
                else:
                    del data[pos:pos + rng.randint(1, 64)]
            data = bytes(data)
        return data
