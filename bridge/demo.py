"""`bridge demo`: the whole system on one machine, for a first look.

Starts a Kamailio PBX on the config's registrar address (users: the bridge's account, desk
phones 2001 and 2002), a baresip desk phone 2001 that answers by itself, plays a 700 Hz tone
and records what it hears, and the daemon. Ctrl-C stops everything.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

from .config import Config

PBX_CFG = Path(__file__).with_name("pbx") / "kamailio.cfg"
PHONES = {"2001": "2001-demo", "2002": "2002-demo"}


class DemoError(Exception):
    pass


def _need(binary: str, package: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if path is None:
        raise DemoError(f"{binary} is not installed: apt-get install -y {package}")
    return path


def _free_udp(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


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


def _start(argv: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=cwd, start_new_session=True)

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)      # Kamailio's workers too
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    atexit.register(stop)
    return proc


def _kamailio(cfg: Config, work: Path) -> None:
    assert cfg.sip is not None
    host, port = cfg.sip.registrar_host, cfg.sip.registrar_port
    if not _free_udp(host, port):
        raise DemoError(f"something already listens on {host}:{port} (a system Kamailio? "
                        "`systemctl stop kamailio`), or change sip.registrar in the config")
    users = {cfg.sip.auth_username: cfg.sip.password, **PHONES}
    lines = "\n".join(f'\t$sht(users=>{u}) = "{p}";' for u, p in users.items())
    conf = work / "kamailio.cfg"
    conf.write_text(re.sub(r"(?m)^@@USERS@@$", lambda _: lines, PBX_CFG.read_text()))
    proc = _start([_need("kamailio", "kamailio"), "-f", str(conf), "-DD", "-E", "-l", f"udp:{host}:{port}",
                   "-l", f"tcp:{host}:{port}", "-Y", str(work), "-P", str(work / "kamailio.pid"), "-w", str(work),
                   "-m", "32", "-M", "8"], work / "kamailio.log", work)
    for _ in range(50):
        if _options_ok(host, port):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise DemoError(f"Kamailio did not start; see {work / 'kamailio.log'}")


def _baresip(cfg: Config, work: Path) -> Path:
    assert cfg.sip is not None
    exe = _need("baresip", "baresip")
    conf, rec = work / "baresip", work / "recordings"
    conf.mkdir(exist_ok=True)
    rec.mkdir(exist_ok=True)
    source = work / "tone-700Hz.wav"
    t = np.arange(8000 * 600) / 8000
    with wave.open(str(source), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((0.2 * 32767 * np.sin(2 * np.pi * 700 * t)).astype("<i2").tobytes())
    host, port = cfg.sip.registrar_host, cfg.sip.registrar_port
    (conf / "config").write_text(f"""\
sip_listen {host}:{5070 if port != 5070 else 5072}
net_interface {host}
audio_source aufile,{source}
audio_player aubridge,demo
audio_alert aubridge,demo
ausrc_srate 8000
auplay_srate 8000
rtp_ports 20000-20998
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module aubridge.so
module sndfile.so
module_app account.so
module_app menu.so
snd_path {rec}
""")
    (conf / "accounts").write_text(f'"Desk 2001" <sip:2001@{host}:{port}>;auth_pass={PHONES["2001"]};'
                                   "regint=60;answermode=auto;audio_codecs=PCMU,PCMA\n")
    _start([exe, "-f", str(conf)], work / "baresip.log", work)
    return rec


def run(cfg: Config) -> int:
    from . import daemon
    if cfg.sip is None or cfg.bridge is None:
        print("bridge demo: the config needs the sip and bridge sections (see config.yaml)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bridge-demo-"))
    try:
        _kamailio(cfg, work)
        rec = _baresip(cfg, work)
    except DemoError as exc:
        print(f"bridge demo: {exc}", file=sys.stderr)
        return 2
    print(f"""
bridge demo is up: Kamailio on {cfg.sip.registrar_host}:{cfg.sip.registrar_port}, desk phone 2001 (answers by itself,
plays 700 Hz, records into {rec}), and the daemon with {cfg.path}.
In another terminal (. .venv/bin/activate):
  bridge dial -c {cfg.path} --from alice@demo-app --to desk-2001@demo-desk --tone 1000 --record alice.wav --seconds 5
Logs: {work}. Ctrl-C stops everything.
""", flush=True)
    daemon.run(cfg)
    return 0
