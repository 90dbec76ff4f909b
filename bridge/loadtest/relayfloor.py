"""python -m bridge.loadtest.relayfloor: the floor of a relay in Python on uvloop, to set the bridge's
per-packet cost against (docs/performance.md, "The floor of a Python relay").

A relay process with two UDP sockets a call and direction does the least a relay of the bridge's
kind must: an "app" packet (SRTP, AES-GCM) is unprotected, its header rewritten and sent on as
plain RTP; a "phone" packet (plain RTP) gets a new header and is protected on the way to the app
(`--plain`: neither, each datagram only passed on), from another socket back to where it came
from. This process sends every stream 50 packets a second, the streams' clocks spread over the
20 ms as calls' are, counts what comes back, and prints the relay process's CPU (utime + stime over
the measured seconds) a relayed packet. Every socket is on 127.0.0.1, on a port the system picks.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

import pylibsrtp
import uvloop

from ..rtp import RTP_HEADER as HEADER
from ..srtp import protector, unprotector
from .probe import proc_sample

KEY = bytes(range(28))                     # AES-128-GCM: 16 bytes of key, 12 of salt
PAYLOAD = b"\xd5" * 160                    # 20 ms of G.711


def _session(direction: int) -> pylibsrtp.Session:
    return pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=direction,
                                              srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM))


class _FromApp(asyncio.DatagramProtocol):
    """SRTP in, plain RTP out, a header of the other leg's."""

    def __init__(self, out: asyncio.DatagramTransport) -> None:
        self.out, self.seq = out, 0
        self.unprotect = unprotector(_session(pylibsrtp.Policy.SSRC_ANY_INBOUND))

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        rtp = self.unprotect(data)
        if rtp is None:
            return
        _, _, _, timestamp, _ = HEADER.unpack_from(rtp)
        self.seq = (self.seq + 1) & 0xFFFF
        self.out.sendto(HEADER.pack(0x80, 0, self.seq, timestamp, 0x1234) + rtp[12:], addr)


class _FromPhone(asyncio.DatagramProtocol):
    """Plain RTP in, SRTP out."""

    def __init__(self, out: asyncio.DatagramTransport) -> None:
        self.out, self.seq = out, 0
        self.protect = protector(_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND))

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        _, _, _, timestamp, _ = HEADER.unpack_from(data)
        self.seq = (self.seq + 1) & 0xFFFF
        self.out.sendto(self.protect(HEADER.pack(0x80, 0, self.seq, timestamp, 0x5678) + data[12:]), addr)


class _Pass(asyncio.DatagramProtocol):
    def __init__(self, out: asyncio.DatagramTransport) -> None:
        self.out = out

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.out.sendto(data, addr)


async def _relay(calls: int, plain: bool) -> None:
    loop = asyncio.get_running_loop()
    ports = []
    for i in range(2 * calls):
        out, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        kind = _Pass if plain else _FromApp if i % 2 == 0 else _FromPhone
        into, _ = await loop.create_datagram_endpoint(lambda: kind(out), local_addr=("127.0.0.1", 0))
        ports.append(into.get_extra_info("sockname")[1])
    print("ready", *ports, flush=True)
    await asyncio.Event().wait()


def _cpu(pid: int) -> float:
    sample = proc_sample(pid)             # the load test's own reading of /proc
    if sample is None:
        raise SystemExit("relayfloor: the relay process is gone")
    return sample[0]


async def _send(ports: list[int], plain: bool, seconds: float, pid: int) -> tuple[int, int, float]:
    loop = asyncio.get_running_loop()
    received = [0]

    class Stream(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            received[0] += 1

    streams = len(ports)
    sockets = [(await loop.create_datagram_endpoint(Stream, local_addr=("127.0.0.1", 0)))[0] for _ in ports]
    srtp = [None if plain or i % 2 else _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND) for i in range(streams)]
    start = time.monotonic()
    sent = k = 0
    cpu0 = None
    while (now := time.monotonic() - start) < seconds + 2:
        if cpu0 is None and now >= 2:                        # 2 s to settle, then measured
            cpu0, sent0, received0 = _cpu(pid), sent, received[0]
        while k // streams * 0.02 + (k % streams) * 0.02 / streams <= now:
            i, n = k % streams, k // streams + 1
            packet = HEADER.pack(0x80, 0, n & 0xFFFF, n * 160, 0x1000 + i) + PAYLOAD
            session = srtp[i]
            sockets[i].sendto(packet if session is None else session.protect(packet), ("127.0.0.1", ports[i]))
            sent += 1
            k += 1
        await asyncio.sleep(0.0005)
    cpu = _cpu(pid) - cpu0
    await asyncio.sleep(0.2)
    return sent - sent0, received[0] - received0, cpu


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bridge.loadtest.relayfloor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--plain", action="store_true", help="no SRTP, no header rewrite: datagrams passed on")
    parser.add_argument("--relay", action="store_true", help=argparse.SUPPRESS)   # the relay process itself
    args = parser.parse_args()
    if args.relay:
        uvloop.run(_relay(args.calls, args.plain))
        return
    command = [sys.executable, "-m", "bridge.loadtest.relayfloor", "--relay", "--calls", str(args.calls)]
    relay = subprocess.Popen(command + (["--plain"] if args.plain else []), stdout=subprocess.PIPE, text=True)
    try:
        ready, *ports = relay.stdout.readline().split() if relay.stdout is not None else [""]
        if ready != "ready" or len(ports) != 2 * args.calls:
            sys.exit("relayfloor: the relay process did not start")
        sent, received, cpu = uvloop.run(_send([int(p) for p in ports], args.plain, args.seconds, relay.pid))
    finally:
        relay.kill()
        relay.wait()
    kind = "plain datagrams" if args.plain else "SRTP <-> RTP, headers rewritten"
    print(f"{args.calls} calls ({kind}): {sent} packets sent, {received} relayed back; relay CPU "
          f"{100 * cpu / args.seconds:.1f} % of a core, {1e6 * cpu / max(1, received):.1f} us a relayed packet")


if __name__ == "__main__":
    main()
