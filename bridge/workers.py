"""`bridge run --workers N`: N nodes of a cluster on one host from one config, one process each.

A Python process uses one core; N workers use N. The parent starts `bridge run -c FILE --worker
K/N` for K = 0 .. N-1, and worker K serves the config with its own:

    sip.listen             the port + K      (Kamailio's dispatcher list names port, port + 1, ...)
    notifications.listen   the port + K      (the platform's push_url list names each)
    sip.rtp_ports          the K-th of N equal slices of the range
    sip.journal            <journal>.K
    cluster.node_id        <node_id>-K

Everything else is shared. It needs a `cluster:` section and no embedded platform
(`platform.embedded: false`, with `bridge platform` beside it): nodes share their state through
Redis, and one platform serves them all. The parent passes SIGTERM, SIGINT and SIGHUP on to every
worker (each drains its own calls), starts again a worker that ends while it is not stopping
(the new one waits out the old one's lease), stops them all if a worker exits with an error
within `EARLY` seconds of its start (a config or port problem, which a restart would repeat),
and exits when every worker has, with the worst status. A worker dies with the parent (even a
`kill -9` of it: PR_SET_PDEATHSIG). systemd: one unit per host running
`bridge run --workers N` (READY comes from the parent once the workers started; no WatchdogSec:
the workers' watchdogs are theirs), or `bridge@.service`, one unit per node.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time

from . import systemd
from .config import Config
from .supervisor import die_with_parent

log = logging.getLogger("bridge.workers")

EARLY = 5.0                 # a worker that exits with an error this soon after its start stops all


def problems(cfg: Config, n: int) -> list[str]:
    """Why `cfg` cannot run as `n` workers (empty: it can)."""
    found = []
    if cfg.bridge is None or cfg.sip is None or cfg.notifications is None:
        found.append("the config has no bridge: there is nothing to run as workers")
    if cfg.cluster is None:
        found.append("workers are nodes of a cluster: add a cluster: section (Redis)")
    if cfg.platform.embedded:
        found.append("each worker would embed its own platform: set platform.embedded: false and run "
                     "`bridge platform` beside them")
    if cfg.sip is not None and (cfg.sip.rtp_high - cfg.sip.rtp_low + 1) // n < 2:
        found.append(f"sip.rtp_ports {cfg.sip.rtp_low}-{cfg.sip.rtp_high} is too small for {n} slices")
    return found


def worker_config(cfg: Config, k: int, n: int) -> Config:
    """Worker `k` of `n`: its own SIP and notification ports, RTP slice, journal and node id."""
    sip, notes, cluster = cfg.sip, cfg.notifications, cfg.cluster
    assert sip is not None and notes is not None and cluster is not None and 0 <= k < n
    width = (sip.rtp_high - sip.rtp_low + 1) // n
    low = sip.rtp_low + k * width
    return dataclasses.replace(
        cfg,
        sip=dataclasses.replace(sip, bind_port=sip.bind_port + k if sip.bind_port else 0,
                                rtp_low=low, rtp_high=low + width - 1,
                                journal=f"{sip.journal}.{k}" if sip.journal else None),
        notifications=dataclasses.replace(notes, port=notes.port + k if notes.port else 0),
        cluster=dataclasses.replace(cluster, node_id=f"{cluster.node_id}-{k}"))


def run(path: str, n: int, log_level: str | None, sip_trace: bool = False) -> int:
    """Start and watch the `n` workers of the config at `path`; their worst exit status."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    extra = (["--log-level", log_level] if log_level else []) + (["--sip-trace"] if sip_trace else [])

    def start(k: int) -> tuple[subprocess.Popen, float]:
        cmd = [sys.executable, "-m", "bridge", "run", "-c", path, "--worker", f"{k}/{n}", *extra]
        return subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent), time.monotonic()

    workers = {k: start(k) for k in range(n)}
    stopping = False

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = stopping or sig != signal.SIGHUP
        for proc, _ in workers.values():
            if proc.poll() is None:
                proc.send_signal(sig)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    log.info("started %d workers of %s (pids %s)", n, path, " ".join(str(p.pid) for p, _ in workers.values()))
    systemd.notify("READY=1", f"STATUS={n} workers")
    worst = 0
    while workers:
        time.sleep(0.2)
        for k, (proc, since) in list(workers.items()):
            status = proc.poll()
            if status is None:
                continue
            if stopping:
                workers.pop(k)
                worst = max(worst, status if status > 0 else 1 if status < 0 else 0)
            elif status > 0 and time.monotonic() - since < EARLY:
                log.error("worker %d failed at its start (status %d): stopping every worker", k, status)
                worst = status if status > 0 else 1
                forward(signal.SIGTERM, None)
                workers.pop(k)
            else:
                log.warning("worker %d ended (status %d): starting it again", k, status)
                workers[k] = start(k)
    return worst
