"""The daemon: one uvloop process serving the platform (and, as they land, the bridge parts).

Signals: SIGTERM/SIGINT stop taking new calls and end the process; systemd is told READY,
STATUS (active calls) and WATCHDOG.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop
from aiohttp import web

from . import ice, systemd
from .config import Config
from .platform import Platform

log = logging.getLogger("bridge.daemon")


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.platform = Platform(cfg.platform) if cfg.platform.embedded else None
        self._stop = asyncio.Event()

    def status(self) -> str:
        calls = self.platform.active_calls if self.platform else 0
        return f"{calls} active calls"

    async def serve(self) -> None:
        ice.use_host_addresses(self.cfg.webrtc.ice_addresses)
        app = web.Application()
        if self.platform is not None:
            self.platform.add_routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        p = self.cfg.platform
        try:
            await web.TCPSite(runner, p.host, p.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise SystemExit(f"bridge: cannot listen on {p.host}:{p.port}: {exc.strerror}") from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info("platform listening on %s:%d (public URL %s)", p.host, p.port, p.public_url)
        systemd.notify("READY=1", f"STATUS={self.status()}")
        watchdog = asyncio.ensure_future(systemd.watchdog())
        status = asyncio.ensure_future(self._report_status())
        await self._stop.wait()
        log.info("stopping")
        systemd.notify("STOPPING=1")
        watchdog.cancel()
        status.cancel()
        await runner.cleanup()

    async def _report_status(self) -> None:
        while True:
            await asyncio.sleep(5)
            systemd.notify(f"STATUS={self.status()}")


def run(cfg: Config) -> None:
    uvloop.run(Daemon(cfg).serve())
