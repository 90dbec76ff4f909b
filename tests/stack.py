"""The whole system for end-to-end tests: `bridge run` as a subprocess (as systemd starts it)
with the sample config moved to free ports, a Kamailio with the bridge's account, baresips."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path
from typing import Callable

import aiohttp
import pytest
import yaml

from bridge import config, tls, token
from bridge.audio import RATE, tone_analysis
from conftest import free_port
from parties import Party
from testbed import wav_dominant_frequency

ROOT = Path(__file__).resolve().parent.parent
BRIDGE_USER, BRIDGE_PW = "bridge", "bridge-development-password"


def stack_config(tmp_path: Path, kamailio_port: int, edit: Callable[[dict], None] | None = None) -> Path:
    """config.yaml as shipped, on free ports, pointed at the test Kamailio; `edit` may change it."""
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    web, notify = free_port(), free_port()
    data["log_level"] = "debug"
    data["platform"]["listen"] = f"127.0.0.1:{web}"
    data["platform"]["public_url"] = f"http://127.0.0.1:{web}"
    data["platform"]["services"]["demo-desk"]["push_url"] = f"http://127.0.0.1:{notify}/v1/notifications"
    data["notifications"]["listen"] = f"127.0.0.1:{notify}"
    data["sip"].update({"registrar": f"127.0.0.1:{kamailio_port}", "listen": "127.0.0.1:0",
                        "keepalive": "1s", "register_expires": "10s", "rtp_ports": "33000-33999",
                        "journal": str(tmp_path / "sip-dialogs.jsonl")})
    data["bridge"]["drain_timeout"] = "3s"
    if edit:
        edit(data)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Daemon:
    """`bridge run -c FILE` in the background; `ready()` waits for /healthz to say ok."""

    def __init__(self, cfg_path: Path) -> None:
        self.path = cfg_path
        self.cfg = config.load(cfg_path, env={})
        self.log_path = cfg_path.parent / "daemon.log"
        self.proc: subprocess.Popen | None = None
        n = self.cfg.notifications
        assert n is not None
        self.admin = f"{'https' if n.tls else 'http'}://{n.host}:{n.port}"
        self.platform_url = self.cfg.platform.public_url
        # a TLS daemon of the tests has a private CA: the one its platform trusts for pushes
        ca = self.cfg.platform.callback_ca
        self.ssl: ssl.SSLContext | bool = tls.client_context(ca) if ca else True

    def start(self, wrapper: list[str] | None = None) -> "Daemon":
        """Start `bridge run`, through `wrapper` (a command that execs the rest) if given."""
        exe = shutil.which("bridge") or pytest.fail("the `bridge` command is not installed: run tests/run")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "DEMO_"))}
        self.proc = subprocess.Popen([*(wrapper or []), exe, "run", "-c", str(self.path)],
                                     stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, env=env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_log(self, text: str, timeout: float = 5.0) -> None:
        """Until `text` shows up in the daemon's log."""
        async with asyncio.timeout(timeout):
            while text not in self.log():
                await asyncio.sleep(0.1)

    async def health(self) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as http:
            async with http.get(self.admin + "/healthz", ssl=self.ssl) as r:
                return r.status, await r.json()

    async def ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"bridge run exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                status, body = await self.health()
                if status == 200:
                    return
            except aiohttp.ClientError:
                body = {}
            if time.monotonic() > deadline:
                pytest.fail(f"bridge not healthy within {timeout} s: {body}\n{self.log()[-3000:]}")
            await asyncio.sleep(0.1)

    def token(self, user: str, service: str = "demo-app") -> str:
        s = self.cfg.platform.services[service]
        return token.issue(token.ServiceKey(s.id, s.api_key, s.api_secret), user)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as http:
            async with http.get(self.admin + "/metrics", ssl=self.ssl) as r:
                return await r.text()


# --- fixtures for end-to-end test modules (import them with the testbed fixtures) ------------

@pytest.fixture
def kamailio(kamailio_factory):
    """The PBX, with the bridge's account next to the desk phones 2001-2004 (407 on INVITE)."""
    from testbed import DEFAULT_USERS
    return kamailio_factory({**DEFAULT_USERS, BRIDGE_USER: BRIDGE_PW}, invite_auth=True)


@pytest.fixture
async def start_bridge(tmp_path, kamailio):
    """start_bridge(edit=None, wrapper=None) -> a healthy `bridge run` on the sample config (edited by
    `edit`, started through `wrapper`: see Daemon.start)."""
    daemons: list[Daemon] = []

    async def start(edit=None, wrapper: list[str] | None = None) -> Daemon:
        d = Daemon(stack_config(tmp_path, kamailio.port, edit)).start(wrapper)
        daemons.append(d)
        await d.ready()
        return d

    yield start
    for d in daemons:
        d.stop()
        print(f"===== bridge log =====\n{d.log()[-4000:]}")


# --- a real call, to show a daemon still works (after an attack, a restart...) -----------------

async def call_desk_phone(bridge: Daemon) -> Party:
    """alice (playing 1000 Hz) calls desk phone 2001 through the bridge; returns once connected."""
    alice = Party(bridge.platform_url, "alice", tone=1000)
    await alice.make_call(("desk-2001", "demo-desk"), bridge.token("alice"))
    await asyncio.wait_for(alice.events.connected.wait(), 15)
    return alice


async def real_call_works(bridge: Daemon, phone) -> None:
    """alice (1000 Hz) calls desk phone 2001 (700 Hz): each hears the other, then alice hangs up."""
    alice = await call_desk_phone(bridge)
    mark = phone.mark()
    await asyncio.sleep(4)
    freq, snr = tone_analysis(alice.heard.samples[-int(1.5 * RATE):])
    assert abs(freq - 700) < 14 and snr > 20, ("the app heard", freq, snr)
    await alice.call.end_call()
    await asyncio.to_thread(phone.wait_closed, 5, mark)
    freq, snr = await asyncio.to_thread(wav_dominant_frequency, phone.latest_recording("dec"), 1.0)
    assert abs(freq - 1000) < 20 and snr > 20, ("the phone heard", freq, snr)
