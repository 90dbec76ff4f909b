"""`bridge run --workers N`: one command, N nodes of the cluster on consecutive ports, each in its
own process. Real Redis, Kamailio with the dispatcher naming both workers, a platform process,
a baresip desk phone and an SDK user on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import aiohttp
import pytest
import redis.asyncio as redis
import yaml

from cluster import LEASE, PlatformProcess, base_config, node_config
from conftest import free_port
from parties import Party
from stack import BRIDGE_PW, BRIDGE_USER
from test_cluster import desk_calls_app
from testbed import DEFAULT_USERS
from testbed.fixtures import baresip_factory, kamailio_factory, redis_server  # noqa: F401


def free_pair() -> int:
    """A port P such that P and P + 1 are free for UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        port = free_port()
        try:
            for p in (port, port + 1):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    pytest.fail("no two consecutive free ports")


async def health(port: int, timeout: float = 20, not_pid: int | None = None) -> dict:
    """/healthz of the worker whose notification listener is `port`, once it says ok (and, with
    `not_pid`, is another process than that)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    body = await r.json()
                    if r.status == 200 and len(body["cluster"]["live_nodes"]) == 2 and body["pid"] != not_pid:
                        return body
            except aiohttp.ClientError:
                body = {}
            assert time.monotonic() < deadline, f"worker on {port} not healthy: {body}"
            await asyncio.sleep(0.2)


def running(pid: int) -> bool:
    """Alive, not a zombie waiting for init to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def calls_taken(port: int) -> float:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
    return sum(float(v) for v in re.findall(r'^bridge_calls_total\{direction="sip_to_app"[^}]*\} (\S+)$', text, re.M))


async def test_bridge_run_workers_runs_n_nodes_on_consecutive_ports(
        tmp_path, kamailio_factory, redis_server, baresip_factory):  # noqa: F811
    sip, notify = free_pair(), free_pair()
    kamailio = kamailio_factory({**DEFAULT_USERS, BRIDGE_USER: BRIDGE_PW}, invite_auth=True,
                                dispatcher=[sip, sip + 1])
    data = base_config(free_port(), [notify, notify + 1], kamailio.port)
    data["log_level"] = "info"
    (tmp_path / "platform").mkdir()
    (tmp_path / "platform" / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    platform = PlatformProcess(tmp_path / "platform" / "config.yaml").start()
    node = node_config(data, 0, sip, notify, redis_server.url, tmp_path)
    node["sip"]["rtp_ports"] = "33000-33659"                 # two slices of 330 ports
    node["cluster"]["node_id"] = "host"
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(node, sort_keys=False))
    log = open(tmp_path / "workers.log", "w")
    command = [shutil.which("bridge") or pytest.fail("no bridge command"), "run", "-c", str(path), "--workers", "2"]
    parent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        await platform.ready()
        for k in range(2):                                   # each worker: its ports, its node id
            body = await health(notify + k)
            assert body["cluster"]["node_id"] == f"host-{k}" and body["cluster"]["state"] == "up", body
            assert sorted(body["cluster"]["live_nodes"]) == ["host-0", "host-1"], body
        text = (tmp_path / "workers.log").read_text()
        assert f"SIP on udp 127.0.0.1:{sip}," in text and f"SIP on udp 127.0.0.1:{sip + 1}," in text, text[-3000:]
        # desk -> app: the dispatcher takes turns between the two workers
        phone = baresip_factory("2002", kamailio, tone_hz=700)
        for _ in range(2):
            agent = Party(platform.platform_url, "agent-001")
            async with agent.listener(platform.token("agent-001")) as pushes:
                await desk_calls_app(None, phone, agent, pushes)
                mark = phone.mark()
                await agent.call.end_call()
                await asyncio.to_thread(phone.wait_closed, 5, mark)
        assert [await calls_taken(notify + k) for k in range(2)] == [1, 1]
        # a worker killed (-9) is started again by the parent: it waits out its old lease, joins
        old = (await health(notify + 1))["pid"]
        os.kill(old, signal.SIGKILL)
        body = await health(notify + 1, timeout=LEASE + 15, not_pid=old)
        assert body["cluster"]["node_id"] == "host-1" and parent.poll() is None, body
        # SIGTERM to the parent: every worker drains and leaves the cluster, the parent exits 0
        parent.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(parent.wait, 20) == 0
        store = redis.from_url(redis_server.url, decode_responses=True)
        assert await store.smembers("bridge:nodes") == set(), "a worker did not leave the cluster"
        await store.aclose()
        # kill -9 of the parent: its workers die with it, none is left behind
        parent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        pids = [(await health(notify + k))["pid"] for k in range(2)]
        parent.kill()
        parent.wait(5)
        await asyncio.sleep(1)
        assert [pid for pid in pids if running(pid)] == [], "workers outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        platform.stop()
        log.close()
        print((tmp_path / "workers.log").read_text()[-4000:])


def test_workers_need_a_cluster_and_a_platform_apart(tmp_path):
    data = base_config(free_port(), [free_port()], free_port())
    path = tmp_path / "alone.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    run = subprocess.run([shutil.which("bridge") or pytest.fail("no bridge command"), "run", "-c", str(path),
                          "--workers", "2"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "add a cluster: section" in run.stderr and "platform.embedded: false" in run.stderr, run.stderr
