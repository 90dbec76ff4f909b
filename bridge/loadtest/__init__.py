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

Modules: `program` (what each call plays, and its senders), `run` (the run: the calls placed from
the app side), `record` (what one call recorded), `farend` (the far end answering the calls),
`sampler` (the samples every second, the progress line), `probe` (the process under test),
`analysis` (per call and direction), `measures` (one direction's loss, lateness, latency, PESQ),
`summary` (the JSON report: the summary over the calls, its targets, the machine), `report`
(table and chart); here the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .. import ice
from ..config import Config
from .program import LoadTestError, MIN_DURATION
from .report import format_table, write_chart
from .run import LoadTest

log = logging.getLogger("bridge.loadtest")

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
