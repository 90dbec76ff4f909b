"""The run: N calls placed on a ramp from the app side, answered by the `farend`, sampled by the
`sampler`; analysed by `analysis` and `summary`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import logging
import math
import shutil
import sys
import tempfile
from pathlib import Path

import aiohttp
import av
import numpy as np

from .. import g711, ice, token
from ..audio import RATE, frame_to_mono
from ..cpuhog import CpuHog
from ..janusgw import JanusCall, JanusError, JanusProbe, JanusServer
from ..config import Config
from ..sdk import MakeCallParams, StartFailError
from ..routing import Denied
from .analysis import Analysis
from .farend import FarEnd
from .measures import _codec_alone, _pesq
from .probe import BridgeProbe, metrics_delta
from .program import (
    APP_TONE_HZ, FAR_TONE_HZ, LEAD_S, LoadCall, LoadTestError, NO_SPEECH_S, ProgramTrack,
    SIP_RATE, Sender, build_program, speech,
)
from .record import CallRecord, _Delegate
from .sampler import Sampler
from .summary import Summary

log = logging.getLogger("bridge.loadtest")

# --- the run ----------------------------------------------------------------------------------

class LoadTest(Analysis, Summary):
    """The load test: its calls placed from the app side, the far end and the samples; its
    analysis (`Analysis`) and report (`Summary`)."""

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
        self.far_end = FarEnd(args, cfg, self.records)
        self.sampler = Sampler(self.samples, self.records, args.calls, args.quiet, self._hog_cpu)
        self.pesq_ceiling: dict = {}
        self.hog: CpuHog | None = None
        self.janus: JanusServer | None = None
        self.hog_report: dict | None = None

    def callee(self, i: int) -> str:
        try:
            return self.args.callee.format(ext=self.args.far_end, i=i)
        except (KeyError, IndexError, ValueError) as exc:
            raise LoadTestError(f"--callee {self.args.callee!r}: {exc!r} (use {{ext}} and {{i}})") from None

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
            await self.far_end.start()
            self.t_zero = loop.time()
            sampler = asyncio.ensure_future(self.sampler.run(probe, self.t_zero))
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
                self.sampler.stop()
                await sampler
                await self.far_end.stop()
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

    def _hog_cpu(self) -> float | None:
        """The CPU hog's CPU seconds so far, while it runs (for the samples)."""
        return self.hog.cpu() if self.hog is not None and self.hog_report is None else None
