"""The far end: this process's own SIP UserAgent, registered at the PBX as the extension the
calls reach, answering them and sending each its program."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import re
import time
from typing import Callable

import numpy as np

from ..clock import FrameClock
from ..config import Config, SipConfig
from ..resample import resampler
from ..sip import CallFailed, IncomingCall, UserAgent
from .program import LoadTestError, PTIME, SIP_RATE
from .record import CallRecord

log = logging.getLogger("bridge.loadtest")


class FarEnd:
    """The calls' far end: one UserAgent answering every call of the run, on one 20 ms clock."""

    def __init__(self, args: argparse.Namespace, cfg: Config, records: dict[int, CallRecord]) -> None:
        self.args = args
        self.cfg = cfg
        self.records = records
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ua: UserAgent | None = None
        self._tasks: set[asyncio.Task] = set()
        self._calls: dict[int, tuple[CallRecord, IncomingCall]] = {}
        self._up: dict[int, Callable[[np.ndarray], np.ndarray]] = {}   # G.722 far ends: 8 -> 16 kHz
        self._clock: asyncio.Task | None = None

    def config(self) -> SipConfig:
        """Its SIP configuration: the bridge's PBX, extension --far-end, RTP ports --far-end-rtp-ports."""
        sip = self.cfg.sip
        assert sip is not None
        lo, _, hi = self.args.far_end_rtp_ports.partition("-")
        try:
            low, high = int(lo), int(hi)
        except ValueError:
            raise LoadTestError("--far-end-rtp-ports must be LOW-HIGH") from None
        return SipConfig(registrar_host=sip.registrar_host, registrar_port=sip.registrar_port, domain=sip.domain,
                         username=self.args.far_end, auth_username=self.args.far_end,
                         password=self.args.far_end_password, bind_host=sip.contact_host, bind_port=0,
                         contact_host=sip.contact_host, register=True, register_expires=300, keepalive=30.0,
                         rtp_host=sip.contact_host, rtp_low=low, rtp_high=high, codecs=sip.codecs,
                         ring_timeout=30.0, transport=sip.transport, tls=dataclasses.replace(sip.tls, cert=None, key=None),
                         srtp="optional" if sip.srtp != "off" else "off")

    async def start(self) -> None:
        """Its UserAgent started and registered at the PBX (LoadTestError if not within 10 s)."""
        self.loop = asyncio.get_running_loop()
        ua = UserAgent(self.config(), self._on_incoming)
        await ua.start()
        deadline = time.monotonic() + 10
        while ua.registration.state != "registered":
            if time.monotonic() > deadline:
                await ua.stop()
                raise LoadTestError(f"the far end {self.args.far_end} did not register at "
                                    f"{ua.proxy[0]}:{ua.proxy[1]}: {ua.registration.state} "
                                    f"{ua.registration.detail} (is `bridge demo` running? right password?)")
            await asyncio.sleep(0.05)
        self.ua = ua

    async def stop(self) -> None:
        """Unregistered; its sending stopped."""
        assert self.ua is not None
        await self.ua.stop()
        for t in list(self._tasks):
            t.cancel()

    def _index_of(self, call: IncomingCall) -> int | None:
        pai = call.invite.first("P-Asserted-Identity") or ""
        for text in (call.caller.display_name or "", pai, call.caller.number or ""):
            m = re.search(r"load-(\d+)\b", text)
            if m and int(m.group(1)) in self.records:
                return int(m.group(1))
        return None

    async def _on_incoming(self, call: IncomingCall) -> None:
        assert self.loop is not None
        now = self.loop.time()
        index = self._index_of(call)
        rec = self.records.get(index) if index is not None else None
        if rec is None or rec.sip is not None:
            log.warning("far end: a call not from this load test (%s); busy", call.caller)
            await call.reject(486)
            return
        rec.t_invite = now
        rec.sip = call
        loop = self.loop
        packets = rec.far_packets
        call.media.on_audio = lambda pt, seq, ts, ssrc, payload: packets.append((loop.time(), seq, ts, payload))
        try:
            await call.answer()
        except CallFailed as exc:
            rec.failure = rec.failure or f"far end: answer not acknowledged ({exc})"
            return
        rec.t_far_answered = self.loop.time()
        rec.codec = call.codec
        rec.far_answered.set()
        self._calls[rec.index] = (rec, call)
        if self._clock is None:
            self._clock = asyncio.ensure_future(self._media())
            self._tasks.add(self._clock)

    async def _media(self) -> None:
        """The far end's sending, one 20 ms clock for all its calls (what it receives is kept
        by packet, as it arrives)."""
        async for tick in FrameClock(PTIME):
            for index, (rec, call) in list(self._calls.items()):
                media = call.media
                if call.ended.done() or media.closed:
                    st = media.stats
                    rec.far_stats = {"packets_received": st.packets_received, "lost": st.lost,
                                     "jitter_ms": round(st.jitter_ms, 3), "packets_sent": st.packets_sent}
                    del self._calls[index]
                    continue
                frame = rec.far_sender.next(tick.now, tick.skipped, tick.lateness)
                if media.sample_rate != SIP_RATE:          # G.722: the 8 kHz program, upsampled
                    if index not in self._up:
                        self._up[index] = resampler(SIP_RATE, media.sample_rate)
                    frame = self._up[index](frame)
                media.write_frame(frame)
