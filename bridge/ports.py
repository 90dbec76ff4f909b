"""RTP port pool: even RTP ports (RTCP = RTP + 1) from a configured range.

Free ports sit in a FIFO (released ports go to the back, so a port is not reused while stray
packets of the previous call may still arrive).  :meth:`PortPool.acquire` pops from the front
and test-binds the pair, which skips ports that another process holds; each pop is O(1).
:meth:`PortPool.bind` hands out the bound RTP socket itself, leaving no window in which
another process could take the port between the test and the real bind.
"""

from __future__ import annotations

import socket
from collections import deque

from . import inet


class PortPoolExhausted(RuntimeError):
    """No free, bindable RTP port left in the range."""


class PortPool:
    """Even ports in ``[low, high]`` (both RTP and RTCP port must lie in the range)."""

    def __init__(self, low: int, high: int, host: str = "0.0.0.0") -> None:
        first = low + (low & 1)
        if not (0 < first and first + 1 <= high <= 65535):
            raise ValueError(f"invalid RTP port range {low}-{high}")
        self.host = host
        self.low, self.high = low, high
        self._free: deque[int] = deque(range(first, high, 2))
        self._used: set[int] = set()
        self.busy_skips = 0  # ports skipped because another socket held them

    def __len__(self) -> int:
        """Number of ports not handed out (some may be busy elsewhere)."""
        return len(self._free)

    @property
    def in_use(self) -> int:
        return len(self._used)

    def _probe(self, port: int, host: str, keep: bool) -> tuple[bool, socket.socket | None]:
        """Test-bind RTP and RTCP port (IPv4 or IPv6, both on ``::``); with ``keep`` the RTP
        socket stays bound."""
        try:
            rtp = inet.udp_socket(host, port)
        except OSError:
            return False, None
        try:
            inet.udp_socket(host, port + 1).close()
        except OSError:
            rtp.close()
            return False, None
        if keep:
            return True, rtp
        rtp.close()
        return True, None

    def _take(self, host: str, keep: bool) -> tuple[int, socket.socket | None]:
        for _ in range(len(self._free)):
            port = self._free.popleft()
            ok, sock = self._probe(port, host, keep)
            if ok:
                self._used.add(port)
                return port, sock
            self.busy_skips += 1
            self._free.append(port)  # busy elsewhere: retry it later
        raise PortPoolExhausted(f"no free RTP port in {self.low}-{self.high}")

    def acquire(self, host: str | None = None) -> int:
        """Reserve an even RTP port whose RTP and RTCP ports are bindable right now."""
        return self._take(host or self.host, keep=False)[0]

    def bind(self, host: str | None = None) -> tuple[int, socket.socket]:
        """Reserve a port and return it with its bound, non-blocking RTP socket."""
        port, sock = self._take(host or self.host, keep=True)
        assert sock is not None
        sock.setblocking(False)
        return port, sock

    def release(self, port: int) -> None:
        """Give a port back; releasing a port that is not out raises ValueError."""
        try:
            self._used.remove(port)
        except KeyError:
            raise ValueError(f"port {port} is not in use") from None
        self._free.append(port)
