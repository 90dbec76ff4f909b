"""`bridge loadtest`: N concurrent app -> desk phone calls through a running bridge, measured.

    python -m bridge.loadtest -c config.yaml --calls 10 --duration 30 --ramp 2 \\
        --json report.json --chart report.png

Runs against a stack started the README's way (`bridge demo -c config.yaml`). Both ends of every
call live in this process, on one clock (the event loop's monotonic clock):

- the app side: SDK callers `load-<i>@<app service>` call `desk-<ext>@<desk service>`;
- the far end: this process registers its own SIP UserAgent at the PBX as extension `ext`
  (default 2002 / 2002-demo, a user of `bridge demo`'s Kamailio) and answers every call.

Each side plays a program on its own 20 ms clock, starting 0.5 s after the call is connected at
both ends: speech made with espeak-ng (different sentences each way), 1 s of silence, then tone
bursts (app side 1 kHz, far end 440 Hz, 100 ms every 500 ms) until the call's duration is over.

Measured per call and summarised:
- setup: makeCall -> evtWaitConnected, -> INVITE at the far end, -> evtConnected; the bridge's own
  `bridge_setup_seconds` histograms (notification -> INVITE, INVITE -> answer, answer -> connected),
  scraped from /metrics before and after the run;
- added one-way latency per direction: burst send time (the sender's 20 ms tick) to the onset's
  arrival at the other side's socket (see MEASURED_PATH for the buffers inside);
- frames per direction: packets expected/received/lost, frames later than 40 ms (transit above
  the call's best packet), RFC 3550 interarrival jitter; the far end's RTP stats, the app side's
  aiortc stats and the bridge's `bridge_frames_total` counters;
- PESQ (ITU-T P.862 narrow band, `pesq` package) per direction on a subset of calls;
- the bridge process's CPU % and RSS every second from /proc/<pid> (pid from /healthz), and this
  process's own CPU and event-loop lag (when the load test itself saturates, say so);
- calls that failed, with their reasons.

Also in the report: every call's longest stall (its worst packet beyond its best, per direction)
and the bridge's garbage collections per generation (`bridge_gc_pause_seconds`). `--cpu-hog F`
runs a busy process beside the calls (`bridge.cpuhog`: F of one core, its measured share
reported); `--gateway janus` sends the same calls through a Janus server's SIP plugin that this
command starts (`bridge.janusgw`), measured the same way, for a side-by-side comparison.

Output: a live progress line, a table, a JSON report (--json) and a PNG chart (--chart).

What it needs beyond bridge itself: PESQ (the default, `--pesq-calls 10`) needs espeak-ng
(Debian) for the speech and the `pesq` package, and `--chart` needs matplotlib: both come with
`pip install 'bridge[loadtest]'`. With `--pesq-calls 0` and no `--chart` it needs neither (the
programs then send silence where the speech would be) and imports neither.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import fractions
import gc
import json
import logging
import math
import os
import platform as _platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import aiohttp
import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from . import __version__, codecs, g711, ice, rtcprobe, token
from .audio import FRAME, RATE, frame_to_mono, make_frame, read_wav
from .clock import FrameClock
from .cpuhog import CpuHog
from .janusgw import JanusCall, JanusError, JanusProbe, JanusServer
from .resample import resampler
from .config import Config, SipConfig
from .sdk import Call, CallDelegate, MakeCallParams, StartFailError
from .routing import Denied
from .sip import CallFailed, IncomingCall, UserAgent

log = logging.getLogger("bridge.loadtest")

PTIME = 0.020
SIP_RATE = 8000
SIP_FRAME = 160
APP_TONE_HZ = 1000.0          # app -> SIP bursts
FAR_TONE_HZ = 440.0           # SIP -> app bursts
TONE_DBFS = -16.0
SPEECH_RMS_DBFS = -20.0
LEAD_S = 0.5                  # program starts this long after both ends are connected
SPEECH_MAX_S = 6.0
NO_SPEECH_S = 2.5             # --pesq-calls 0: this much silence instead of speech
GAP_FRAMES = 50               # 1 s of silence between speech and bursts
BURST_FRAMES = 5              # 100 ms
BURST_PERIOD_FRAMES = 25      # every 500 ms
TAIL_FRAMES = 25              # the last 500 ms stay silent
LATE_MS = 40.0
MIN_DURATION = 8.0

SPEECH_TEXT = {
    "app": "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background.",
    "far": "Rice is often served in round bowls. The juice of lemons makes fine punch.",
}
# voices whose speech keeps PESQ NB high through G.711 alone (~4.35; espeak's default male
# voices only reach ~4.0 through G.711, which would hide what the bridge adds)
SPEECH_VOICE = {"app": "en-us+f3", "far": "en-us+f2"}

MEASURED_PATH = {
    "app_to_sip": (
        "from the load test's app-side 20 ms tick that hands a burst's first frame to aiortc (G.711: "
        "an encoded packet; Opus: a 48 kHz frame, encoded in aiortc's thread pool), its SRTP; loopback "
        "UDP; in the bridge, relay (G.711 app leg, bridge.media: relay): SRTP, the packet passed on "
        "(law converted by a table if needed); transcode (Opus, or bridge.media: transcode): SRTP, "
        "the receive jitter buffer (webrtc.receive_prefetch), the decode thread, 48->8 kHz FIR for "
        "Opus, the AppToSip FIFO drained on the bridge's 20 ms clock, G.711 encode; loopback UDP; to "
        "the packet's arrival at the far end's RTP socket, plus the onset's offset inside it"),
    "sip_to_app": (
        "from the far end's 20 ms tick that sends a burst's first G.711 packet; loopback UDP; in the "
        "bridge, relay: the packet passed on to aiortc's sender (SRTP); transcode: the RTP jitter "
        "buffer (sip.jitter_target), the SipToApp track on the bridge's 20 ms clock, 8->48 kHz FIR "
        "and Opus encode for Opus, SRTP; loopback UDP; to the packet's arrival in the load test's "
        "aiortc receiver after SRTP, plus the onset's offset inside the packet (Opus's 6.5 ms "
        "look-ahead shows here)"),
    "not_inside": (
        "both endpoints' playout jitter buffers are outside the measured path: they belong to the "
        "endpoints, not to the bridge. PESQ is scored on the received packets played out by RTP "
        "timestamp (a lost packet is silence): content and loss; lateness is the late-frames figure"),
}


# --- CLI ---------------------------------------------------------------------------------------

def _ramp(value: str) -> float:
    r = float(value)
    if not r > 0:
        raise argparse.ArgumentTypeError("--ramp must be > 0 calls/s")
    return r


def _fraction(value: str) -> float:
    f = float(value)
    if not 0 < f <= 1:
        raise argparse.ArgumentTypeError("--cpu-hog must be in (0, 1]: the fraction of one core")
    return f


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `bridge loadtest` options (the caller adds -c/--config)."""
    parser.add_argument("--calls", type=int, default=1, metavar="N", help="concurrent calls (default 1)")
    parser.add_argument("--duration", type=float, default=30.0, metavar="S",
                        help=f"seconds each call stays connected (default 30, at least {MIN_DURATION:.0f})")
    parser.add_argument("--ramp", type=_ramp, default=2.0, metavar="R",
                        help="calls started per second (default 2)")
    parser.add_argument("--far-end", default="2002", metavar="EXT",
                        help="extension the load test registers at the PBX and answers as (default 2002)")
    parser.add_argument("--far-end-password", default="2002-demo", metavar="PW",
                        help="its digest password (default 2002-demo, bridge demo's)")
    parser.add_argument("--far-end-rtp-ports", default="41000-41999", metavar="LO-HI",
                        help="RTP ports of the far end (default 41000-41999)")
    parser.add_argument("--callee", default="desk-{ext}", metavar="TEMPLATE",
                        help="desk user each call dials, with {ext} and {i} (call number); default "
                             "desk-{ext} (the desk service needs one_call_per_user: false, as in "
                             "config.yaml)")
    parser.add_argument("--app-service", default="demo-app", metavar="SERVICE",
                        help="platform service of the app callers (default demo-app)")
    parser.add_argument("--desk-service", default=None, metavar="SERVICE",
                        help="service of the desk users (default: bridge.desk_service of the config)")
    parser.add_argument("--pesq-calls", type=int, default=10, metavar="K",
                        help="run PESQ on this many calls, evenly spread (default 10; 0: none)")
    parser.add_argument("--setup-timeout", type=float, default=30.0, metavar="S",
                        help="a call not connected after this long failed (default 30)")
    parser.add_argument("--cpu-hog", type=_fraction, default=None, metavar="F",
                        help="while the calls run, a busy process takes fraction F of one core (e.g. 0.7): "
                             "repeatable contention; its measured share is in the report")
    parser.add_argument("--gateway", choices=("bridge", "janus"), default="bridge",
                        help="what the calls go through: the running bridge (default), or a Janus server "
                             "(Debian janus, SIP plugin) this command starts, with the same callers, far end "
                             "and PBX, its process measured the same way (bridge/janusgw.py)")
    parser.add_argument("--janus-ports", default="38188,43000-43999,44000-44999", metavar="HTTP,RTP,SIPRTP",
                        help="--gateway janus: its HTTP port, WebRTC RTP ports, SIP-side RTP ports "
                             "(default 38188,43000-43999,44000-44999)")
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--chart", dest="chart_path", metavar="FILE.png", help="write the PNG chart here")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


class LoadTestError(Exception):
    """The stack or a tool is not there: printed as one line, exit status 2."""


async def main(args: argparse.Namespace, cfg: Config) -> int:
    """Run the load test; 0: every call completed, 1: some failed, 2: could not run."""
    try:
        if args.calls < 1:
            raise LoadTestError("--calls must be at least 1")
        if args.duration < MIN_DURATION:
            raise LoadTestError(f"--duration must be at least {MIN_DURATION:.0f} s (speech, then bursts)")
        if cfg.sip is None or cfg.notifications is None or cfg.bridge is None:
            raise LoadTestError(f"{cfg.path}: needs the sip, notifications and bridge sections")
        _check_tools(pesq=args.pesq_calls > 0, chart=bool(args.chart_path))
        ice.use_host_addresses(cfg.webrtc.ice_addresses)
        test = LoadTest(args, cfg)
        report = await test.run()
    except LoadTestError as exc:
        print(f"bridge loadtest: {exc}", file=sys.stderr)
        return 2
    print(format_table(report), flush=True)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=1, default=_json_default))
        print(f"JSON report: {args.json_path}")
    if args.chart_path:
        write_chart(report, args.chart_path)
        print(f"chart: {args.chart_path}")
    return 0 if not report["failures"] else 1


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def _check_tools(pesq: bool, chart: bool) -> None:
    if pesq:
        if shutil.which("espeak-ng") is None:
            raise LoadTestError("espeak-ng is not installed (speech for PESQ): apt-get install espeak-ng, "
                                "or --pesq-calls 0")
        try:
            import pesq  # noqa: F401
        except ImportError:
            raise LoadTestError("the pesq package is missing: pip install 'bridge[loadtest]', or "
                                "--pesq-calls 0") from None
    if chart:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise LoadTestError("matplotlib is missing: pip install 'bridge[loadtest]'") from None


# --- audio programs ----------------------------------------------------------------------------

def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst or len(x) == 0:
        return x.astype(np.int16)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=dst)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(make_frame(x.astype(np.int16), 0, src))]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.int16) if out else np.zeros(0, np.int16)


def speech(which: str, work: Path) -> np.ndarray:
    """espeak-ng speech at 48 kHz, trimmed of silence, at SPEECH_RMS_DBFS, at most SPEECH_MAX_S."""
    path = work / f"speech-{which}.wav"
    try:
        subprocess.run(["espeak-ng", "-v", SPEECH_VOICE[which], "-s", "160", "-w", str(path),
                        SPEECH_TEXT[which]], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise LoadTestError(f"espeak-ng failed: {exc}") from None
    x = read_wav(str(path), RATE).astype(np.float64)
    loud = np.flatnonzero(np.abs(x) > 0.01 * 32767)
    if len(loud) == 0:
        raise LoadTestError("espeak-ng produced silence")
    x = x[max(loud[0] - RATE // 20, 0):loud[-1] + RATE // 20]
    x = x[:int(SPEECH_MAX_S * RATE)]
    rms = math.sqrt(float(np.mean(x ** 2))) or 1.0
    x *= 32767 * 10 ** (SPEECH_RMS_DBFS / 20) / rms
    return np.clip(x, -32767, 32767).astype(np.int16)


@dataclass
class Program:
    """What one side sends, by 20 ms frame index from the program's start."""

    rate: int
    samples: np.ndarray           # the whole program (int16 mono at `rate`)
    speech_frames: int
    bursts: list[int]             # first frame of each burst
    tone_hz: float

    @property
    def frame(self) -> int:
        return int(self.rate * PTIME)

    @property
    def frames(self) -> int:
        return len(self.samples) // self.frame

    def chunk(self, n: int) -> np.ndarray:
        f = self.frame
        if n < 0 or n >= self.frames:
            return np.zeros(f, np.int16)
        return self.samples[n * f:(n + 1) * f]

    @property
    def speech8k(self) -> np.ndarray:
        """The speech as it should arrive on the narrow-band side: the PESQ reference."""
        s = self.samples[:self.speech_frames * self.frame]
        return s if self.rate == SIP_RATE else _resample(s, self.rate, SIP_RATE)

    @property
    def burst_window_start(self) -> float:
        """Seconds from the program start after which only bursts are sent."""
        return (self.speech_frames + GAP_FRAMES // 2) * PTIME


def build_program(speech48: np.ndarray, rate: int, tone_hz: float, duration: float) -> Program:
    frame = int(rate * PTIME)
    total = int(round(duration / PTIME))
    sp = speech48 if rate == RATE else _resample(speech48, RATE, rate)
    speech_frames = min(math.ceil(len(sp) / frame), total - GAP_FRAMES - BURST_PERIOD_FRAMES - TAIL_FRAMES)
    if speech_frames < 100:
        raise LoadTestError(f"--duration {duration:g} s leaves no room for speech and bursts")
    x = np.zeros(total * frame, np.int16)
    sp = sp[:speech_frames * frame]
    x[:len(sp)] = sp
    t = np.arange(BURST_FRAMES * frame) / rate
    burst = (32767 * 10 ** (TONE_DBFS / 20) * np.sin(2 * np.pi * tone_hz * t)).astype(np.int16)
    ramp = min(frame // 4, len(burst) // 2)          # no click at the end of a burst
    burst[-ramp:] = (burst[-ramp:] * np.linspace(1, 0, ramp)).astype(np.int16)
    bursts = []
    n = speech_frames + GAP_FRAMES
    while n + BURST_FRAMES <= total - TAIL_FRAMES:
        x[n * frame:(n + BURST_FRAMES) * frame] = burst
        bursts.append(n)
        n += BURST_PERIOD_FRAMES
    return Program(rate, x, speech_frames, bursts, tone_hz)


class Sender:
    """One side's program on its own clock: silence until `t0`, then the program frame by frame.

    Remembers when each burst's first frame was handed to the transport (loop time)."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.t0: float | None = None
        self.n = -1
        self.burst_sent: dict[int, float] = {}     # burst index -> loop time
        self.late_ticks = 0
        self.ticks = 0
        self._next_burst = 0

    def next(self, now: float, skipped: int, lateness: float, program: Program | None = None) -> np.ndarray:
        """The frame for this tick; from `program` if given (the same program at another rate)."""
        self.ticks += 1
        program = program or self.program
        if lateness > PTIME / 4:
            self.late_ticks += 1
        if self.t0 is None or now < self.t0 - PTIME / 2:
            return np.zeros(program.frame, np.int16)
        self.n += 1 + (skipped if self.n >= 0 else 0)
        bursts = self.program.bursts
        while self._next_burst < len(bursts) and bursts[self._next_burst] <= self.n:
            if self.n < bursts[self._next_burst] + BURST_FRAMES:
                self.burst_sent[self._next_burst] = now
            self._next_burst += 1
        return program.chunk(self.n)


class ProgramTrack(MediaStreamTrack):
    """The app side's outgoing audio, paced by its own FrameClock: 48 kHz, or the 8 kHz copy
    of the program when the leg speaks G.711 (as a browser would: aiortc's G.711 encoder holds
    a 48 kHz frame back 20 ms in its resampler, which is the endpoint's delay, not the bridge's)."""

    kind = "audio"

    def __init__(self, sender: Sender, narrow: Program, codec: Callable[[], str]) -> None:
        super().__init__()
        self.sender = sender
        self.narrow = narrow
        self.codec = codec
        self._clock = FrameClock(PTIME)

    @property
    def rate(self) -> int:
        """The rate of this track's frames (the SDK's gate sends its silence at this rate too)."""
        return SIP_RATE if self.codec() in g711.CODECS else RATE

    async def recv(self) -> av.AudioFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        tick = await anext(self._clock)
        if self.rate == SIP_RATE:          # G.711: encoded here, a table look-up (as bridge's relay)
            pcm = self.sender.next(tick.now, tick.skipped, tick.lateness, self.narrow)
            packet = av.Packet(g711.encode(self.codec(), pcm))
            packet.pts, packet.time_base = tick.index * self.narrow.frame, fractions.Fraction(1, SIP_RATE)
            return packet
        pcm = self.sender.next(tick.now, tick.skipped, tick.lateness)
        return make_frame(pcm, tick.index * FRAME)


class LoadCall(Call):
    """An SDK call that hands its received frames over with their RTP timestamp (pts)."""

    def __init__(self, url: str, on_frame) -> None:
        super().__init__(url)
        self._on_frame = on_frame

    def _peer_frame(self, frame: av.AudioFrame) -> None:
        self._on_frame(frame)

    def hook_receiver(self, on_packet) -> bool:
        return rtcprobe.stamp_arrivals(self._pc, on_packet) if self._pc is not None else False

    async def inbound_stats(self) -> dict:
        # aiortc reports jitter in RTP timestamp units; 48 kHz as this load test always read it
        return await rtcprobe.inbound_stats(self._pc, 48) if self._pc is not None else {}


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


# --- the bridge process ------------------------------------------------------------------------

class BridgeProbe:
    """/healthz, /metrics and /proc/<pid> of the bridge under test: one daemon, or every live
    node of its cluster (`cluster:` in the config: the nodes' addresses from Redis, their CPU
    and memory summed, their metrics merged, and Redis's own cost of the run)."""

    def __init__(self, cfg: Config) -> None:
        n = cfg.notifications
        assert n is not None
        self.cfg = cfg
        self.base = f"http://{n.host}:{n.port}"
        self.bases = [self.base]
        self.headers = {"Authorization": f"Bearer {n.admin_token}"} if n.admin_token else {}
        self.pid: int | None = None
        self.pids: list[int] = []
        self._session: aiohttp.ClientSession | None = None
        self._store: Any = None
        self._redis_before: dict | None = None
        self._redis_before_t = 0.0

    async def __aenter__(self) -> "BridgeProbe":
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        if self.cfg.cluster is not None:
            from .cluster.store import RedisDown, Store
            self._store = Store(self.cfg.cluster)
            try:
                self.bases = await self._nodes()
                self._redis_before = await self._redis_cost()
                self._redis_before_t = time.monotonic()
            except RedisDown as exc:
                await self.__aexit__()
                raise LoadTestError(f"the cluster's Redis: {exc}") from None
            if not self.bases:
                await self.__aexit__()
                raise LoadTestError("no live bridge node in the cluster (bridge cluster status)")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self._store is not None:
            await self._store.close()

    async def _nodes(self) -> list[str]:
        """The notification listeners of the cluster's live bridge nodes."""
        store = self._store
        bases = []
        for node in sorted(await store.run(store.client.smembers(store.key("nodes")))):
            info = await store.run(store.client.hgetall(store.key("node", node)))
            alive = await store.run(store.client.exists(store.key("lease", node)))
            if alive and info.get("notifications"):
                bases.append(f"http://{info['notifications']}")
        return bases

    async def _redis_cost(self) -> dict:
        """Redis's commands so far and its CPU seconds (INFO commandstats, INFO cpu)."""
        stats = await self._store.run(self._store.client.info("commandstats"))
        cpu = await self._store.run(self._store.client.info("cpu"))
        return {"calls": sum(int(v["calls"]) for v in stats.values()),
                "usec": sum(int(v["usec"]) for v in stats.values()),
                "cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])}

    async def redis_idle(self) -> None:
        """Mark the end of the idle baseline: the nodes' heartbeats alone cost Redis this much."""
        if self._redis_before is not None:
            self._redis_idle = (await self._redis_cost(), time.monotonic())
            self._redis_started = self._redis_before_t

    async def redis_delta(self) -> dict | None:
        """What the run cost Redis (commands, their time inside Redis, its CPU), and that less
        the heartbeats' share (the idle baseline's rate over the run): the calls' own cost."""
        if self._redis_before is None:
            return None
        after, t_after = await self._redis_cost(), time.monotonic()
        total = {k: after[k] - self._redis_before[k] for k in after}
        out = {k: round(v, 6) for k, v in total.items()} | {"nodes": len(self.bases)}
        idle, t_idle = getattr(self, "_redis_idle", (None, None))
        if idle is not None and t_idle > self._redis_before_t:
            rate = {k: (idle[k] - self._redis_before[k]) / (t_idle - self._redis_before_t) for k in idle}
            out["calls_only"] = {k: round(total[k] - rate[k] * (t_after - self._redis_before_t), 6) for k in total}
            out["heartbeat_per_s"] = {k: round(v, 6) for k, v in rate.items()}
        return out

    async def health(self) -> tuple[int, dict]:
        """The one daemon's /healthz; for a cluster, every node's, merged (the pids, calls summed)."""
        assert self._session is not None
        answers = []
        for base in self.bases:
            async with self._session.get(base + "/healthz", headers=self.headers) as r:
                answers.append((r.status, await r.json(content_type=None)))
        if len(answers) == 1:
            return answers[0]
        status = max(s for s, _ in answers)
        merged = dict(answers[0][1])
        merged["pids"] = [h.get("pid") for _, h in answers]
        merged["bridged_calls"] = sum(h.get("bridged_calls", 0) for _, h in answers)
        merged["nodes"] = len(answers)
        return status, merged

    async def metrics(self) -> dict:
        """The bridge's metrics (`parse_metrics`); a cluster's nodes' summed."""
        assert self._session is not None
        parsed = []
        for base in self.bases:
            async with self._session.get(base + "/metrics", headers=self.headers) as r:
                if r.status != 200:
                    raise LoadTestError(f"GET {base}/metrics answered {r.status}")
                parsed.append(parse_metrics(await r.text()))
        return merge_metrics(parsed)


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def procs_sample(pids: list[int]) -> tuple[float, float, int] | None:
    """`proc_sample` summed over the bridge's processes (the nodes of a cluster on this host)."""
    samples = [proc_sample(pid) for pid in pids]
    if any(s is None for s in samples):
        return None
    return (sum(s[0] for s in samples if s), sum(s[1] for s in samples if s), sum(s[2] for s in samples if s))


def proc_sample(pid: int) -> tuple[float, float, int] | None:
    """(CPU seconds used so far, RSS in MB, threads) of a process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2:].split()
    cpu = (int(rest[11]) + int(rest[12])) / _CLK_TCK
    rss = 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return cpu, rss, int(rest[17])


def parse_metrics(text: str) -> dict:
    """The bridge's setup histograms and frame counters, from Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families
    out: dict = {"setup": {}, "frames": {}, "calls": {}, "loop_lag": {}, "gc": {}}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "bridge_setup_seconds_bucket":
                out["setup"].setdefault(s.labels["step"], {}).setdefault("buckets", {})[s.labels["le"]] = s.value
            elif s.name in ("bridge_setup_seconds_sum", "bridge_setup_seconds_count"):
                key = s.name.rsplit("_", 1)[1]
                out["setup"].setdefault(s.labels["step"], {})[key] = s.value
            elif s.name == "bridge_loop_lag_seconds_bucket":
                out["loop_lag"].setdefault("buckets", {})[s.labels["le"]] = s.value
            elif s.name in ("bridge_loop_lag_seconds_sum", "bridge_loop_lag_seconds_count"):
                out["loop_lag"][s.name.rsplit("_", 1)[1]] = s.value
            elif s.name == "bridge_gc_pause_seconds_bucket":
                out["gc"].setdefault(s.labels["generation"], {}).setdefault("buckets", {})[s.labels["le"]] = s.value
            elif s.name in ("bridge_gc_pause_seconds_sum", "bridge_gc_pause_seconds_count"):
                out["gc"].setdefault(s.labels["generation"], {})[s.name.rsplit("_", 1)[1]] = s.value
            elif s.name == "bridge_frames_total":
                out["frames"].setdefault(s.labels["direction"], {})[s.labels["outcome"]] = s.value
            elif s.name == "bridge_calls_total":
                out["calls"][f'{s.labels["direction"]}/{s.labels["result"]}'] = s.value
    return out


def merge_metrics(parsed: list[dict]) -> dict:
    """Several nodes' `parse_metrics`, summed (histograms bucket by bucket)."""
    def add(into: dict, other: dict) -> None:
        for k, v in other.items():
            if isinstance(v, dict):
                add(into.setdefault(k, {}), v)
            else:
                into[k] = into.get(k, 0) + v
    out: dict = {"setup": {}, "frames": {}, "calls": {}, "loop_lag": {}, "gc": {}}
    for p in parsed:
        add(out, p)
    return out


def metrics_delta(before: dict, after: dict) -> dict:
    """What this run added: setup quantiles (from histogram buckets), frames, calls."""
    def histogram(a: dict, b: dict) -> dict:
        count = a.get("count", 0) - b.get("count", 0)
        total = a.get("sum", 0) - b.get("sum", 0)
        buckets = sorted(((float(le), v - b.get("buckets", {}).get(le, 0))
                          for le, v in a.get("buckets", {}).items()), key=lambda kv: kv[0])
        return {"count": int(count), "mean_ms": 1000 * total / count if count else None,
                "p50_ms": _hist_quantile(buckets, 0.5), "p99_ms": _hist_quantile(buckets, 0.99),
                "buckets": {("+Inf" if math.isinf(le) else f"{le:g}"): int(v) for le, v in buckets}}

    setup = {step: histogram(a, before["setup"].get(step, {})) for step, a in after["setup"].items()}
    loop_lag = histogram(after.get("loop_lag", {}), before.get("loop_lag", {}))
    gc_pauses = {gen: _pauses(histogram(a, before.get("gc", {}).get(gen, {})))
                 for gen, a in sorted(after.get("gc", {}).items())}
    frames = {}
    for direction, a in after["frames"].items():
        b = before["frames"].get(direction, {})
        frames[direction] = {k: int(v - b.get(k, 0)) for k, v in a.items()}
    calls = {k: int(v - before["calls"].get(k, 0)) for k, v in after["calls"].items()
             if v - before["calls"].get(k, 0)}
    return {"setup": setup, "frames": frames, "calls": calls, "loop_lag": loop_lag, "gc": gc_pauses}


def _pauses(h: dict) -> dict:
    """One generation's collections in the run: how many, their total and mean, how many took
    more than 20 ms, and the longest as the upper edge of its histogram bucket."""
    counts = [(float("inf") if le == "+Inf" else float(le), n) for le, n in h["buckets"].items()]
    over = h["count"] - max((n for le, n in counts if le <= 0.02), default=0)
    longest = next((le for le, n in counts if n >= h["count"]), None) if h["count"] else None
    return {"count": h["count"], "total_ms": _r(h["mean_ms"] * h["count"] if h["mean_ms"] else 0),
            "mean_ms": _r(h["mean_ms"]), "over_20ms": over,
            "longest_at_most_ms": None if longest is None else (None if math.isinf(longest) else 1000 * longest)}


def _hist_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus-style histogram_quantile (linear inside the bucket), in ms."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, prev = 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            if math.isinf(le):
                return 1000 * lower
            width = cum - prev
            return 1000 * (lower + (le - lower) * ((rank - prev) / width if width else 1.0))
        lower, prev = le, cum
    return 1000 * lower


# --- the run ----------------------------------------------------------------------------------

class LoadTest:
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
                "app_to_sip": _pesq(self.app_program.speech8k,
                                    _codec_alone(codec, self.app_program.speech8k))["mos"],
                "sip_to_app": _pesq(self.far_program.speech8k,
                                    _codec_alone(codec, self.far_program.speech8k))["mos"]}
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
        call.media.on_audio = lambda p: packets.append((loop.time(), p.sequence_number, p.timestamp, p.payload))
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

    # --- analysis ----------------------------------------------------------------------------
    def _analyse(self) -> dict:
        recs = sorted(self.records.values(), key=lambda r: r.index)
        per_call = {}
        for rec in recs:
            per_call[rec.index] = {
                "app_to_sip": self._direction_far(rec) if rec.t0 is not None else {},
                "sip_to_app": self._direction_app(rec) if rec.t0 is not None else {},
            }
        good = [r for r in recs if r.state == "done"]
        k = min(self.args.pesq_calls, len(good))
        chosen = {good[int(j * len(good) / k)].index for j in range(k)} if k else set()
        for rec in recs:
            if rec.index in chosen:
                per_call[rec.index]["app_to_sip"]["pesq"] = self._pesq_far(rec)
                per_call[rec.index]["sip_to_app"]["pesq"] = self._pesq_app(rec)
        return per_call

    def _direction_far(self, rec: CallRecord) -> dict:
        """app -> SIP, at the far end's socket: G.711 or G.722 packets."""
        out = self._packet_direction(rec, rec.far_packets, rec.codec, rec.app_sender, self.app_program)
        out["far_end_rtp"] = rec.far_stats
        return self._relative(out)

    def _packet_direction(self, rec: CallRecord, packets: list, codec: str, sender: Sender,
                        program: Program) -> dict:
        """Wire statistics and burst latencies of one direction received as G.711 or G.722 packets
        (arrival, seq, ts, payload), from shortly before the programs started."""
        assert rec.t0 is not None
        decode = _narrowband(codec or g711.PCMU)
        stream = [(a, seq, ts, decode(payload)) for a, seq, ts, payload in _since(packets, rec.t0)]
        out = _wire_stats([(a, seq, ts) for a, seq, ts, _ in stream], SIP_RATE, rec.t0, self.args.duration)
        out.update(_latencies(stream, SIP_RATE, sender, program, rec.t0))
        return out

    def _direction_app(self, rec: CallRecord) -> dict:
        """SIP -> app, at the app side's aiortc receiver: packets, decoded frames by pts (both on
        the RTP clock of the negotiated codec: 48 kHz Opus or 8 kHz G.711)."""
        assert rec.t0 is not None
        if rec.app_raw:
            out = self._packet_direction(rec, rec.app_raw, rec.app_codec, rec.far_sender, self.far_program)
            out["aiortc_inbound"] = rec.app_stats
            return self._relative(out)
        out = _wire_stats(_since(rec.app_packets, rec.t0), rec.app_rate, rec.t0, self.args.duration)
        arrival = self._app_arrivals(rec)
        stream = []
        unmatched = 0
        for pts, samples in rec.app_frames:
            a = arrival.get(pts % (1 << 32))
            if a is None:
                unmatched += 1
                continue
            if a >= rec.t0 - 0.2:
                stream.append((a, 0, pts, samples))
        out.update(_latencies(stream, rec.app_rate, rec.far_sender, self.far_program, rec.t0))
        out["frames_without_packet_time"] = unmatched
        out["aiortc_inbound"] = rec.app_stats
        return self._relative(out)

    def _relative(self, out: dict) -> dict:
        """Loop times -> seconds since the run's start (for the chart)."""
        out["latency_t_s"] = [round(t - self.t_zero, 3) for t in out.pop("latency_t_abs", [])]
        out["late_times_s"] = [round(t - self.t_zero, 3) for t in out.pop("late_t_abs", [])]
        return out

    @staticmethod
    def _app_arrivals(rec: CallRecord) -> dict[int, float]:
        """pts of a decoded frame -> arrival of its packet. aiortc 1.16 hands frames over with
        pts = RTP timestamp - the first packet's timestamp (its TimestampMapper)."""
        if not rec.app_packets:
            return {}
        origin = rec.app_packets[0][2]
        return {(ts - origin) % (1 << 32): a for a, _, ts in rec.app_packets}

    def _pesq_far(self, rec: CallRecord) -> dict:
        assert rec.t0 is not None
        deg = _playout(_since(rec.far_packets, rec.t0), rec.codec or g711.PCMU)
        return _pesq(self.app_program.speech8k, deg)

    def _pesq_app(self, rec: CallRecord) -> dict:
        assert rec.t0 is not None
        if rec.app_raw:         # played out by RTP timestamp: a gap is silence, as lost audio would be
            deg = _playout(_since(rec.app_raw, rec.t0), rec.app_codec or g711.PCMU)
            return _pesq(self.far_program.speech8k, deg)
        arrival = self._app_arrivals(rec)
        frames = [s for pts, s in rec.app_frames if arrival.get(pts % (1 << 32), rec.t0) >= rec.t0 - 0.2]
        deg = np.concatenate(frames or [np.zeros(0, np.int16)])
        if rec.app_rate != SIP_RATE:
            deg = _resample(deg, rec.app_rate, SIP_RATE)
        return _pesq(self.far_program.speech8k, deg)

    # --- the report ----------------------------------------------------------------------------
    def _report(self, started_at: str, pid: int, health: dict, bridge: dict, per_call: dict) -> dict:
        recs = sorted(self.records.values(), key=lambda r: r.index)

        def ms(a: float | None, b: float | None) -> float | None:
            return round(1000 * (b - a), 2) if a is not None and b is not None else None

        calls = []
        for r in recs:
            calls.append({
                "index": r.index, "user": f"{r.user}@{self.app_service}", "state": r.state, "failure": r.failure,
                "disconnect": r.disconnect, "codec": r.codec,
                "start_s": round(r.t_start - self.t_zero, 3) if r.t_start else None,
                "end_s": round(r.t_end - self.t_zero, 3) if r.t_end else None,
                "setup_ms": {"make_call_to_wait_connected": ms(r.t_start, r.t_wait_connected),
                             "make_call_to_invite": ms(r.t_start, r.t_invite),
                             "invite_to_far_answered": ms(r.t_invite, r.t_far_answered),
                             "make_call_to_connected": ms(r.t_start, r.t_connected)},
                **per_call.get(r.index, {}),
            })
        failures = [{"call": c["index"], "user": c["user"], "reason": c["failure"]}
                    for c in calls if c["state"] != "done"]
        summary = self._summary(calls, bridge)
        return {
            "tool": "bridge loadtest", "bridge_version": __version__, "started_at": started_at,
            "command": " ".join(["python -m bridge.loadtest"] + sys.argv[1:]) if sys.argv[0].endswith(
                "loadtest.py") else " ".join(sys.argv),
            "params": {"calls": self.args.calls, "duration_s": self.args.duration, "ramp_per_s": self.args.ramp,
                       "far_end": self.args.far_end,
                       "callee": f"{self.args.callee.replace('{ext}', self.args.far_end)}@{self.desk_service}",
                       "app_service": self.app_service, "config": self.cfg.path,
                       "platform_url": self.cfg.platform.public_url, "pesq_calls": self.args.pesq_calls,
                       "cpu_hog": self.args.cpu_hog, "gateway": self.args.gateway,
                       "program": {"speech_s": self.app_program.speech_frames * PTIME,
                                   "bursts_per_call": len(self.app_program.bursts),
                                   "burst_ms": BURST_FRAMES * 20, "burst_period_ms": BURST_PERIOD_FRAMES * 20,
                                   "tones_hz": {"app_to_sip": APP_TONE_HZ, "sip_to_app": FAR_TONE_HZ}}},
            "machine": machine(),
            "bridge": {"pid": pid, "healthz": health, "metrics": bridge},
            "measured_path": MEASURED_PATH,
            "cpu_hog": self.hog_report,
            "summary": summary,
            "targets": targets(summary),
            "failures": failures,
            "samples": self.samples,
            "calls": calls,
        }

    def _summary(self, calls: list[dict], bridge: dict) -> dict:
        done = [c for c in calls if c["state"] == "done"]
        measured = [c for c in calls if c.get("app_to_sip")]
        setup = {k: _dist([c["setup_ms"][k] for c in calls if c["setup_ms"][k] is not None])
                 for k in ("make_call_to_wait_connected", "make_call_to_invite", "invite_to_far_answered",
                           "make_call_to_connected")}
        for step, h in bridge["setup"].items():
            setup[f"bridge_{step}"] = {"p50": _r(h["p50_ms"]), "p99": _r(h["p99_ms"]), "mean": _r(h["mean_ms"]),
                                       "n": h["count"], "source": "bridge /metrics histogram (bucket-interpolated)"}
        directions = {}
        for d in ("app_to_sip", "sip_to_app"):
            lat = [x for c in measured for x in c[d].get("latencies_ms", [])]
            expected = sum(c[d].get("expected", 0) for c in measured)
            late = sum(c[d].get("late_40ms", 0) for c in measured)
            lost = sum(c[d].get("lost", 0) for c in measured)
            pesq_values = [c[d]["pesq"]["mos"] for c in measured if c[d].get("pesq", {}).get("mos") is not None]
            directions[d] = {
                "latency_ms": _dist(lat),
                "bursts_sent": sum(c[d].get("bursts_sent", 0) for c in measured),
                "bursts_detected": sum(c[d].get("bursts_detected", 0) for c in measured),
                "packets_expected": expected,
                "packets_received": sum(c[d].get("received", 0) for c in measured),
                "lost": lost,
                "late_40ms": late,
                "late_or_lost_40ms_pct": round(100 * (late + lost) / expected, 3) if expected else None,
                "jitter_ms": _dist([c[d]["jitter_ms"] for c in measured if c[d].get("jitter_ms") is not None]),
                "max_transit_excess_ms": max((c[d].get("max_transit_excess_ms", 0) for c in measured), default=None),
                # a call's longest stall: its worst packet's delay beyond its best (a pause of the
                # bridge, GC or otherwise, shows here in every call it held)
                "stall_ms": _dist([c[d]["max_transit_excess_ms"] for c in measured
                                   if c[d].get("max_transit_excess_ms") is not None]),
                "calls_stalled_over_20ms": sum(1 for c in measured if c[d].get("max_transit_excess_ms", 0) > 20),
                "pesq_mos_nb": {**_dist(pesq_values), "values": pesq_values,
                            "g711_only": self.pesq_ceiling.get(d)},
                "bridge_frames": bridge["frames"].get(d, {}),
            }
        far = [c["app_to_sip"].get("far_end_rtp", {}) for c in measured]
        directions["app_to_sip"]["far_end_rtp"] = {k: sum(f.get(k, 0) for f in far)
                                                   for k in ("packets_received", "lost", "late", "concealed",
                                                             "dropped", "inserted")}
        app = [c["sip_to_app"].get("aiortc_inbound", {}) for c in measured]
        directions["sip_to_app"]["aiortc_inbound"] = {
            "packets_received": sum(a.get("packets_received") or 0 for a in app),
            "packets_lost": sum(a.get("packets_lost") or 0 for a in app),
            "jitter_ms": _dist([a["jitter_ms"] for a in app if a.get("jitter_ms") is not None])}
        s = self.samples
        t_first = min((c["start_s"] for c in calls if c["start_s"] is not None), default=0)
        base = [x["bridge_rss_mb"] for x in s if x["t"] <= t_first] or [s[0]["bridge_rss_mb"]] if s else []
        busy = [x for x in s if x["active"] > 0]
        peak_calls = max((x["active"] + x["calling"] for x in s), default=0)
        baseline = float(np.median(base)) if base else None
        peak = max((x["bridge_rss_mb"] for x in s), default=None)
        last = s[-1]["bridge_rss_mb"] if s else None
        full = [x for x in busy if x["active"] == max((y["active"] for y in s), default=0)]
        return {
            "calls": {"requested": len(calls), "connected": sum(c["setup_ms"]["make_call_to_connected"] is not None
                                                                for c in calls),
                      "completed": len(done), "failed": len(calls) - len(done),
                      "peak_concurrent": max((x["active"] for x in s), default=0)},
            "setup_ms": setup,
            "directions": directions,
            "bridge_process": {
                "cpu_pct": _dist([x["bridge_cpu_pct"] for x in busy]),
                "cpu_pct_at_peak_concurrency": _dist([x["bridge_cpu_pct"] for x in full]),
                "rss_mb": {"baseline": _r(baseline), "peak": peak, "after_calls": last,
                           "per_call": _r((peak - baseline) / peak_calls) if peak_calls and baseline and peak
                           else None,
                           "retained_after_calls": _r(last - baseline) if last and baseline else None},
                "threads_max": max((x["bridge_threads"] for x in s), default=None),
                "loop_lag_ms": {k: _r(bridge.get("loop_lag", {}).get(f"{k}_ms")) for k in ("p50", "p99", "mean")}
                | {"source": "bridge_loop_lag_seconds (50 ms timer, bucket-interpolated)"},
                "gc_pauses": bridge.get("gc", {}),
                "samples": len(s)},
            "loadtest_process": {
                "cpu_pct": _dist([x["loadtest_cpu_pct"] for x in busy]),
                "loop_lag_ms": _dist([x["loadtest_loop_lag_ms"] for x in busy]),
                "late_send_ticks": sum(r.app_sender.late_ticks + r.far_sender.late_ticks
                                       for r in self.records.values()),
                "send_ticks": sum(r.app_sender.ticks + r.far_sender.ticks for r in self.records.values())},
        }


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(float(x), nd)


def _dist(values: list) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return {"n": 0}
    return {"n": int(len(v)), "p50": _r(np.percentile(v, 50)), "p99": _r(np.percentile(v, 99)),
            "mean": _r(v.mean()), "min": _r(v.min()), "max": _r(v.max())}


def _since(packets: list, t0: float) -> list:
    """Packets (arrival first) from 0.2 s before the programs started at `t0`."""
    return [p for p in packets if p[0] >= t0 - 0.2]


def _narrowband(codec: str) -> Callable[[bytes], np.ndarray]:
    """A decoder of one stream's payloads (in order) to 8 kHz samples, one per RTP timestamp unit
    (G.722's 16 kHz audio downsampled), for the narrowband analysis and PESQ."""
    spec = codecs.get(codec)
    decode = spec.decoder()
    if spec.sample_rate == SIP_RATE:
        return decode
    down = resampler(spec.sample_rate, SIP_RATE)
    return lambda payload: down(decode(payload))


def _codec_alone(codec: str, speech8k: np.ndarray) -> np.ndarray:
    """8 kHz speech through the SIP leg's codec alone (at the codec's own rate)."""
    spec = codecs.get(codec)
    frames = [speech8k[i:i + SIP_FRAME] for i in range(0, len(speech8k) - SIP_FRAME + 1, SIP_FRAME)]
    up, encode, decode = resampler(SIP_RATE, spec.sample_rate), spec.encoder(), _narrowband(codec)
    return np.concatenate([decode(encode(up(f))) for f in frames] or [np.zeros(0, np.int16)])


def _playout(packets: list[tuple[float, int, int, bytes]], codec: str) -> np.ndarray:
    """G.711 or G.722 packets (arrival, seq, ts, payload) decoded (8 kHz) and placed by RTP timestamp."""
    if not packets:
        return np.zeros(0, np.int16)
    origin = packets[0][2]
    offsets = [(ts - origin) & 0xFFFFFFFF for _, _, ts, _ in packets]
    end = max(o + len(p[3]) for o, p in zip(offsets, packets) if o < 1 << 31)
    out = np.zeros(end, np.int16)
    decode = _narrowband(codec)
    for o, (_, _, _, payload) in zip(offsets, packets):
        pcm = decode(payload)
        if o < 1 << 31:
            out[o:o + len(pcm)] = pcm[:end - o]
    return out


def _wire_stats(packets: list[tuple[float, int, int]], rate: int, t0: float, duration: float) -> dict:
    """Loss, frames later than LATE_MS, RFC 3550 jitter, from (arrival, seq, ts) of one call.

    Only packets of the program (t0 .. t0 + duration) count. A packet is late when its transit
    (arrival - RTP time) exceeds the call's best transit by more than LATE_MS."""
    pk = [p for p in packets if t0 <= p[0] <= t0 + duration]
    if not pk:
        return {"expected": 0, "received": 0, "lost": 0, "late_40ms": 0}
    seqs = np.unwrap(np.array([p[1] for p in pk], dtype=float), period=65536)
    ts = np.unwrap(np.array([p[2] for p in pk], dtype=float), period=2 ** 32)
    arrival = np.array([p[0] for p in pk])
    expected = int(seqs.max() - seqs.min() + 1)
    received = len(np.unique(seqs))
    transit = arrival - ts / rate
    excess = 1000 * (transit - transit.min())
    d = np.abs(np.diff(transit)) * rate
    jitter = 0.0
    for x in d:
        if x < rate:
            jitter += (x - jitter) / 16
    return {"expected": expected, "received": received, "lost": max(expected - received, 0),
            "late_40ms": int((excess > LATE_MS).sum()), "max_transit_excess_ms": round(float(excess.max()), 2),
            "late_t_abs": arrival[excess > LATE_MS].tolist(),
            "transit_excess_p99_ms": round(float(np.percentile(excess, 99)), 2),
            "jitter_ms": round(1000 * jitter / rate, 3)}


def _latencies(stream: list, rate: int, sender: Sender, program: Program, t0: float) -> dict:
    """Burst onsets in a received stream [(arrival, seq, ts, samples)], matched to the sender's
    burst send times. Each sample's time is its packet's arrival plus its offset in the packet."""
    stream = sorted(stream, key=lambda s: (s[0], s[2]))
    sent = sorted(sender.burst_sent.items())
    out: dict = {"bursts_sent": len(sent), "bursts_detected": 0, "latencies_ms": [], "burst_times_s": []}
    if not stream or not sent:
        return out
    x = np.concatenate([s[3] for s in stream]).astype(np.int32)
    times = np.concatenate([s[0] + np.arange(len(s[3])) / rate for s in stream])
    gate = t0 + program.burst_window_start
    amplitude = 32767 * 10 ** (TONE_DBFS / 20)
    loud = np.flatnonzero((np.abs(x) > 0.3 * amplitude) & (times >= gate))
    if len(loud) == 0:
        return out
    quiet_gap = int(0.2 * rate)
    starts = loud[np.concatenate([[True], np.diff(loud) > quiet_gap])]
    onsets = []
    win = int(0.02 * rate)
    for i in starts:
        seg = x[i:i + 2 * win].astype(float)
        if len(seg) < win:
            continue
        spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
        f = np.argmax(spec) * rate / len(seg)
        if abs(f - program.tone_hz) <= 0.15 * program.tone_hz:
            onsets.append(float(times[i]))
    out["bursts_detected"] = len(onsets)
    send_times = [t for _, t in sent]
    if len(onsets) == len(send_times):
        pairs = list(zip(onsets, send_times))                  # every burst arrived: in order
    else:
        pairs = []
        for a in onsets:                                       # else the latest burst sent before it
            earlier = [t for t in send_times if t <= a]
            if earlier:
                pairs.append((a, earlier[-1]))
    out["latencies_ms"] = [round(1000 * (a - s), 2) for a, s in pairs]
    out["burst_times_s"] = [round(s - t0, 3) for _, s in pairs]
    out["latency_t_abs"] = [s for _, s in pairs]
    return out


def _pesq(ref: np.ndarray, deg: np.ndarray) -> dict:
    """PESQ NB MOS-LQO of `deg` against `ref` (8 kHz), after aligning by cross-correlation."""
    import pesq
    if len(deg) < len(ref) // 2:
        return {"mos": None, "error": f"only {len(deg) / SIP_RATE:.2f} s recorded"}
    r = ref.astype(np.float64)
    d = deg.astype(np.float64)
    search = d[:len(r) + 3 * SIP_RATE]
    n = 1 << int(math.ceil(math.log2(len(search) + len(r))))
    corr = np.fft.irfft(np.fft.rfft(search, n) * np.conj(np.fft.rfft(r, n)), n)
    lag = int(np.argmax(corr[:len(search)]))
    aligned = d[lag:lag + len(r)]
    if len(aligned) < len(r):
        aligned = np.concatenate([aligned, np.zeros(len(r) - len(aligned))])
    norm = float(np.sqrt(np.sum(r ** 2) * np.sum(aligned ** 2))) or 1.0
    try:
        mos = float(pesq.pesq(SIP_RATE, r.astype(np.float32), aligned.astype(np.float32), "nb"))
    except Exception as exc:   # noqa: BLE001 - pesq raises its own error types
        return {"mos": None, "error": f"{type(exc).__name__}: {exc}", "lag_ms": lag / 8}
    return {"mos": round(mos, 3), "lag_ms": round(lag / 8, 2),
            "correlation": round(float(corr[lag]) / norm, 4)}


def targets(summary: dict) -> list[dict]:
    """The issue's targets, each with its value and whether it was met."""
    d = summary["directions"]
    rows = []

    def add(name: str, target: str, value: float | None, ok: bool | None) -> None:
        rows.append({"name": name, "target": target, "value": value, "pass": ok})

    for k in ("app_to_sip", "sip_to_app"):
        v = d[k]["late_or_lost_40ms_pct"]
        add(f"frames later than {LATE_MS:.0f} ms or lost, {k}", "< 0.5 %", v, None if v is None else v < 0.5)
    for k in ("app_to_sip", "sip_to_app"):
        v = d[k]["latency_ms"].get("p99")
        add(f"p99 added latency, {k}", "<= 20 ms", v, None if v is None else v <= 20)
    v = summary["setup_ms"].get("bridge_notification_to_invite", {}).get("p50")
    add("notification -> INVITE p50", "<= 20 ms", v, None if v is None else v <= 20)
    for k in ("app_to_sip", "sip_to_app"):
        v = d[k]["pesq_mos_nb"].get("min")
        add(f"PESQ NB MOS (min of the calls), {k}", ">= 4.0", v, None if v is None else v >= 4.0)
    for k in ("app_to_sip", "sip_to_app"):
        v = d[k]["stall_ms"].get("max")
        add(f"longest stall in any call, {k}", "<= 20 ms", v, None if v is None else v <= 20)
    v = summary["bridge_process"]["rss_mb"]["per_call"]
    add("bridge memory per call", "<= 5 MB", v, None if v is None else v <= 5)
    f = summary["calls"]["failed"]
    add("failed calls", "0", f, f == 0)
    return rows


def machine() -> dict:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1]) // 1024
    espeak = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
    return {"cores": os.cpu_count(), "cpu_model": cpu, "mem_total_mb": mem,
            "python": sys.version.split()[0], "implementation": _platform.python_implementation(),
            "platform": _platform.platform(), "kernel": _platform.release(),
            "versions": {d: version(d) for d in ("bridge", "aiortc", "av", "aiohttp", "numpy", "uvloop",
                                                  "pyVoIP", "pesq", "matplotlib", "prometheus-client")},
            "espeak_ng": espeak}


# --- output ------------------------------------------------------------------------------------

def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.1f}{unit}" if abs(x) >= 10 else f"{x:.2f}{unit}"
    return f"{x}{unit}"


def format_table(report: dict) -> str:
    s = report["summary"]
    p = report["params"]
    c = s["calls"]
    lines = [f"bridge loadtest: {p['calls']} calls x {p['duration_s']:g} s, ramp {p['ramp_per_s']:g}/s, "
             f"-> {p['callee']} through {p.get('gateway', 'bridge')} ({report['machine']['cores']} cores)",
             f"calls: {c['completed']} completed, {c['failed']} failed, peak {c['peak_concurrent']} concurrent", ""]
    lines.append(f"{'setup (ms)':<34}{'p50':>9}{'p99':>9}{'mean':>9}{'n':>6}")
    for k, v in s["setup_ms"].items():
        lines.append(f"  {k:<32}{_fmt(v.get('p50')):>9}{_fmt(v.get('p99')):>9}{_fmt(v.get('mean')):>9}"
                     f"{v.get('n', 0):>6}")
    lines.append("")
    lines.append(f"{'per direction':<34}{'app->SIP':>14}{'SIP->app':>14}")
    a, b = s["directions"]["app_to_sip"], s["directions"]["sip_to_app"]

    def row(label: str, fa: Any, fb: Any) -> None:
        lines.append(f"  {label:<32}{_fmt(fa):>14}{_fmt(fb):>14}")
    row("latency p50 (ms)", a["latency_ms"].get("p50"), b["latency_ms"].get("p50"))
    row("latency p99 (ms)", a["latency_ms"].get("p99"), b["latency_ms"].get("p99"))
    row("latency max (ms)", a["latency_ms"].get("max"), b["latency_ms"].get("max"))
    row("bursts detected / sent", f"{a['bursts_detected']}/{a['bursts_sent']}",
        f"{b['bursts_detected']}/{b['bursts_sent']}")
    row("packets expected", a["packets_expected"], b["packets_expected"])
    row("lost", a["lost"], b["lost"])
    row(f"late > {LATE_MS:.0f} ms", a["late_40ms"], b["late_40ms"])
    row("late or lost (%)", a["late_or_lost_40ms_pct"], b["late_or_lost_40ms_pct"])
    row("max transit excess (ms)", a["max_transit_excess_ms"], b["max_transit_excess_ms"])
    row("jitter mean (ms)", a["jitter_ms"].get("mean"), b["jitter_ms"].get("mean"))
    row("bridge late ticks / frames", f"{a['bridge_frames'].get('late', '-')}/{a['bridge_frames'].get('frames', '-')}",
        f"{b['bridge_frames'].get('late', '-')}/{b['bridge_frames'].get('frames', '-')}")
    row("bridge underruns", a["bridge_frames"].get("underruns"), b["bridge_frames"].get("underruns"))
    row("bridge overruns", a["bridge_frames"].get("overruns"), b["bridge_frames"].get("overruns"))
    row("PESQ NB mean", a["pesq_mos_nb"].get("mean"), b["pesq_mos_nb"].get("mean"))
    row("PESQ NB min", a["pesq_mos_nb"].get("min"), b["pesq_mos_nb"].get("min"))
    row("PESQ NB of G.711 alone", a["pesq_mos_nb"].get("g711_only"), b["pesq_mos_nb"].get("g711_only"))
    lines.append("")
    bp, lt = s["bridge_process"], s["loadtest_process"]
    lines.append(f"{p.get('gateway', 'bridge')} process: CPU mean {_fmt(bp['cpu_pct'].get('mean'))} % max {_fmt(bp['cpu_pct'].get('max'))} %, "
                 f"RSS {_fmt(bp['rss_mb']['baseline'])} -> peak {_fmt(bp['rss_mb']['peak'])} MB "
                 f"({_fmt(bp['rss_mb']['per_call'])} MB/call), after {_fmt(bp['rss_mb']['after_calls'])} MB, "
                 f"threads max {bp['threads_max']}, loop lag p50 {_fmt(bp['loop_lag_ms'].get('p50'))} / p99 "
                 f"{_fmt(bp['loop_lag_ms'].get('p99'))} ms")
    gcp = bp.get("gc_pauses") or {}
    if gcp:
        lines.append("bridge GC: " + ", ".join(
            f"gen {g}: {v['count']} x {_fmt(v['mean_ms'])} ms ({v['over_20ms']} > 20 ms, longest <= "
            f"{_fmt(v['longest_at_most_ms'])} ms)" for g, v in gcp.items()))
    row_stall = [s["directions"][k]["stall_ms"] for k in ("app_to_sip", "sip_to_app")]
    lines.append(f"longest stall per call (ms, worst packet beyond the call's best): app->SIP p50 "
                 f"{_fmt(row_stall[0].get('p50'))} max {_fmt(row_stall[0].get('max'))}, SIP->app p50 "
                 f"{_fmt(row_stall[1].get('p50'))} max {_fmt(row_stall[1].get('max'))}; calls with one > 20 ms: "
                 f"{a['calls_stalled_over_20ms']} / {b['calls_stalled_over_20ms']}")
    lines.append(f"load test process: CPU mean {_fmt(lt['cpu_pct'].get('mean'))} %, loop lag p99 "
                 f"{_fmt(lt['loop_lag_ms'].get('p99'))} ms, late send ticks {lt['late_send_ticks']}/{lt['send_ticks']}")
    hog = report.get("cpu_hog")
    if hog:
        lines.append(f"CPU hog: asked for {100 * hog['fraction']:.0f} % of a core while the calls ran, took "
                     f"{_fmt(hog['cpu_pct'])} % over {_fmt(hog['seconds'])} s")
    cl = report.get("cluster")
    if cl:
        beat = cl.get("heartbeat_per_s", {})
        lines.append(f"cluster: {cl['nodes']} bridge nodes (CPU and RSS above: their sum); Redis per call "
                     f"{cl['redis_commands_per_call']} commands, {cl['redis_usec_per_call']} us inside Redis, "
                     f"{cl['redis_cpu_ms_per_call']} ms of its CPU (heartbeats apart: "
                     f"{_fmt(beat.get('calls'))} commands/s, {_fmt(beat.get('usec'))} us/s)")
    lines.append("")
    lines.append("targets:")
    for t in report["targets"]:
        mark = {True: "ok  ", False: "FAIL", None: "n/a "}[t["pass"]]
        lines.append(f"  {mark} {t['name']:<46} {_fmt(t['value']):>9}  (target {t['target']})")
    if report["failures"]:
        lines.append("")
        lines.append("failed calls:")
        for f in report["failures"]:
            lines.append(f"  {f['user']}: {f['reason']}")
    return "\n".join(lines)


def write_chart(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["samples"]
    t = [x["t"] for x in s]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    p = report["params"]
    fig.suptitle(f"bridge loadtest: {p['calls']} calls x {p['duration_s']:g} s, ramp {p['ramp_per_s']:g}/s "
                 f"({report['machine']['cores']} cores, {report['started_at']})")

    ax = axes[0][0]
    ax.step(t, [x["active"] for x in s], where="post", color="black", label="concurrent calls")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("concurrent calls")
    ax2 = ax.twinx()
    ax2.plot(t, [x["bridge_cpu_pct"] for x in s], color="tab:red", label="bridge CPU %")
    ax2.plot(t, [x["loadtest_cpu_pct"] for x in s], color="tab:orange", alpha=0.6, linestyle="--",
             label="load test CPU %")
    ax2.set_ylabel("CPU % (100 = one core)")
    ax.set_title("concurrent calls and CPU")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)

    ax = axes[0][1]
    ax.plot(t, [x["bridge_rss_mb"] for x in s], color="tab:blue", label="bridge RSS (MB)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("RSS (MB)")
    ax2 = ax.twinx()
    ax2.step(t, [x["active"] for x in s], where="post", color="black", alpha=0.4, label="concurrent calls")
    ax2.set_ylabel("concurrent calls")
    ax.set_title("bridge memory")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)

    ax = axes[1][0]
    colors = {"app_to_sip": "tab:green", "sip_to_app": "tab:purple"}
    for d in ("app_to_sip", "sip_to_app"):
        xs, ys = [], []
        for c in report["calls"]:
            dd = c.get(d) or {}
            for tt, lat in zip(dd.get("latency_t_s", []), dd.get("latencies_ms", [])):
                xs.append(tt)
                ys.append(lat)
        summ = report["summary"]["directions"][d]["latency_ms"]
        label = f"{d.replace('_', ' ')} (p50 {_fmt(summ.get('p50'))}, p99 {_fmt(summ.get('p99'))} ms)"
        ax.scatter(xs, ys, s=8, color=colors[d], alpha=0.6, label=label)
    ax.set_xlabel("time of the burst (s)")
    ax.set_ylabel("added one-way latency (ms)")
    ax.set_title("latency per direction (burst onsets)")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    bins = np.arange(0, (max(t) if t else 1) + 1, 1.0)
    for d in ("app_to_sip", "sip_to_app"):
        late_t = [x for c in report["calls"] for x in (c.get(d) or {}).get("late_times_s", [])]
        counts, _ = np.histogram(late_t, bins=bins) if len(bins) > 1 else ([], [])
        ax.plot(bins[:-1], counts, color=colors[d], label=f"{d.replace('_', ' ')}: "
                f"{report['summary']['directions'][d]['late_40ms']} late, "
                f"{report['summary']['directions'][d]['lost']} lost")
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"frames later than {LATE_MS:.0f} ms per second")
    ax.set_title("late frames")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    from . import config as _config
    _parser = argparse.ArgumentParser(prog="python -m bridge.loadtest", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    _parser.add_argument("-c", "--config", default=os.environ.get("BRIDGE_CONFIG", "config.yaml"),
                         help="config file (default: config.yaml; env BRIDGE_CONFIG)")
    add_arguments(_parser)
    _args = _parser.parse_args()
    try:
        _cfg = _config.load(_args.config)
    except _config.ConfigError as _exc:
        print(f"bridge loadtest: configuration errors:\n{_exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
        sys.exit(uvloop.run(main(_args, _cfg)))
    except KeyboardInterrupt:
        sys.exit(130)
