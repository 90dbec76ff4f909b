"""The daemon as systemd runs it: the unit verifies, sd_notify says READY, WATCHDOG, STOPPING, and
an app call works under the unit's RestrictAddressFamilies= (applied by a seccomp wrapper where
systemd is not PID 1), which the unit's earlier families would break."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.audio import RATE, tone_analysis
from bridge.reasons import DisconnectReason as R
from conftest import free_port
from parties import Party
from stack import kamailio, stack_config, start_bridge  # noqa: F401  (fixtures)
from testbed import wav_dominant_frequency
from testbed.fixtures import baresip_factory, kamailio_factory  # noqa: F401
from testbed.sandbox import unit_families

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


def test_the_template_unit_for_n_nodes_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze") or pytest.fail("systemd-analyze is missing (Debian systemd)")
    exe = shutil.which("bridge") or pytest.fail("the `bridge` command is not installed: run tests/run")
    text = (ROOT / "systemd" / "bridge@.service").read_text().replace("/opt/bridge/.venv/bin/bridge", exe)
    for name in ("bridge@.service", "bridge@3.service"):
        unit = tmp_path / name
        unit.write_text(text)
        run = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
        assert run.returncode == 0 and not run.stderr.strip(), run.stderr
    for line in ("Type=notify", "-c /etc/bridge/node-%i.yaml", "StateDirectory=bridge/node-%i",
                 "NoNewPrivileges=yes", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK"):
        assert line in text, line


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


# --- the unit's sandbox, applied without systemd: the address families --------------------------

UNIT = ROOT / "systemd" / "bridge.service"
OLD_FAMILIES = "AF_INET AF_INET6 AF_UNIX"        # the unit before AF_NETLINK


def sandboxed(families: str) -> list[str]:
    """A wrapper that applies RestrictAddressFamilies=`families` (seccomp), then execs the daemon."""
    return [sys.executable, str(ROOT / "tests" / "testbed" / "sandbox.py"), families, "--"]


def every_interface(d: dict) -> None:
    d["webrtc"]["ice_addresses"] = []              # the default: aiortc lists the interfaces


async def app_call(bridge, phone_hz: int = 700) -> Party:
    alice = Party(bridge.platform_url, "alice", tone=1000)
    await alice.make_call(("desk-2001", "demo-desk"), bridge.token("alice"))
    await asyncio.wait(
        [asyncio.ensure_future(alice.events.connected.wait()), asyncio.ensure_future(alice.ended(15))],
        timeout=15, return_when=asyncio.FIRST_COMPLETED)
    return alice


async def test_app_call_under_the_units_address_families(start_bridge, kamailio, baresip_factory):  # noqa: F811
    families = unit_families(UNIT)
    assert "AF_NETLINK" in families, families
    bridge = await start_bridge(every_interface, wrapper=sandboxed(" ".join(families)))
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    alice = await app_call(bridge)
    assert alice.events.connected.is_set(), alice.events.names
    await asyncio.to_thread(phone.wait_established, 5)
    await asyncio.sleep(5)                               # baresip's audio starts 1-3 s late
    freq, snr = tone_analysis(alice.heard.samples[-int(1.5 * RATE):])
    assert abs(freq - 700) < 14 and snr > 20, (freq, snr)
    await asyncio.to_thread(phone.hangup)
    assert (await alice.ended(5)).reason is R.NORMAL
    freq, snr = await asyncio.to_thread(wav_dominant_frequency, phone.latest_recording("dec"), 1.0)
    assert abs(freq - 1000) < 20 and snr > 20, (freq, snr)
    offered = [line for line in alice.call._pc.remoteDescription.sdp.splitlines() if line.startswith("a=candidate")]
    assert offered and not any(" 127.0.0.1 " in line for line in offered), offered   # aioice's own choice


async def test_the_old_units_families_break_app_calls(start_bridge, kamailio, baresip_factory):  # noqa: F811
    """Without AF_NETLINK the bridge cannot list its interfaces: the app call ends at once, the
    phone never rings (so the test above is the unit's AF_NETLINK at work)."""
    bridge = await start_bridge(every_interface, wrapper=sandboxed(OLD_FAMILIES))
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    mark = phone.mark()
    alice = await app_call(bridge)
    assert not alice.events.connected.is_set()
    ended = await alice.ended(1)
    assert ended.reason is R.INTERNAL_ERROR, ended
    assert "cannot gather ICE candidates: [Errno 97] Address family not supported by protocol" in bridge.log()
    assert await asyncio.to_thread(phone.wait_event, ("CALL_INCOMING",), 1, mark) is None
