"""The daemon as systemd runs it: the unit verifies, and sd_notify says READY, WATCHDOG, STOPPING."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port
from stack import stack_config

ROOT = Path(__file__).resolve().parent.parent


def test_unit_file_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze") or pytest.fail("systemd-analyze is missing (Debian systemd)")
    exe = shutil.which("bridge") or pytest.fail("the `bridge` command is not installed: run tests/run")
    unit = tmp_path / "bridge.service"
    unit.write_text((ROOT / "systemd" / "bridge.service").read_text().replace("/opt/bridge/.venv/bin/bridge", exe))
    run = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr
    text = unit.read_text()
    for line in ("Type=notify", "WatchdogSec=", "User=bridge", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "PrivateTmp=yes", "EnvironmentFile="):
        assert line in text
    # Documentation= names files the install steps put in place (the project in /opt/bridge)
    docs = next(x for x in text.splitlines() if x.startswith("Documentation=")).split("=", 1)[1].split()
    assert docs and all(d.startswith("file:///opt/bridge/") and (ROOT / d[len("file:///opt/bridge/"):]).is_file()
                        for d in docs), docs


def test_sd_notify_ready_watchdog_status_stopping(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.5)
    cfg = stack_config(tmp_path, kamailio_port=free_port())
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([shutil.which("bridge") or "bridge", "run", "-c", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not ("READY=1" in seen and seen.count("WATCHDOG=1") >= 2):
            try:
                seen += sock.recv(4096).decode().split("\n")
            except socket.timeout:
                assert proc.poll() is None, "the daemon exited"
        assert "READY=1" in seen and seen.count("WATCHDOG=1") >= 2, seen
        assert any(s.startswith("STATUS=") and "calls" in s for s in seen), seen
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "STOPPING=1" not in seen:
            try:
                seen += sock.recv(4096).decode().split("\n")
            except socket.timeout:
                pass
        assert "STOPPING=1" in seen
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
