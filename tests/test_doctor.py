"""`bridge doctor`: OK against a good setup (the test Kamailio with the bridge's account), and
each failure it names, as the user sees it: the check, FAIL, what to fix, exit status 1."""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from bridge import config, g722
from bridge.doctor import Doctor
from conftest import free_port
from stack import BRIDGE_PW, BRIDGE_USER, stack_config
from testbed import DEFAULT_USERS
from testbed.fixtures import kamailio_factory  # noqa: F401

BRIDGE = shutil.which("bridge") or pytest.fail("the `bridge` command is not installed: run tests/run")


@pytest.fixture
def pbx(kamailio_factory):  # noqa: F811
    return kamailio_factory({**DEFAULT_USERS, BRIDGE_USER: BRIDGE_PW}, invite_auth=True)


def doctor(cfg: Path) -> tuple[int, dict[str, tuple[str, str]]]:
    """Exit status, and each check's (status, text) by name."""
    run = subprocess.run([BRIDGE, "doctor", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in run.stdout + run.stderr, run.stdout + run.stderr
    checks = {}
    for line in run.stdout.splitlines():
        parts = line.split(None, 1)
        if line.startswith("  ") and parts[0] in ("OK", "WARN", "FAIL", "SKIP"):
            name, text = line[8:25].strip(), line[25:].strip()
            checks[name] = (parts[0], text)
    print(run.stdout)
    return run.returncode, checks


def test_a_good_setup_passes_every_check(tmp_path, pbx):
    code, checks = doctor(stack_config(tmp_path, pbx.port))
    assert code == 0, checks
    assert {n: s for n, (s, _) in checks.items()} == {
        "secrets": "WARN", "config": "OK", "SIP listen": "OK", "PBX": "OK", "registration": "OK", "RTP ports": "OK",
        "platform": "OK", "notifications": "OK", "ICE addresses": "OK"}
    assert checks["PBX"][1].startswith(f"127.0.0.1:{pbx.port} answers OPTIONS: 200 OK")
    assert checks["registration"][1].startswith("bridge@127.0.0.1 registered for 10 s")
    pbx.wait_log(f"TESTBED REGISTER saved sip:{BRIDGE_USER}@")
    pbx.wait_log("expires=0")                                  # and its test binding removed again


def test_pbx_down(tmp_path):
    code, checks = doctor(stack_config(tmp_path, free_port(socket.SOCK_DGRAM)))
    assert code == 1
    assert checks["PBX"][0] == "FAIL" and "does not answer SIP OPTIONS within 2 s" in checks["PBX"][1]
    assert checks["registration"][0] == "SKIP"


def test_wrong_password(tmp_path, pbx):
    code, checks = doctor(stack_config(tmp_path, pbx.port, lambda d: d["sip"].update(password="not-the-password")))
    assert code == 1 and checks["PBX"][0] == "OK"
    assert checks["registration"] == ("FAIL", "bridge@127.0.0.1: registrar answered 401 Unauthorized (check "
                                              "sip.username, sip.auth_username and sip.password)")


def test_rtp_ports_taken(tmp_path, pbx):
    base = free_port(socket.SOCK_DGRAM) & ~1
    held = []
    try:
        for port in range(base, base + 6):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                pytest.fail(f"port {port} is not free for the test")
            held.append(s)
        code, checks = doctor(stack_config(tmp_path, pbx.port,
                                           lambda d: d["sip"].update(rtp_ports=f"{base}-{base + 5}")))
    finally:
        for s in held:
            s.close()
    assert code == 1
    assert checks["RTP ports"] == ("FAIL", f"all 3 port pairs of {base}-{base + 5} on 127.0.0.1 are taken by other "
                                           "programs: stop them, or give sip.rtp_ports another range")


def test_platform_unreachable(tmp_path, pbx):
    url = f"http://127.0.0.1:{free_port()}"

    def remote(d: dict) -> None:
        d["platform"].update(embedded=False, public_url=url)
        d["bridge"]["trusted_platforms"] = [url.replace("http", "ws") + "/v1/ws"]
    code, checks = doctor(stack_config(tmp_path, pbx.port, remote))
    assert code == 1 and checks["platform"][0] == "FAIL", checks
    assert checks["platform"][1].startswith(f"{url} is unreachable (") and \
        checks["platform"][1].endswith("start the platform (`bridge platform`) or fix platform.public_url")


def test_platform_port_held_by_another_program_and_a_foreign_ice_address(tmp_path, pbx):
    port = free_port()
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()

        def edit(d: dict) -> None:
            d["platform"].update(listen=f"127.0.0.1:{port}", public_url=f"http://127.0.0.1:{port}")
            d["webrtc"]["ice_addresses"] = ["127.0.0.1", "192.0.2.1"]
        code, checks = doctor(stack_config(tmp_path, pbx.port, edit))
    assert code == 1
    assert checks["platform"] == ("FAIL", f"tcp 127.0.0.1:{port} is taken by another program: stop it, or change "
                                          "platform.listen")
    assert checks["ICE addresses"][0] == "FAIL" and checks["ICE addresses"][1].startswith(
        "192.0.2.1 not assigned to this host")


@pytest.mark.parametrize("how", ["--sip-trace", "sip.trace: true"])
def test_sip_trace_logs_every_message_without_the_password(tmp_path, pbx, how):
    edit = (lambda d: d["sip"].update(trace=True)) if how != "--sip-trace" else None
    cfg = stack_config(tmp_path, pbx.port, edit)
    run = subprocess.run([BRIDGE, "doctor", "-c", str(cfg), *(["--sip-trace"] if edit is None else [])],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    sent = re.findall(rf"SIP sent to 127\.0\.0\.1:{pbx.port} \(\d+ bytes\):\n((?:    .*\n)+)", out)
    received = re.findall(rf"SIP received from 127\.0\.0\.1:{pbx.port} \(\d+ bytes\):\n((?:    .*\n)+)", out)
    # OPTIONS, and REGISTER (401, again with credentials, then expires=0 at the end), in either order
    assert sorted(m.splitlines()[0].split()[0] for m in sent) == ["OPTIONS", "REGISTER", "REGISTER", "REGISTER"], sent
    assert sorted(m.splitlines()[0].strip() for m in received) == \
        ["SIP/2.0 200 OK"] * 3 + ["SIP/2.0 401 Unauthorized"], received
    assert any("    Authorization: Digest " in m and 'response="' in m for m in sent)
    assert BRIDGE_PW not in out + run.stderr


def test_every_command_takes_a_log_level():
    from bridge.cli import _parser
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert len(sub.choices) == 12               # `bridge cluster` (status) made them 12
    for name, parser in sub.choices.items():
        assert "--log-level {debug,info,warning,error}" in parser.format_usage().replace("\n", " "), name


def test_g722_names_its_encoder(tmp_path, pbx):
    # this host has spandsp (tests/run installs libspandsp2): OK, and every other check as before
    code, checks = doctor(stack_config(tmp_path, pbx.port, lambda d: d["sip"].update(codecs=["G722", "PCMU"])))
    assert code == 0 and checks["codecs"] == ("OK", "G.722 encoded by spandsp")


def test_g722_without_spandsp_warns(tmp_path, monkeypatch):
    # a host without libspandsp2 gets FFmpeg's encoder (bridge/g722.py): the doctor says what to install
    monkeypatch.setattr(g722, "Encoder", g722.FFmpegEncoder)
    cfg = config.load(stack_config(tmp_path, 5060, lambda d: d["webrtc"].update(codecs=["G722", "opus"])))
    check = Doctor(cfg)
    check.codecs()
    assert [(c.name, c.status) for c in check.checks] == [("codecs", "WARN")]
    assert "apt-get install libspandsp2" in check.checks[0].text
    plain = Doctor(config.load(stack_config(tmp_path, 5060)))       # no G.722 listed: no check
    plain.codecs()
    assert plain.checks == []
