"""Liveness of a WebRTC peer: notice within a few seconds that the far end stopped.

Promise: `Liveness(pc, timeout, on_lost).start()` calls `on_lost(silent_seconds)` once, between
`timeout` and `timeout + 2 * interval` seconds (interval: 0.5 s) after the last sign of life from
the peer of `pc` (a connected RTCPeerConnection), unless `stop()` came first. A peer that is
alive, even muted or sending nothing at all, is never reported.

Signs of life:
- any datagram the peer's transports received past ICE (SRTP, SRTCP, DTLS): the transports'
  `packetsReceived` (RTCTransportStats, read from the receivers' public getStats()). aiortc and
  browsers send RTP every 20 ms even when muted (silence), and RTCP reports every 0.5-1.5 s
  (plain aiortc) or every few seconds (browsers; this SDK every ~5 s: `rtcreports`) even when
  they send no audio;
- an answer to an ICE consent check (RFC 7675): once the peer has been quiet for `probe_after`
  seconds, this watcher sends consent checks itself (a STUN Binding request on the selected
  candidate pair, signed with the peer's ICE password: the request aioice sends for consent),
  one after another while the quiet lasts. A peer that sends nothing but answers is alive.

Why a watcher of its own rather than tuning aioice: aioice (0.13) checks consent every 5 s +-20 %
and gives up after 6 failures in a row (30-45 s); its interval and failure count are module
constants shared by every connection of the process (the bridge's app legs and any SDK user in
it), with no per-connection setting. RFC 7675 keeps consent for 30 s without an answer; noticing
a loss of liveness sooner is the application's policy, and that is what `timeout` sets here.
aioice's own consent checks keep running untouched.

aiortc exposes no public way to reach the selected ICE candidate pair: `_ice_pairs()` reads
aiortc's `RTCIceTransport._connection` and aioice's `Connection._nominated`, and `start()` fails
loudly if a new aiortc or aioice renamed them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Callable

from aioice import stun
from aioice.ice import CandidatePair, Connection
from aiortc import RTCPeerConnection
from aiortc.stats import RTCTransportStats

log = logging.getLogger("bridge.liveness")

INTERVAL = 0.5            # seconds between two looks at the transports
PROBE_RETRANSMISSIONS = 2  # a consent check waits 0.5 + 1 + 2 s for its answer


class Liveness:
    """Watches one peer connection; calls `on_lost` once if the peer goes quiet for `timeout` s."""

    def __init__(self, pc: RTCPeerConnection, timeout: float, on_lost: Callable[[float], object],
                 *, probe_after: float | None = None, interval: float = INTERVAL) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.pc = pc
        self.timeout = timeout
        self.probe_after = min(2.0, timeout / 4) if probe_after is None else probe_after
        self.interval = interval
        self.on_lost = on_lost
        self.probes = 0           # consent checks sent
        self.answers = 0          # consent checks answered
        self.lost_after: float | None = None   # seconds of quiet when the peer was reported lost
        self._packets = -1
        self._heard = 0.0
        self._task: asyncio.Task | None = None
        self._probe: asyncio.Task | None = None

    def start(self) -> None:
        """Begin watching (the peer connection must be connected)."""
        if self._task is not None:
            return
        self._ice_pairs()        # fail now, not in the middle of a call, if aiortc changed
        self._heard = asyncio.get_running_loop().time()
        self._task = asyncio.ensure_future(self._watch())

    async def stop(self) -> None:
        for task in (self._probe, self._task):
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @property
    def silent_for(self) -> float:
        """Seconds since the last sign of life."""
        return asyncio.get_running_loop().time() - self._heard

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            packets = await self._packets_received()
            if packets > self._packets:
                self._packets = packets
                self._heard = loop.time()
            silent = self.silent_for
            if silent >= self.timeout:
                self.lost_after = silent
                log.info("peer silent for %.1f s (consent checks: %d sent, %d answered): lost",
                            silent, self.probes, self.answers)
                if self._probe is not None:
                    self._probe.cancel()
                self.on_lost(silent)
                return
            if silent >= self.probe_after and (self._probe is None or self._probe.done()):
                self._probe = asyncio.ensure_future(self._check_consent())

    async def _packets_received(self) -> int:
        """Datagrams received by the connection's transports (each transport counted once)."""
        counts: dict[str, int] = {}
        for receiver in self.pc.getReceivers():
            if receiver.transport is None or receiver.transport.state != "connected":
                continue
            for stats in (await receiver.getStats()).values():
                if isinstance(stats, RTCTransportStats):
                    counts[stats.id] = stats.packetsReceived
        return sum(counts.values())

    async def _check_consent(self) -> None:
        """One consent check on each selected pair; an answer is a sign of life."""
        for connection, pair in self._ice_pairs():
            if connection.remote_password is None:
                continue
            request = connection.build_request(pair, nominate=False)
            self.probes += 1
            try:
                await pair.protocol.request(request, pair.remote_addr,
                                            integrity_key=connection.remote_password.encode("utf8"),
                                            retransmissions=PROBE_RETRANSMISSIONS)
            except (stun.TransactionError, ConnectionError, OSError):
                continue
            self.answers += 1
            self._heard = asyncio.get_running_loop().time()

    def _ice_pairs(self) -> list[tuple[Connection, CandidatePair]]:
        """The selected candidate pair of each ICE transport of the connection."""
        pairs = []
        seen: set[int] = set()
        for receiver in self.pc.getReceivers():
            dtls = receiver.transport
            if dtls is None:
                continue
            connection = getattr(dtls.transport, "_connection", None)
            nominated = getattr(connection, "_nominated", None)
            if not isinstance(connection, Connection) or not isinstance(nominated, dict):
                raise RuntimeError("this aiortc/aioice has no ICE connection with selected pairs to check")
            if id(connection) in seen:
                continue
            seen.add(id(connection))
            pairs += [(connection, pair) for pair in nominated.values()]
        return pairs
