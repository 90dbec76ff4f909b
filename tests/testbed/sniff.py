"""RTP as it crosses the loopback interface: what a desk phone is sent, judged without the phone.

baresip 1.0.0 stops writing its ``-dec.wav`` recording at the first re-INVITE of a call (its
decode filters are dropped when the stream is updated, and not set up again: the file is closed,
a few seconds long), so what a phone hears during and after a hold is read off the wire instead:
a packet socket (AF_PACKET, needs root or CAP_NET_RAW, like sipp's pcap play) on ``lo`` keeps
every IPv4/UDP datagram between two port ranges, with its arrival time. RTP and G.711 are parsed
here, by hand, independently of the code under test (mu-law: ``testbed.pcap.ulaw_decode``).

    with RtpSniffer(src_ports=range(33000, 34000), dst_ports=range(10000, 19999)) as sniff:
        ...
    pcm = sniff.pcm(since, until, (33002, 10500))    # int16 at 8 kHz: PCMU from 33002 to 10500

Other tests (other users of the machine) may run calls over the same port ranges at the same
time: always name the exact (source port, destination port) of the call.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest

from .pcap import ulaw_decode

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4


class RtpSniffer:
    def __init__(self, src_ports: range, dst_ports: range, interface: str = "lo") -> None:
        self.src_ports, self.dst_ports, self.interface = src_ports, dst_ports, interface
        self.packets: list[tuple[float, tuple[int, int], int, bytes]] = []   # (time, ports, pt, payload)
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RtpSniffer":
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        except PermissionError:
            pytest.fail("test bed: reading RTP off the wire needs root or CAP_NET_RAW (a packet socket)",
                        pytrace=False)
        self._sock.bind((self.interface, 0))
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, name="rtp-sniffer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._sock is not None:
            self._sock.close()

    def _run(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data, addr = self._sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING:             # loopback shows each packet twice
                continue
            self._take(data, time.monotonic())

    def _take(self, ip: bytes, at: float) -> None:
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP:
            return
        header = (ip[0] & 0x0F) * 4
        if len(ip) < header + 8 + 12:
            return
        src, dst = struct.unpack_from("!HH", ip, header)
        if src not in self.src_ports or dst not in self.dst_ports:
            return
        rtp = ip[header + 8:]
        if rtp[0] >> 6 != 2:
            return
        start = 12 + 4 * (rtp[0] & 0x0F)
        if rtp[0] & 0x10 and len(rtp) >= start + 4:     # header extension
            start += 4 + 4 * struct.unpack_from("!H", rtp, start + 2)[0]
        self.packets.append((at, (src, dst), rtp[1] & 0x7F, rtp[start:]))

    def count(self, since: float, until: float, ports: tuple[int, int]) -> int:
        """RTP packets sent from ports[0] to ports[1] between `since` and `until` (monotonic)."""
        return sum(1 for at, p, *_ in list(self.packets) if since <= at < until and p == ports)

    def pcm(self, since: float, until: float, ports: tuple[int, int], payload_type: int = 0) -> np.ndarray:
        """The G.711 mu-law (payload type 0) audio sent from ports[0] to ports[1] between `since`
        and `until`, in the order it arrived (loopback keeps it)."""
        chosen = [payload for at, p, pt, payload in list(self.packets)
                  if since <= at < until and p == ports and pt == payload_type]
        return ulaw_decode(b"".join(chosen)) if chosen else np.zeros(0, np.int16)
