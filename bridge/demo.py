"""`bridge demo`: the whole system on one machine, for a first look, both directions.

Starts a Kamailio PBX on the config's registrar address (users: the bridge's account, desk
phones 2001 and 2002; 7NNN is routed to the bridge), a baresip desk phone 2001 that answers by
itself, plays a 700 Hz tone and records what it hears, and the daemon; prints how to call
app -> desk (`bridge dial`) and desk -> app (`bridge phone 2001 dial 7001`, or `dial 7001`
typed on the demo's console) once the bridge is registered.

What it promises:
- A registrar port that is taken (Debian's `kamailio` service holds 5060 once installed) is
  said plainly, and the demo's PBX takes the next free port instead (the daemon follows).
- Ctrl-C drains the calls and says so (how many, for how long); a second Ctrl-C ends them at
  once. Kamailio and baresip end with the demo, `kill -9` included (`bridge.supervisor`), and
  the work directory (logs, recordings, ~10 MB) is removed unless `--keep`.
- A state file (`$XDG_STATE_HOME/bridge/demo-<config>.json`) names the running demo: `bridge
  phone` finds the desk phone through it, a second demo of the same config is refused, and a
  start after a demo that died cleans up what it left (processes, work directory) by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Callable

import numpy as np

from . import deskphone, supervisor
from .config import Config
from .deskphone import DeskPhone, PhoneError

PBX_CFG = Path(__file__).with_name("pbx") / "kamailio.cfg"
PHONES = {"2001": "2001-demo", "2002": "2002-demo"}
PHONE = "2001"                       # the desk phone the demo runs (2002 is left for `bridge loadtest`)
PHONE_TONE_HZ = 700
SPARE_PORTS = range(5062, 5100, 2)   # where the PBX goes when the registrar port is taken
REGISTER_WAIT = 15.0


class DemoError(Exception):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (logs, the phone's recordings) after the demo stops")
    parser.add_argument("--sip-trace", action="store_true", help="log every SIP message the bridge sends and receives")


# --- the state file: which demo runs for a config ---------------------------------------------

def state_path(cfg_path: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    digest = hashlib.sha1(str(Path(cfg_path).resolve()).encode()).hexdigest()[:10]
    return Path(base) / "bridge" / f"demo-{digest}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    status = Path(f"/proc/{pid}/status")
    with contextlib.suppress(OSError):
        return "\nState:\tZ" not in status.read_text()
    return True


def read_state(cfg_path: str) -> dict | None:
    """The running demo of this config (pid, work, pbx, phone), or None."""
    try:
        state = json.loads(state_path(cfg_path).read_text())
        return state if _alive(int(state["pid"])) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _clean_after_dead_demo(path: Path) -> None:
    """A demo that died (kill -9 and its watchdog too) left a state file: end what it left."""
    try:
        state = json.loads(path.read_text())
        pid, work = int(state["pid"]), Path(state["work"])
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)
        return
    if _alive(pid):
        raise DemoError(f"a demo of this config is already running (pid {pid}); stop it first (Ctrl-C "
                        f"in its terminal, or `kill {pid}`)")
    if work.is_absolute() and work.name.startswith("bridge-demo-"):
        left = supervisor.leftovers(work)
        supervisor.end(left)
        shutil.rmtree(work, ignore_errors=True)
        if left:
            print(f"bridge demo: ended {len(left)} process(es) the last demo (pid {pid}) left behind",
                  file=sys.stderr)
    path.unlink(missing_ok=True)


# --- the parts ------------------------------------------------------------------------------

def _need(binary: str, package: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if path is None:
        raise DemoError(f"{binary} is not installed: apt-get install -y {package}")
    return path


def _port_free(host: str, port: int, tcp: bool = True) -> bool:
    kinds = (socket.SOCK_DGRAM, socket.SOCK_STREAM) if tcp else (socket.SOCK_DGRAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _free_port(host: str, span: int = 1) -> int:
    """A port P with P .. P+span-1 free for UDP and TCP."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if all(_port_free(host, p) for p in range(port, port + span)):
            return port
    raise DemoError(f"no free port on {host}")


def _pbx_port(host: str, port: int) -> int:
    """The configured registrar port if free, else the first free spare one (said plainly)."""
    if _port_free(host, port):
        return port
    for spare in SPARE_PORTS:
        if _port_free(host, spare):
            print(f"bridge demo: {host}:{port} is taken by another program (Debian's kamailio service takes "
                  f"5060 once the package is installed: `systemctl disable --now kamailio` frees it); the "
                  f"demo's PBX listens on {host}:{spare} instead", file=sys.stderr, flush=True)
            return spare
    raise DemoError(f"{host}:{port} and the spare ports {SPARE_PORTS.start}-{SPARE_PORTS.stop - 1} are "
                    "taken; change sip.registrar in the config")


def _options_ok(host: str, port: int) -> bool:
    msg = (f"OPTIONS sip:{host}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:9;rport;branch=z9hG4bKdemo{time.time_ns()}\r\n"
           f"From: <sip:demo@{host}>;tag=1\r\nTo: <sip:{host}>\r\nCall-ID: demo{time.time_ns()}\r\n"
           "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        s.sendto(msg, (host, port))
        try:
            return s.recv(4096).startswith(b"SIP/2.0 200")
        except OSError:
            return False


def _kamailio(sup: supervisor.Supervisor, cfg: Config, port: int) -> None:
    assert cfg.sip is not None
    host, work = cfg.sip.registrar_host, sup.work
    users = {cfg.sip.auth_username: cfg.sip.password, **PHONES}
    lines = "\n".join(f'\t$sht(users=>{u}) = "{p}";' for u, p in users.items())
    conf = work / "kamailio.cfg"
    conf.write_text(re.sub(r"(?m)^@@USERS@@$", lambda _: lines, PBX_CFG.read_text()))
    proc = sup.start([_need("kamailio", "kamailio"), "-f", str(conf), "-DD", "-E", "-l", f"udp:{host}:{port}",
                      "-l", f"tcp:{host}:{port}", "-Y", str(work), "-P", str(work / "kamailio.pid"),
                      "-w", str(work), "-m", "32", "-M", "8"], work / "kamailio.log")
    for _ in range(50):
        if _options_ok(host, port):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise DemoError(f"Kamailio did not start; see {work / 'kamailio.log'} (--keep keeps it)")


def _tone(path: Path, hz: float, seconds: int = 600) -> None:
    t = np.arange(8000 * seconds) / 8000
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((0.2 * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes())


def _baresip(sup: supervisor.Supervisor, host: str, pbx_port: int) -> tuple[int, Path]:
    """Desk phone PHONE; returns its ctrl_tcp port and its recordings directory."""
    exe = _need("baresip", "baresip")
    conf, rec = sup.work / "baresip", sup.work / "recordings"
    conf.mkdir()
    rec.mkdir()
    source = sup.work / f"tone-{PHONE_TONE_HZ}Hz.wav"
    _tone(source, PHONE_TONE_HZ)
    sip_port, ctrl_port = _free_port(host, span=2), _free_port(host)       # baresip takes TLS on port + 1
    (conf / "config").write_text(f"""\
sip_listen {host}:{sip_port}
net_interface {host}
audio_source aufile,{source}
audio_player aubridge,demo
audio_alert aubridge,demo
ausrc_srate 8000
auplay_srate 8000
rtp_ports 12000-12998
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module aubridge.so
module sndfile.so
module_app account.so
module_app menu.so
module_app ctrl_tcp.so
ctrl_tcp_listen {host}:{ctrl_port}
snd_path recordings
""")
    (conf / "accounts").write_text(f'"Desk {PHONE}" <sip:{PHONE}@{host}:{pbx_port}>;auth_pass={PHONES[PHONE]};'
                                   "regint=60;answermode=auto;audio_codecs=PCMU,PCMA\n")
    (conf / "contacts").write_text("")
    # snd_path relative to its working directory: sndfile cuts a file name beyond 128 bytes (".wav" lost)
    sup.start([exe, "-f", str(conf)], sup.work / "baresip.log")
    return ctrl_port, rec


# --- running --------------------------------------------------------------------------------

def run(cfg: Config, args: argparse.Namespace) -> int:
    from . import daemon
    if cfg.sip is None or cfg.bridge is None:
        print("bridge demo: the config needs the sip and bridge sections (see config.yaml)", file=sys.stderr)
        return 2
    state = state_path(cfg.path)
    try:
        state.parent.mkdir(parents=True, exist_ok=True)
        if state.exists():
            _clean_after_dead_demo(state)
    except (DemoError, OSError) as exc:
        print(f"bridge demo: {exc}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bridge-demo-"))
    sup = supervisor.Supervisor(work)
    try:
        host = cfg.sip.registrar_host
        port = _pbx_port(host, cfg.sip.registrar_port or 5060)
        cfg = dataclasses.replace(cfg, sip=dataclasses.replace(cfg.sip, registrar_port=port))
        state.write_text(json.dumps({"pid": os.getpid(), "work": str(work), "pbx": [host, port]}))
        _kamailio(sup, cfg, port)
        ctrl, rec = _baresip(sup, host, port)
        console = Console(cfg, (host, ctrl), (host, port), rec, work, args.keep)
        console.on_relay = lambda relay_port: state.write_text(json.dumps({
            "pid": os.getpid(), "work": str(work), "pbx": [host, port],
            "phone": {"ext": PHONE, "ctrl": [host, relay_port]}}))
        daemon.run(cfg, console.run)
        return 0
    except DemoError as exc:
        print(f"bridge demo: {exc}", file=sys.stderr)
        return 2
    finally:
        sup.close(keep_work=args.keep)
        with contextlib.suppress(OSError, ValueError, KeyError):
            if json.loads(state.read_text())["pid"] == os.getpid():
                state.unlink()
        print(f"bridge demo: stopped{f'; kept {work}' if args.keep else ''}", file=sys.stderr, flush=True)


class Console:
    """Beside the daemon: waits for the registrations, prints the banner, shows the desk phone's
    calls, and takes commands typed on the demo's terminal (dial, hangup, help, quit)."""

    def __init__(self, cfg: Config, ctrl: tuple[str, int], pbx: tuple[str, int], rec: Path, work: Path,
                 keep: bool) -> None:
        self.cfg, self.ctrl, self.pbx, self.rec, self.work, self.keep = cfg, ctrl, pbx, rec, work, keep
        self.phone: DeskPhone | None = None
        self.relay: deskphone.Relay | None = None
        self.on_relay: Callable[[int], None] = lambda port: None    # where `bridge phone` finds the phone

    def say(self, text: str) -> None:
        print(text, flush=True)

    async def run(self, d) -> None:
        try:
            self.phone = await self._connect()
        except PhoneError as exc:
            self.say(f"bridge demo: {exc}")
            return
        self.relay = deskphone.Relay(self.phone)
        self.on_relay(await self.relay.start(self.ctrl[0]))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REGISTER_WAIT
        while loop.time() < deadline:
            if d.ua is not None and d.ua.registration.state == "registered" and await self.phone.registered():
                break
            await asyncio.sleep(0.1)
        else:
            reg = d.ua.registration if d.ua is not None else None
            self.say(f"bridge demo: not registered after {REGISTER_WAIT:.0f} s (bridge: "
                     f"{reg.state + ' ' + reg.detail if reg else '-'}); see the log above and {self.work}")
        self.say(self.banner())
        tasks = [asyncio.ensure_future(self._show_calls())]
        if sys.stdin.isatty():
            tasks.append(asyncio.ensure_future(self._commands(d)))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await self.relay.close()
            await self.phone.close()

    async def _connect(self) -> DeskPhone:
        for _ in range(50):
            with contextlib.suppress(PhoneError):
                return await DeskPhone.connect(*self.ctrl)
            await asyncio.sleep(0.1)
        raise PhoneError(f"the desk phone's control socket {self.ctrl[0]}:{self.ctrl[1]} did not open; "
                         f"see {self.work / 'baresip.log'}")

    def banner(self) -> str:
        cfg, c = self.cfg, self.cfg.path
        assert cfg.sip is not None
        return f"""
bridge demo is up:
  PBX         Kamailio on {self.pbx[0]}:{self.pbx[1]} (the bridge's account, desk phones 2001 and 2002; 7NNN goes to the bridge)
  desk phone  {PHONE}: answers by itself, plays {PHONE_TONE_HZ} Hz, records what it hears into {self.rec}
  bridge      the daemon with {c}; the browser dialer is at {cfg.platform.public_url}/dialer

Try it, in another terminal (. .venv/bin/activate):
  app -> desk:  bridge dial -c {c} --from alice@demo-app --to desk-{PHONE}@demo-desk --tone 1000 --record alice.wav --seconds 5
  desk -> app:  bridge answer -c {c} --as agent-001@demo-app --tone 440 --record agent.wav
                then: bridge phone -c {c} {PHONE} dial 7001   (or type `dial 7001` here)
Commands here: dial NUMBER, hangup, help, quit. Ctrl-C stops everything (a second Ctrl-C ends calls at once).
Logs: {self.work}{'' if self.keep else ' (removed at exit; --keep keeps it)'}.
"""

    async def _show_calls(self) -> None:
        assert self.phone is not None
        while True:
            event = await self.phone.events.get()
            if event is None:
                self.say(f"desk phone {PHONE}: its control socket closed (see {self.work / 'baresip.log'})")
                return
            if self.relay is not None:
                self.relay.broadcast(event)
            line = deskphone.describe(event)
            if line:
                self.say(f"desk phone {PHONE}: {line}")

    async def _commands(self, d) -> None:
        assert self.phone is not None
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str] = asyncio.Queue()
        fd = sys.stdin.fileno()

        def readable() -> None:
            data = os.read(fd, 1024)
            if not data:                           # the terminal closed
                loop.remove_reader(fd)
            lines.put_nowait(data.decode(errors="replace") if data else "quit")
        loop.add_reader(fd, readable)
        try:
            while True:
                words = (await lines.get()).split()
                if not words:
                    continue
                try:
                    await self._command(d, words)
                except PhoneError as exc:
                    self.say(f"desk phone {PHONE}: {exc}")
        finally:
            loop.remove_reader(fd)

    async def _command(self, d, words: list[str]) -> None:
        assert self.phone is not None
        if words[0] == "dial" and len(words) == 2 and deskphone.NUMBER.fullmatch(words[1]):
            reply = await self.phone.command("dial", f"sip:{words[1]}@{self.pbx[0]}:{self.pbx[1]}")
            self.say(f"desk phone {PHONE} dials {words[1]}" if reply.get("ok") else
                     f"desk phone {PHONE} cannot dial: {reply.get('data', '')}")
        elif words == ["hangup"]:
            await self.phone.command("hangup")
        elif words in (["quit"], ["exit"]):
            d.stop()
        else:
            self.say("commands: dial NUMBER (7001 rings app user agent-001), hangup, quit")
