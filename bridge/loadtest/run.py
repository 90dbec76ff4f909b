"""The run: N calls placed on a ramp, the far end answering them, samples taken; analysed by
`analysis`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import gc
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import aiohttp
import av
import numpy as np

from .. import g711, ice, token
from ..audio import RATE, frame_to_mono
from ..clock import FrameClock
from ..cpuhog import CpuHog
from ..janusgw import JanusCall, JanusError, JanusProbe, JanusServer
from ..resample import resampler
from ..config import Config, SipConfig
from ..sdk import CallDelegate, MakeCallParams, StartFailError
from ..routing import Denied
from ..sip import CallFailed, IncomingCall, UserAgent
from .analysis import Analysis, _codec_alone, _pesq
from .probe import BridgeProbe, metrics_delta, proc_sample, procs_sample
from .program import (
    APP_TONE_HZ, FAR_TONE_HZ, LEAD_S, LoadCall, LoadTestError, NO_SPEECH_S, PTIME, ProgramTrack,
    SIP_RATE, Sender, build_program, speech,
)

log = logging.getLogger("bridge.loadtest")

# --- one call ---------------------------------------------------------------------------------

@dataclass
class CallRecord:
    index: int
    user: str
    app_sender: Sender
    far_sender: Sender
    t_start: float = 0.0                  # makeCall issued
    t_made: float | None = None           # makeCall returned
    t_wait_connected: float | None = None
    t_connected: float | None = None
    t_invite: float | None = None         # INVITE at the far end
    t_far_answered: float | None = None   # far end's 200 OK acknowledged
    t_end: float | None = None
    state: str = "waiting"                # waiting, calling, connected, done, failed
    failure: str | None = None
    disconnect: str | None = None
    codec: str = ""                       # the SIP leg's (at the far end)
    app_codec: str = ""                   # the app leg's
    app_rate: int = RATE                  # sample rate of the app leg's decoded frames (Opus 48k, G.711 8k)
    # received at the far end (app -> SIP): per RTP packet (arrival, seq, ts, payload)
    far_packets: list = field(default_factory=list)
    far_stats: dict = field(default_factory=dict)
    # received at the app side (SIP -> app): per RTP packet (arrival, seq, ts) and decoded frames
    app_packets: list = field(default_factory=list)
    app_frames: list = field(default_factory=list)     # (pts, samples48)
    app_raw: list = field(default_factory=list)        # G.711: (arrival, seq, ts, payload), not decoded
    app_stats: dict = field(default_factory=dict)
    hooked: bool = False
    sip: IncomingCall | None = None
    far_answered: asyncio.Event = field(default_factory=asyncio.Event)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def t0(self) -> float | None:
        return self.app_sender.t0


class _Delegate(CallDelegate):
    def __init__(self, rec: CallRecord, loop: asyncio.AbstractEventLoop) -> None:
        self.rec, self.loop = rec, loop

    def evt_wait_connected(self) -> None:
        if self.rec.t_wait_connected is None:
            self.rec.t_wait_connected = self.loop.time()

    def evt_connected(self) -> None:
        self.rec.t_connected = self.loop.time()
        self.rec.connected.set()

    def evt_disconnected(self, param) -> None:
        self.rec.disconnect = f"{param.reason.name} ({int(param.reason)}) by {param.source.value}"
        self.rec.ended.set()


# --- the run ----------------------------------------------------------------------------------

class LoadTest(Analysis):
    def __init__(self, args: argparse.Namespace, cfg: Config) -> None:
        self.args = args
        self.cfg = cfg
        self.app_service = args.app_service
        self.desk_service = args.desk_service or (cfg.bridge.desk_service if cfg.bridge else "")
        svc = cfg.platform.services.get(self.app_service)
        if svc is None:
            raise LoadTestError(f"service {self.app_service!r} is not in {cfg.path}")
        self.key = token.ServiceKey(svc.id, svc.api_key, svc.api_secret)
        self.callees = [self.callee(i) for i in range(args.calls)]
        desk = cfg.platform.services.get(self.desk_service)
        if len(set(self.callees)) < len(self.callees) and (desk is None or desk.one_call_per_user):
            raise LoadTestError(
                f"--callee {args.callee!r} gives every call the same desk user {self.callees[0]!r}, and "
                f"service {self.desk_service!r} has one_call_per_user (BUSY on a second call): set "
                "one_call_per_user: false for it, as config.yaml does, or use {i} in --callee with a "
                "route that sends those users to extension {ext}")
        per_route: dict[str, int] = {}
        # calls at once, at most: a call lasts `duration` (+ a few seconds to set up and end)
        peak = min(args.calls, math.ceil(args.ramp * (args.duration + 3)))
        for i, callee in enumerate(self.callees):
            decision = cfg.router.route_to_sip(self.app_service, f"load-{i}", self.desk_service, callee)
            if isinstance(decision, Denied):
                raise LoadTestError(f"{callee}@{self.desk_service} from load-{i}@{self.app_service}: {decision} "
                                    f"in {cfg.path}")
            if decision.targets[0] not in (args.far_end, ) and not decision.targets[0].startswith(
                    f"sip:{args.far_end}@"):
                raise LoadTestError(f"{callee}@{self.desk_service} is routed to {decision.targets[0]}, "
                                    f"not to the far end {args.far_end}")
            if i >= peak:
                continue
            name, limit = decision.route.name, decision.route.max_calls
            per_route[name] = per_route.get(name, 0) + 1
            if limit is not None and per_route[name] > limit:
                raise LoadTestError(f"route {name!r} takes at most {limit} calls at once (max_calls in "
                                    f"{cfg.path}); this run has up to {peak}: raise it for the run")
        if cfg.bridge is not None and peak > cfg.bridge.max_calls:
            raise LoadTestError(f"bridge.max_calls is {cfg.bridge.max_calls} in {cfg.path}; this run has up to "
                                f"{peak} calls at once: raise it for the run")
        self.records: dict[int, CallRecord] = {}
        self.samples: list[dict] = []
        self.events: list[tuple[float, str]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.t_zero = 0.0
        self.ua: UserAgent | None = None
        self._tasks: set[asyncio.Task] = set()
        self._far_calls: dict[int, tuple[CallRecord, IncomingCall]] = {}
        self._far_up: dict[int, Callable[[np.ndarray], np.ndarray]] = {}   # G.722 far ends: 8 -> 16 kHz
        self._far_clock: asyncio.Task | None = None
        self._lag_max = 0.0
        self._stop_sampling = asyncio.Event()
        self.pesq_ceiling: dict = {}
        self.hog: CpuHog | None = None
        self.janus: JanusServer | None = None
        self.hog_report: dict | None = None

    def callee(self, i: int) -> str:
        try:
            return self.args.callee.format(ext=self.args.far_end, i=i)
        except (KeyError, IndexError, ValueError) as exc:
            raise LoadTestError(f"--callee {self.args.callee!r}: {exc!r} (use {{ext}} and {{i}})") from None

    # --- set up ----------------------------------------------------------------------------
    def far_end_config(self) -> SipConfig:
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

    async def _register_far_end(self) -> UserAgent:
        ua = UserAgent(self.far_end_config(), self._on_incoming)
        await ua.start()
        deadline = time.monotonic() + 10
        while ua.registration.state != "registered":
            if time.monotonic() > deadline:
                await ua.stop()
                raise LoadTestError(f"the far end {self.args.far_end} did not register at "
                                    f"{ua.proxy[0]}:{ua.proxy[1]}: {ua.registration.state} "
                                    f"{ua.registration.detail} (is `bridge demo` running? right password?)")
            await asyncio.sleep(0.05)
        return ua

    async def run(self) -> dict:
        if self.args.gateway != "janus":
            return await self._run()
        try:
            port, rtp, sip_rtp = self.args.janus_ports.split(",")
            self.janus = JanusServer(int(port), rtp, sip_rtp)
            ice.use_host_addresses(None)     # Janus's ICE does not pair on 127.0.0.1: the host's others
            await self.janus.start()
        except ValueError:
            raise LoadTestError("--janus-ports must be HTTP,LO-HI,LO-HI") from None
        except JanusError as exc:
            raise LoadTestError(str(exc)) from None
        try:
            return await self._run()
        finally:
            self.janus.stop()

    async def _run(self) -> dict:
        self.loop = loop = asyncio.get_running_loop()
        args = self.args
        if args.pesq_calls > 0:
            work = Path(tempfile.mkdtemp(prefix="bridge-loadtest-"))
            try:
                app_speech, far_speech = speech("app", work), speech("far", work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        else:                                           # no PESQ: silence where the speech would be
            app_speech = far_speech = np.zeros(int(NO_SPEECH_S * RATE), np.int16)
        self.app_program = build_program(app_speech, RATE, APP_TONE_HZ, args.duration)
        self.app_program8 = build_program(app_speech, SIP_RATE, APP_TONE_HZ, args.duration)
        self.far_program = build_program(far_speech, SIP_RATE, FAR_TONE_HZ, args.duration)
        started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        async with (BridgeProbe(self.cfg) if self.janus is None else JanusProbe(self.janus)) as probe:
            try:
                status, health = await probe.health()
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                raise LoadTestError(f"no bridge at {probe.base}/healthz ({exc}); start it with "
                                    f"`bridge demo -c {self.cfg.path}`") from None
            if status != 200 or "pid" not in health:
                raise LoadTestError(f"the bridge is not healthy ({status}): {health}")
            probe.pid = int(health["pid"])
            probe.pids = [int(p) for p in health.get("pids", [probe.pid])]
            before = await probe.metrics()
            self.ua = await self._register_far_end()
            self.t_zero = loop.time()
            sampler = asyncio.ensure_future(self._sample(probe))
            try:
                await asyncio.sleep(2.0)                  # baseline RSS/CPU before any call
                await probe.redis_idle()
                if args.cpu_hog:
                    self.hog = CpuHog(args.cpu_hog).start()
                first_call = loop.time()
                calls = [asyncio.ensure_future(self._call(i, first_call + i / args.ramp))
                         for i in range(args.calls)]
                # Python's cyclic GC walks every packet this process keeps for the analysis; its
                # pauses (~100 ms at 40 calls, every few seconds) stalled all 2N endpoints at once.
                gc.disable()
                try:
                    await asyncio.gather(*calls, return_exceptions=True)
                finally:
                    gc.enable()
                    if self.hog is not None:
                        self.hog_report = self.hog.stop()
                # the bridge adds a call's frame counters when the call is over: wait for that
                deadline = loop.time() + 15
                while loop.time() < deadline:
                    with contextlib.suppress(Exception):
                        _, h = await probe.health()
                        if not h.get("bridged_calls"):
                            break
                    await asyncio.sleep(0.25)
                await asyncio.sleep(2.0)                  # RSS after the calls
            finally:
                if self.hog is not None and self.hog_report is None:
                    self.hog_report = self.hog.stop()
                self._stop_sampling.set()
                await sampler
                await self.ua.stop()
                for t in list(self._tasks):
                    t.cancel()
            after = await probe.metrics()
            redis_cost = await probe.redis_delta()
        if not args.quiet:
            print(file=sys.stderr, flush=True)
        print("analysing (latency, frames, PESQ) ...", file=sys.stderr, flush=True)
        analysis = await asyncio.get_running_loop().run_in_executor(None, self._analyse)
        codec = next((r.codec for r in self.records.values() if r.codec), g711.PCMU)
        if args.pesq_calls > 0:   # the same speech through the SIP leg's codec alone: the best the path can score
            self.pesq_ceiling = {
                "app_to_sip": _pesq(self.app_program.speech8k, _codec_alone(codec, self.app_program))["mos"],
                "sip_to_app": _pesq(self.far_program.speech8k, _codec_alone(codec, self.far_program))["mos"]}
        report = self._report(started_at, probe.pid, health, metrics_delta(before, after), analysis)
        if redis_cost is not None:
            calls = max(1, len(self.records))
            own = redis_cost.get("calls_only", redis_cost)          # the heartbeats' share taken out
            report["cluster"] = {**redis_cost, "redis_commands_per_call": round(own["calls"] / calls, 1),
                                 "redis_usec_per_call": round(own["usec"] / calls, 1),
                                 "redis_cpu_ms_per_call": round(1000 * own["cpu_s"] / calls, 2)}
        return report

    # --- the far end -------------------------------------------------------------------------
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
        self._far_calls[rec.index] = (rec, call)
        if self._far_clock is None:
            self._far_clock = asyncio.ensure_future(self._far_media())
            self._tasks.add(self._far_clock)

    async def _far_media(self) -> None:
        """The far end's sending, one 20 ms clock for all its calls (what it receives is kept
        by packet, as it arrives)."""
        async for tick in FrameClock(PTIME):
            for index, (rec, call) in list(self._far_calls.items()):
                media = call.media
                if call.ended.done() or media.closed:
                    st = media.stats
                    rec.far_stats = {"packets_received": st.packets_received, "lost": st.lost,
                                     "jitter_ms": round(st.jitter_ms, 3), "packets_sent": st.packets_sent}
                    del self._far_calls[index]
                    continue
                frame = rec.far_sender.next(tick.now, tick.skipped, tick.lateness)
                if media.sample_rate != SIP_RATE:          # G.722: the 8 kHz program, upsampled
                    if index not in self._far_up:
                        self._far_up[index] = resampler(SIP_RATE, media.sample_rate)
                    frame = self._far_up[index](frame)
                media.write_frame(frame)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the app side ------------------------------------------------------------------------
    async def _call(self, i: int, at: float) -> None:
        loop = self.loop
        assert loop is not None
        rec = CallRecord(i, f"load-{i}", Sender(self.app_program), Sender(self.far_program))
        self.records[i] = rec
        await asyncio.sleep(max(0.0, at - loop.time()))
        args = self.args

        def on_frame(frame: av.AudioFrame) -> None:
            rec.app_rate = frame.sample_rate
            rec.app_frames.append((frame.pts, frame_to_mono(frame)))

        def on_packet(packet) -> None:
            rec.app_packets.append((loop.time(), packet.sequence_number, packet.timestamp))

        call: LoadCall | JanusCall
        if self.janus is not None:
            sip = self.cfg.sip
            assert sip is not None
            call = JanusCall(self.janus.url, sip.domain or sip.registrar_host)
        else:
            call = LoadCall(self.cfg.platform.public_url, on_frame)
        rec.t_start = loop.time()
        rec.state = "calling"
        params = MakeCallParams(
            my_id=rec.user, my_service_id=self.app_service, peer_id=self.callees[i],
            peer_service_id=self.desk_service, access_token=token.issue(self.key, rec.user),
            delegate=_Delegate(rec, loop),
            audio=ProgramTrack(rec.app_sender, self.app_program8, lambda: call.codec))
        try:
            if isinstance(call, JanusCall):
                sip = self.cfg.sip
                await call.make_call(params, target=f"sip:{args.far_end}@{sip.registrar_host}:{sip.registrar_port}",
                                     setup_timeout=args.setup_timeout)
            else:
                await call.make_call(params)
        except StartFailError as exc:
            return self._fail(rec, f"makeCall refused: {exc}")
        except (JanusError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
            with contextlib.suppress(Exception):
                await call.end_call()
            return self._fail(rec, f"janus: {exc or type(exc).__name__}")
        rec.t_made = loop.time()
        rec.hooked = call.hook_receiver(on_packet)
        try:
            await self._until(rec.connected, rec.ended, args.setup_timeout)
            if not rec.connected.is_set():
                return self._fail(rec, f"not connected: {rec.disconnect}" if rec.ended.is_set()
                                  else f"not connected within {args.setup_timeout:g} s")
            await self._until(rec.far_answered, rec.ended, 5.0)
            if not rec.far_answered.is_set():
                return self._fail(rec, "connected, but the far end never answered a call for it")
            rec.state = "connected"
            rec.app_codec = call.codec
            if call.codec in g711.CODECS:   # keep the packets; decode them after the run
                call.tap_peer_packets(lambda p: rec.app_raw.append(
                    (loop.time(), p.sequence_number, p.timestamp, p.payload)))
            t0 = max(rec.t_connected or 0, rec.t_far_answered or 0) + LEAD_S
            rec.app_sender.t0 = rec.far_sender.t0 = t0
            end_at = t0 + args.duration
            await self._until(rec.ended, None, end_at - loop.time())
            if rec.ended.is_set():
                return self._fail(rec, f"ended after {loop.time() - t0:.1f} s of {args.duration:g}: "
                                       f"{rec.disconnect}")
            rec.app_stats = await call.inbound_stats()
            await call.end_call()
            rec.t_end = loop.time()
            if rec.sip is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(rec.sip.ended), 5)
                if not rec.sip.ended.done():
                    return self._fail(rec, "the far end got no BYE within 5 s of endCall")
            rec.state = "done"
        except Exception as exc:   # noqa: BLE001 - a call's trouble is a result, not a crash
            log.exception("call %d", i)
            self._fail(rec, f"{type(exc).__name__}: {exc}")
        finally:
            if call.state not in ("idle", "disconnected"):
                with contextlib.suppress(Exception):
                    await call.end_call()
            if rec.t_end is None:
                rec.t_end = loop.time()

    @staticmethod
    async def _until(event: asyncio.Event, other: asyncio.Event | None, timeout: float) -> None:
        waits = [asyncio.ensure_future(event.wait())]
        if other is not None:
            waits.append(asyncio.ensure_future(other.wait()))
        try:
            await asyncio.wait(waits, timeout=max(timeout, 0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _fail(self, rec: CallRecord, reason: str) -> None:
        rec.state = "failed"
        rec.failure = rec.failure or reason
        log.info("call %d failed: %s", rec.index, rec.failure)

    # --- sampling and progress ---------------------------------------------------------------
    async def _sample(self, probe: BridgeProbe) -> None:
        loop = self.loop
        assert loop is not None and probe.pid is not None
        lag = asyncio.ensure_future(self._lag_monitor())
        tty = sys.stderr.isatty()
        pids = probe.pids or [probe.pid]
        prev = procs_sample(pids)
        me_prev = proc_sample(os.getpid())
        t_prev = loop.time()
        hog_prev: float | None = None
        last_line = 0.0
        while not self._stop_sampling.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop_sampling.wait(), 1.0)
            now = loop.time()
            cur, me = procs_sample(pids), proc_sample(os.getpid())
            dt = now - t_prev
            if cur is None or prev is None or me is None or me_prev is None or dt <= 0:
                break
            recs = list(self.records.values())
            sample = {
                "t": round(now - self.t_zero, 3),
                "active": sum(r.state == "connected" for r in recs),
                "calling": sum(r.state == "calling" for r in recs),
                "bridge_cpu_pct": round(100 * (cur[0] - prev[0]) / dt, 1),
                "bridge_rss_mb": round(cur[1], 1),
                "bridge_threads": cur[2],
                "loadtest_cpu_pct": round(100 * (me[0] - me_prev[0]) / dt, 1),
                "loadtest_loop_lag_ms": round(1000 * self._lag_max, 1),
            }
            self._lag_max = 0.0
            hog = self.hog.cpu() if self.hog is not None and self.hog_report is None else None
            if hog is not None and hog_prev is not None:
                sample["hog_cpu_pct"] = round(100 * (hog - hog_prev) / dt, 1)
            hog_prev = hog
            self.samples.append(sample)
            prev, me_prev, t_prev = cur, me, now
            if not self.args.quiet and (tty or now - last_line >= 5):
                last_line = now
                done = sum(r.state == "done" for r in recs)
                failed = sum(r.state == "failed" for r in recs)
                line = (f"{sample['t']:6.1f}s calls {len(recs)}/{self.args.calls} started, "
                        f"{sample['active']} talking, {sample['calling']} setting up, {done} done, "
                        f"{failed} failed | bridge CPU {sample['bridge_cpu_pct']:5.1f}% "
                        f"RSS {sample['bridge_rss_mb']:6.1f} MB | loadtest CPU "
                        f"{sample['loadtest_cpu_pct']:5.1f}% lag {sample['loadtest_loop_lag_ms']:5.1f} ms")
                print(("\r" + line + "  ") if tty else line, end="" if tty else "\n",
                      file=sys.stderr, flush=True)
        lag.cancel()

    async def _lag_monitor(self) -> None:
        """How late this process's event loop runs a 10 ms timer (the load test's own health)."""
        async for tick in FrameClock(0.010, max_catchup=1_000_000):
            self._lag_max = max(self._lag_max, tick.lateness)
