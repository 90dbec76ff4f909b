"""`bridge demo` as a user drives it, in a pseudo-terminal (pexpect): calls both ways with the
tones checked at both ends, Ctrl-C during a call (what it says; the second one stops at once),
`kill -9` and a next start that needs no clean-up, a registrar port that is taken; and after it
all, no process and no temporary file left behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pexpect
import pytest

from bridge.audio import RATE, read_wav, tone_analysis
from bridge.supervisor import leftovers
from conftest import free_port
from stack import stack_config

BRIDGE = shutil.which("bridge") or pytest.fail("the `bridge` command is not installed: run tests/run")


class Demo:
    """The user's environment: a config on free ports, a private TMPDIR and state directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        self.state = tmp_path / "state"

        def edit(d: dict) -> None:
            d["log_level"] = "info"
            d["bridge"]["drain_timeout"] = "30s"
        self.cfg = stack_config(tmp_path, free_port(), edit)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "DEMO_"))}
        self.env.update(TMPDIR=str(self.tmp), XDG_STATE_HOME=str(self.state))
        self.children: list[pexpect.spawn] = []
        self.banner = ""

    def start(self) -> pexpect.spawn:
        child = pexpect.spawn(BRIDGE, ["demo", "-c", str(self.cfg)], cwd=str(self.base), env=self.env,
                              encoding="utf-8", timeout=40, dimensions=(50, 250))
        child.logfile_read = open(self.base / f"demo-{len(self.children)}.out", "w")
        self.children.append(child)
        child.expect("bridge demo is up:")
        child.expect(r"Logs: \S+")
        self.banner = child.before
        return child

    def output(self, child: pexpect.spawn) -> str:
        """What the demo printed so far."""
        child.logfile_read.flush()
        return Path(child.logfile_read.name).read_text()

    def running(self) -> dict:
        (state,) = self.state.glob("bridge/demo-*.json")
        return json.loads(state.read_text())

    def bridge(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([BRIDGE, *args[:1], "-c", str(self.cfg), *args[1:]], capture_output=True, text=True,
                              env=self.env, cwd=self.base, timeout=timeout)

    def answer(self, user: str, *extra: str) -> subprocess.Popen:
        proc = subprocess.Popen([BRIDGE, "answer", "-c", str(self.cfg), "--as", f"{user}@demo-app", *extra],
                                stdout=subprocess.PIPE, text=True, env=self.env, cwd=self.base)
        assert proc.stdout is not None
        assert "waiting for calls" in proc.stdout.readline()
        return proc

    def nothing_left(self) -> None:
        deadline = time.monotonic() + 5
        while leftovers(self.tmp) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert leftovers(self.tmp) == [], [Path(f"/proc/{p}/cmdline").read_bytes() for p in leftovers(self.tmp)]
        assert list(self.tmp.iterdir()) == []
        assert list(self.state.glob("bridge/demo-*.json")) == []

    def close(self) -> None:
        for child in self.children:
            if child.isalive():
                child.kill(signal.SIGKILL)
            child.close(force=True)
        deadline = time.monotonic() + 3            # the watchdog's work, should a test have failed
        while leftovers(self.tmp) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in leftovers(self.tmp):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def demo(tmp_path):
    d = Demo(tmp_path)
    yield d
    d.close()


def tone_of(path: Path, seconds: float = 2.0) -> float:
    samples = read_wav(str(path))
    assert len(samples) > seconds * RATE, (path, len(samples))
    found, snr = tone_analysis(samples[-int(seconds * RATE):])
    assert snr > 20, (path, found, snr)
    return found


def heard_by_the_phone(rec: Path, since: float) -> Path:
    """The desk phone's recording of what it heard in the call that started after `since`."""
    deadline = time.monotonic() + 5
    while True:                  # sndfile names the file *-dec.wav when the call is over
        recs = [p for p in rec.glob("*-dec.wav") if p.stat().st_mtime >= since]
        if recs or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert recs, sorted(p.name for p in rec.iterdir())
    return max(recs, key=lambda p: p.stat().st_mtime)


def test_both_directions_then_ctrl_c_during_a_call(demo):
    child = demo.start()
    rec = Path(demo.running()["work"]) / "recordings"
    c = demo.cfg
    for line in (f"app -> desk:  bridge dial -c {c} --from alice@demo-app --to desk-2001@demo-desk",
                 f"desk -> app:  bridge answer -c {c} --as agent-001@demo-app",
                 f"then: bridge phone -c {c} 2001 dial 7001   (or type `dial 7001` here)"):
        assert line in demo.banner, demo.banner

    # app -> desk phone, as the banner shows it
    t0 = time.time()
    dial = demo.bridge("dial", "--from", "alice@demo-app", "--to", "desk-2001@demo-desk", "--tone", "1000",
                       "--record", "alice.wav", "--seconds", "5")
    assert dial.returncode == 0 and "ended: NORMAL (1001) by caller" in dial.stdout, dial.stdout + dial.stderr
    child.expect("desk phone 2001: connected with sip:bridge@")          # it answered by itself
    assert abs(tone_of(demo.base / "alice.wav") - 700) < 14
    assert abs(tone_of(heard_by_the_phone(rec, t0)) - 1000) < 20

    # desk phone -> app, with `bridge phone` as the banner shows it
    answer = demo.answer("agent-001", "--tone", "440", "--record", "agent.wav", "--seconds", "5")
    t0 = time.time()
    phone = demo.bridge("phone", "2001", "dial", "7001")
    assert phone.returncode == 0, phone.stdout + phone.stderr
    assert phone.stdout.splitlines()[0] == "desk phone 2001 dials 7001"
    assert "connected with sip:7001@" in phone.stdout and "call ended (the other side hung up)" in phone.stdout
    out, _ = answer.communicate(timeout=20)
    assert answer.returncode == 0 and "incoming call from desk-2001@demo-desk" in out, out
    assert abs(tone_of(demo.base / "agent.wav") - 700) < 14
    assert abs(tone_of(heard_by_the_phone(rec, t0)) - 440) < 9

    # the console: help, then a call typed there, and Ctrl-C while it is up
    child.sendline("help")
    child.expect("commands: dial NUMBER")
    answer = demo.answer("agent-003", "--seconds", "120")
    child.sendline("dial 7003")
    child.expect("desk phone 2001 dials 7003")
    child.expect("desk phone 2001: connected with")
    child.sendintr()
    child.expect(r"stopping \(SIGINT\): draining 1 call\(s\) for up to 30 s; Ctrl-C again ends them now")
    time.sleep(1.0)
    assert child.isalive() and answer.poll() is None            # draining: the call goes on
    t0 = time.monotonic()
    child.sendintr()
    child.expect(r"SIGINT again: ending 1 call\(s\) now")
    child.expect("bridge demo: stopped")
    child.expect(pexpect.EOF, timeout=10)
    stopped_in = time.monotonic() - t0
    child.close()
    assert child.exitstatus == 0 and stopped_in < 5, (child.exitstatus, stopped_in)
    out, _ = answer.communicate(timeout=10)
    assert "ended: SERVICE_MAINTENANCE (1503)" in out, out   # the bridge ended it: it is stopping
    print(f"second Ctrl-C to exit: {stopped_in:.2f} s")
    demo.nothing_left()


def test_kill_9_then_a_start_that_needs_no_clean_up(demo):
    child = demo.start()
    work = Path(demo.running()["work"])
    assert len(leftovers(work)) >= 1 + 9 + 1        # watchdog, Kamailio (main and 8 children), baresip
    os.kill(child.pid, signal.SIGKILL)
    child.expect(pexpect.EOF)
    deadline = time.monotonic() + 5
    while (leftovers(work) or work.exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(work) == [] and not work.exists()          # gone with the demo, by its watchdog

    child = demo.start()                                        # no manual clean-up
    work = Path(demo.running()["work"])
    # the watchdog killed as well: the state file is what the next start cleans up by
    watchdog = [p for p in leftovers(work) if b"-c" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")]
    assert len(watchdog) == 1
    for pid in (child.pid, watchdog[0]):
        os.kill(pid, signal.SIGKILL)
    child.expect(pexpect.EOF)
    time.sleep(0.5)
    assert leftovers(work), "Kamailio's workers outlive a demo killed with its watchdog"
    child = demo.start()
    assert re.search(r"ended \d+ process\(es\) the last demo \(pid \d+\) left behind", demo.output(child))
    assert leftovers(work) == [] and not work.exists()

    child.sendintr()
    child.expect(r"stopping \(SIGINT\): no calls")
    child.expect(pexpect.EOF)
    demo.nothing_left()


def test_a_taken_registrar_port_moves_the_demo_pbx(demo):
    port = int(re.search(r"registrar: 127\.0\.0\.1:(\d+)", demo.cfg.read_text()).group(1))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as system_kamailio:
        system_kamailio.bind(("127.0.0.1", port))
        child = pexpect.spawn(BRIDGE, ["demo", "-c", str(demo.cfg)], cwd=str(demo.base), env=demo.env,
                              encoding="utf-8", timeout=40, dimensions=(50, 250))
        demo.children.append(child)
        child.expect(rf"127\.0\.0\.1:{port} is taken by another program \(Debian's kamailio service takes 5060 "
                     r"once the package is installed: `systemctl disable --now kamailio` frees it\); the demo's PBX "
                     r"listens on 127\.0\.0\.1:(\d+) instead")
        moved = int(child.match.group(1))
        child.expect(rf"PBX         Kamailio on 127\.0\.0\.1:{moved} ")
        child.expect(r"Logs: \S+")
        answer = demo.answer("agent-001", "--seconds", "2")         # the daemon registered at the moved PBX
        child.sendline("dial 7001")
        child.expect("desk phone 2001: connected with")
        out, _ = answer.communicate(timeout=20)
        assert answer.returncode == 0 and "connected" in out, out
        child.sendintr()
        child.expect(pexpect.EOF)
    demo.nothing_left()
