"""The commands a person runs: `bridge run`, `bridge answer`, `bridge dial`, `bridge token`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

from bridge.audio import RATE, read_wav, tone_analysis
from conftest import free_port
from stack import stack_config

ROOT = Path(__file__).resolve().parent.parent
# the installed console script, as a user runs it (tests/run installs the package)
BRIDGE = [shutil.which("bridge") or pytest.fail("the `bridge` command is not installed: run tests/run")]


@pytest.fixture
def daemon(tmp_path):
    """`bridge run` with the sample config, moved to a free port."""
    cfg = stack_config(tmp_path, kamailio_port=free_port())   # no PBX: only the platform is used
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen([*BRIDGE, "run", "-c", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=tmp_path)
    deadline = time.monotonic() + 15
    while "platform (public URL" not in (tmp_path / "daemon.log").read_text():
        assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
        assert time.monotonic() < deadline, "daemon did not start"
        time.sleep(0.1)
    yield cfg, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    log.close()


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 15) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} not seen; got {lines}")


def test_dial_and_answer_make_a_real_call(daemon, tmp_path):
    cfg, proc = daemon
    answer = subprocess.Popen([*BRIDGE, "answer", "-c", str(cfg), "--as", "bob@demo-app", "--tone", "440",
                               "--record", str(tmp_path / "bob.wav"), "--seconds", "30"],
                              stdout=subprocess.PIPE, text=True)
    wait_for_line(answer, "waiting for calls")
    dial = subprocess.run([*BRIDGE, "dial", "-c", str(cfg), "--from", "alice@demo-app", "--to", "bob@demo-app",
                           "--tone", "1000", "--record", str(tmp_path / "alice.wav"), "--seconds", "3"],
                          capture_output=True, text=True, timeout=60)
    assert dial.returncode == 0, dial.stdout + dial.stderr
    assert "connected" in dial.stdout and "ended: NORMAL (1001) by caller" in dial.stdout
    out, _ = answer.communicate(timeout=15)
    assert answer.returncode == 0 and "incoming call from alice@demo-app" in out
    for path, freq in ((tmp_path / "bob.wav", 1000), (tmp_path / "alice.wav", 440)):
        samples = read_wav(str(path))
        assert len(samples) > 2 * RATE
        found, snr = tone_analysis(samples[-2 * RATE:])
        assert abs(found - freq) < freq * 0.02 and snr > 20, (path.name, found, snr)
    # SIGTERM: the daemon stops cleanly
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def test_dial_nobody_fails_with_the_reason(daemon):
    cfg, _ = daemon
    dial = subprocess.run([*BRIDGE, "dial", "-c", str(cfg), "--from", "alice@demo-app", "--to", "nobody@demo-app",
                           "--seconds", "1"], capture_output=True, text=True, timeout=30)
    assert dial.returncode == 1
    assert "ended: PUSH_ERROR (1302) by cloud_server" in dial.stdout and "Traceback" not in dial.stderr


def test_answer_decline(daemon):
    cfg, _ = daemon
    answer = subprocess.Popen([*BRIDGE, "answer", "-c", str(cfg), "--as", "bob@demo-app", "--decline"],
                              stdout=subprocess.PIPE, text=True)
    wait_for_line(answer, "waiting for calls")
    dial = subprocess.run([*BRIDGE, "dial", "-c", str(cfg), "--from", "alice@demo-app", "--to", "bob@demo-app"],
                          capture_output=True, text=True, timeout=30)
    assert dial.returncode == 1 and "ended: DECLINE (1002) by callee" in dial.stdout
    answer.wait(10)


def test_token_command(tmp_path):
    out = subprocess.run([*BRIDGE, "token", "-c", str(ROOT / "config.yaml"), "--service", "demo-app",
                          "--user", "alice"], capture_output=True, text=True, check=True,
                         env={**os.environ, "DEMO_APP_API_SECRET": "z" * 40})
    claims = jwt.decode(out.stdout.strip(), "z" * 40, algorithms=["HS256"])
    assert claims["sub"] == "demo-app" and claims["uid"] == "alice" and claims["iss"] == "demo-app-key"
    assert abs(claims["iat"] - time.time()) < 60
    bad = subprocess.run([*BRIDGE, "token", "-c", str(ROOT / "config.yaml"), "--service", "nope",
                          "--user", "alice"], capture_output=True, text=True)
    assert bad.returncode == 2 and "service 'nope' is not in" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run([*BRIDGE, "dial", "-c", str(ROOT / "config.yaml"), "--from", "alice", "--to", "b@c"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "is not USER@SERVICE" in bad.stderr
