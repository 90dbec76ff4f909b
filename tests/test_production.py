"""Production mode: `bridge run` beyond loopback refuses development secrets and tokens, the
production sample runs with its secrets from the environment and never logs them, and
development tokens are refused to clients behind a proxy."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from bridge import callbacks, config, production, token
from bridge.reasons import DisconnectReason as R
from conftest import free_port
from parties import Party
from stack import BRIDGE_USER, kamailio, stack_config, start_bridge  # noqa: F401  (fixtures)
from testbed.certs import make_ca_and_server
from testbed.fixtures import kamailio_factory  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
BRIDGE = shutil.which("bridge") or pytest.fail("the `bridge` command is not installed: run tests/run")
PRODUCTION_VARIABLES = ("BRIDGE_CC_PARAM_SECRET", "APP_API_SECRET", "DESK_API_SECRET", "BRIDGE_NOTIFY_SECRET",
                        "BRIDGE_ADMIN_TOKEN", "BRIDGE_SIP_PASSWORD", "TURN_SECRET")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "DEMO_", "APP_", "DESK_"))}
    return {**env, **extra}


def production_env() -> dict[str, str]:
    """Strong secrets for every variable of config.production.yaml (SIP: Kamailio's charset)."""
    return {name: secrets.token_urlsafe(32) for name in PRODUCTION_VARIABLES}


def test_demo_secrets_are_exactly_the_samples():
    cfg = config.load(ROOT / "config.yaml", env={})
    assert {s.value for s in cfg.secrets} == production.DEMO_SECRETS
    assert all(s.source == "inline" for s in cfg.secrets)
    assert production.exposure(cfg) == []               # the demo is loopback only: it runs as before
    assert "development-secret" not in repr(cfg.secrets)


def test_production_sample_passes_check_config_once_its_variables_are_set():
    sample = str(ROOT / "config.production.yaml")
    unset = subprocess.run([BRIDGE, "check-config", "-c", sample], capture_output=True, text=True, env=clean_env())
    assert unset.returncode == 2 and "Traceback" not in unset.stderr
    for name in ("APP_API_SECRET", "DESK_API_SECRET", "BRIDGE_NOTIFY_SECRET", "BRIDGE_SIP_PASSWORD", "TURN_SECRET"):
        assert name in unset.stderr, unset.stderr
    ok = subprocess.run([BRIDGE, "check-config", "-c", sample], capture_output=True, text=True,
                        env=clean_env(**production_env()))
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    cfg = config.load(sample, env=production_env())
    assert not cfg.platform.dev_tokens and all(s.source == "env" for s in cfg.secrets)
    assert production.exposure(cfg) and production.problems(cfg) == []   # on a LAN address, and clean
    for line in (ROOT / "config.production.yaml").read_text().splitlines():
        key = line.split("#")[0].strip().split(":")[0]
        assert key not in ("secret", "api_secret", "push_secret", "password", "admin_token", "cc_param_secret",
                           "auth_secret", "credential"), line


def refused(cfg_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([BRIDGE, "run", "-c", str(cfg_path)], capture_output=True, text=True, env=env, timeout=20)


EXPOSED = {
    "platform on all addresses": lambda d: d["platform"].update(listen=f"0.0.0.0:{free_port()}"),
    "published by a proxy": lambda d: d["platform"].update(public_url="https://bridge.example.com"),
    "notifications on all addresses": lambda d: d["notifications"].update(listen=f"0.0.0.0:{free_port()}"),
}


@pytest.mark.parametrize("exposed", EXPOSED)
def test_run_refuses_the_demo_config_beyond_loopback(tmp_path, exposed):
    cfg = stack_config(tmp_path, free_port(), EXPOSED[exposed])
    run = refused(cfg, clean_env(BRIDGE_ADMIN_TOKEN="a" * 40))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr and run.stderr.startswith("bridge: refusing to start: reachable beyond loopback")
    for key in ("platform.dev_tokens: must be false",
                "platform.services.demo-app.api_secret: the environment variable DEMO_APP_API_SECRET is not set",
                "notifications.secret: the environment variable BRIDGE_NOTIFY_SECRET is not set",
                "sip.password: the environment variable BRIDGE_SIP_PASSWORD is not set"):
        assert key in run.stderr, run.stderr
    # a demo value is refused from the environment too
    again = refused(cfg, clean_env(BRIDGE_ADMIN_TOKEN="a" * 40, BRIDGE_SIP_PASSWORD="bridge-development-password"))
    assert again.returncode == 1 and "sip.password: is the development value shipped in config.yaml" in again.stderr
    for value in production.DEMO_SECRETS:
        assert value not in run.stderr + run.stdout + again.stderr + again.stdout   # named, never shown


def test_run_names_an_unset_variable_and_an_inline_secret(tmp_path):
    strong = {name: secrets.token_urlsafe(32) for name in
              ("DEMO_APP_API_SECRET", "DEMO_DESK_API_SECRET", "BRIDGE_NOTIFY_SECRET")}

    def edit(d: dict) -> None:
        EXPOSED["platform on all addresses"](d)
        d["platform"]["dev_tokens"] = False
        d["sip"]["password"] = "an-inline-password-of-this-site"
        del d["sip"]["password_env"]
        d["platform"]["services"]["demo-desk"]["api_secret_env"] = "NOT_SET_ANYWHERE"
    run = refused(stack_config(tmp_path, free_port(), edit), clean_env(**strong))
    assert run.returncode == 1 and "Traceback" not in run.stderr
    problems = run.stderr.splitlines()[1:]
    assert len(problems) == 2, run.stderr
    assert re.search(r"config.yaml:\d+: platform.services.demo-desk.api_secret: the environment variable "
                     r"NOT_SET_ANYWHERE is not set, so the inline \(development\) value would be used", problems[0])
    assert re.search(r"config.yaml:\d+: sip.password: a secret written in the config file: give it as "
                     r"password_env", problems[1])
    assert "an-inline-password-of-this-site" not in run.stderr
    # once the variable is set, only the inline password is left
    cfg = config.load(stack_config(tmp_path, free_port(), edit), env={**strong, "NOT_SET_ANYWHERE": "s" * 40})
    assert [p.split(": ")[1] for p in production.problems(cfg)] == ["sip.password"]


async def test_loopback_demo_warns_about_unset_variables_without_values(start_bridge):
    d = await start_bridge()
    log = d.log()
    for key, variable in (("sip.password", "BRIDGE_SIP_PASSWORD"), ("notifications.secret", "BRIDGE_NOTIFY_SECRET"),
                          ("platform.services.demo-app.api_secret", "DEMO_APP_API_SECRET")):
        assert re.search(rf"WARNING bridge.production: \S+config.yaml:\d+: {re.escape(key)}: environment variable "
                         rf"{variable} is not set: using the inline value", log), log[:3000]
    for value in production.DEMO_SECRETS:
        assert value not in log


async def test_dev_tokens_are_refused_behind_a_proxy(start_bridge):
    d = await start_bridge()
    url = d.platform_url
    async with aiohttp.ClientSession() as http:
        async def dev_token(headers: dict) -> tuple[int, dict]:
            async with http.post(url + "/v1/dev/token", json={"service": "demo-app", "user": "alice"},
                                 headers=headers) as r:
                assert r.headers["Server"] == "bridge"
                return r.status, await r.json()

        async def offered(headers: dict) -> bool:
            async with http.get(url + "/dialer/config.json", headers=headers) as r:
                return (await r.json())["dev_tokens"]

        status, body = await dev_token({})
        assert status == 200 and body["token"]
        assert await offered({}) is True
        for header, value in (("X-Forwarded-For", "203.0.113.9"), ("Forwarded", "for=203.0.113.9"),
                              ("X-Real-IP", "203.0.113.9"), ("Via", "1.1 proxy"), ("X-Forwarded-For", "127.0.0.1")):
            status, body = await dev_token({header: value})
            assert status == 403 and body["error"] == "forbidden" and header in body["message"], (header, body)
            assert await offered({header: value}) is False


def production_config(tmp_path: Path, kamailio_port: int, ca: Path | None = None) -> tuple[Path, int, int]:
    """config.production.yaml on this machine: the platform on all addresses (exposed), free ports,
    the test Kamailio (over TLS, as the sample: `ca` signed its certificate, for pbx.test), debug
    logs (the most a log may show)."""
    data = yaml.safe_load((ROOT / "config.production.yaml").read_text())
    web, notify = free_port(), free_port()
    data["log_level"] = "debug"
    p = data["platform"]
    p.update(listen=f"0.0.0.0:{web}", public_url=f"http://127.0.0.1:{web}")
    p["services"]["app"].update(notify_cb_url=None, call_event_cb_url=None)
    p["services"]["desk"]["push_url"] = f"http://127.0.0.1:{notify}/v1/notifications"
    data["notifications"]["listen"] = f"127.0.0.1:{notify}"
    data["sip"].update(registrar=f"127.0.0.1:{kamailio_port}", listen="127.0.0.1:0", rtp_ports="34000-34999",
                       keepalive="1s", register_expires="10s")
    if ca is not None:
        data["sip"]["tls"].update(ca=str(ca), server_name="pbx.test")
    data["webrtc"]["ice_addresses"] = ["127.0.0.1"]
    path = tmp_path / "production.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, web, notify


async def test_production_config_runs_exposed_and_never_logs_a_secret(tmp_path, kamailio_factory):
    env = production_env()
    certs = make_ca_and_server(tmp_path / "certs", ["pbx.test"], ["127.0.0.1"])
    pbx = kamailio_factory({BRIDGE_USER: env["BRIDGE_SIP_PASSWORD"]}, invite_auth=True, tls=certs)
    path, web, notify = production_config(tmp_path, pbx.tls_port, certs.ca)
    log_path = tmp_path / "daemon.log"
    proc = subprocess.Popen([BRIDGE, "run", "-c", str(path)], stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            env=clean_env(**env))
    admin = {"Authorization": f"Bearer {env['BRIDGE_ADMIN_TOKEN']}"}
    cfg = config.load(path, env=env)
    app = cfg.platform.services["app"]
    issued = token.issue(token.ServiceKey(app.id, app.api_key, app.api_secret), "alice")
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    async with http.get(f"http://127.0.0.1:{notify}/healthz", headers=admin) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                await asyncio.sleep(0.1)
            async with http.get(f"http://127.0.0.1:{notify}/healthz") as r:
                assert r.status == 401 and (await r.json())["error"] == "unauthorized"
                assert r.headers["Server"] == "bridge"
            async with http.post(f"http://127.0.0.1:{web}/v1/dev/token", json={"service": "app", "user": "a"}) as r:
                assert r.status == 403 and r.headers["Server"] == "bridge"
            async with http.get(f"http://127.0.0.1:{web}/dialer/config.json") as r:
                assert (await r.json())["dev_tokens"] is False
            path_ = "/v1/calls/nope"
            headers = {callbacks.API_KEY: app.api_key, **callbacks.signed_headers(app.api_secret, f"GET {path_}")}
            async with http.get(f"http://127.0.0.1:{web}{path_}", headers=headers) as r:
                assert r.status == 404                   # signed: the signature was accepted
        # a call to a desk phone: push (push secret), notification (notification secret), the bridge's
        # own token (desk API secret), cc_param (its secret), INVITE with digest (SIP password)
        alice = Party(f"http://127.0.0.1:{web}", "alice", service="app")
        await alice.make_call(("desk-2001", "desk"), issued)
        ended = await alice.ended(timeout=20)
        # the PBX took the authenticated INVITE and answered 404: nobody is registered as 2001
        assert ended.reason is R.SERVICE_INVALID_ID, ended
        assert "route desk-phones: ring 2001" in log_path.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    log = log_path.read_text()
    assert "refusing" not in log and "Traceback" not in log
    assert "SIP on tls 127.0.0.1:" in log and "inline:" not in log       # TLS, and no SRTP key at debug level
    for name, value in env.items():
        assert value not in log, f"{name} is in the log"
    assert issued not in log and issued.split(".")[2] not in log
