"""End to end: a frozen app client is noticed within 10 s; a muted one is not cut off.

App users run as real processes: `bridge dial` / `bridge answer` (the Python SDK) in a
subprocess, frozen with SIGSTOP mid-call, so that they send nothing at all (no RTP, no RTCP, no
answer to ICE consent checks) while their sockets stay open, as a hung or suspended app would.
The bridge (`bridge run`) must end the call with NETWORK_UNSTABLE, send the desk phone (baresip)
a BYE, and count the call as `network_unstable`; an SDK user whose peer froze must get
evt_disconnected with NETWORK_UNSTABLE, all within webrtc.liveness_timeout (8 s) plus a second.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bridge.audio import tone_analysis
from bridge.reasons import DisconnectReason as R, Source
from parties import Party
from stack import Daemon, kamailio, start_bridge  # noqa: F401  (fixtures)
from testbed.audio import read_wav, rms_dbfs
from testbed.fixtures import baresip_factory, kamailio_factory  # noqa: F401

DETECT_WITHIN = 10.0


async def blocking(fn, *args, **kw):
    return await asyncio.to_thread(fn, *args, **kw)


class AppProcess:
    """`bridge dial` or `bridge answer` in a subprocess, its output in a file."""

    def __init__(self, bridge: Daemon, *args: str) -> None:
        self.out = bridge.path.parent / f"app-{os.getpid()}-{time.monotonic_ns()}.txt"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "DEMO_"))}
        self.proc = subprocess.Popen([sys.executable, "-m", "bridge", *args, "-c", str(bridge.path)],
                                     stdout=open(self.out, "w"), stderr=subprocess.STDOUT, env=env)

    def text(self) -> str:
        return Path(self.out).read_text(errors="replace")

    async def says(self, words: str, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while words not in self.text():
                assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.text()}"
                await asyncio.sleep(0.05)

    def freeze(self) -> float:
        self.proc.send_signal(signal.SIGSTOP)
        return time.monotonic()

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    async def exit_code(self, timeout: float) -> int | None:
        try:
            return await blocking(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


async def bridge_metric(bridge: Daemon, line: str, timeout: float = 5) -> str:
    async with asyncio.timeout(timeout):
        while line not in (text := await bridge.metrics()):
            await asyncio.sleep(0.1)
    return text


async def talking_to_the_phone(bridge: Daemon, phone) -> Party:
    """alice (in this process, 1000 Hz) in a call with `phone` (desk-2001), media flowing."""
    alice = Party(bridge.platform_url, "alice", tone=1000)
    await alice.make_call(("desk-2001", "demo-desk"), bridge.token("alice"))
    await asyncio.wait_for(alice.events.connected.wait(), 15)
    await blocking(phone.wait_established, 5)
    await asyncio.sleep(3)                                         # baresip's audio starts late
    return alice


async def test_a_frozen_app_caller_is_noticed_and_the_phone_gets_bye(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    alice = AppProcess(bridge, "dial", "--from", "alice@demo-app", "--to", "desk-2001@demo-desk",
                       "--tone", "1000", "--seconds", "120")
    try:
        await alice.says("connected", 20)
        await blocking(phone.wait_established, 5)
        await asyncio.sleep(2)                                     # media flowing both ways
        mark = phone.mark()
        frozen_at = alice.freeze()
        closed = await blocking(phone.wait_closed, DETECT_WITHIN + 5, mark)
        took = time.monotonic() - frozen_at
        print(f"frozen app caller: the phone got BYE {took:.2f} s after SIGSTOP")
        assert took <= DETECT_WITHIN, f"BYE only {took:.1f} s after the app froze"
        assert took >= 7.5, f"BYE {took:.1f} s after the freeze: before the 8 s liveness timeout?"
        assert closed["type"] == "CALL_CLOSED"
        await bridge_metric(bridge, 'bridge_calls_total{direction="app_to_sip",result="network_unstable"} 1.0')
        log = bridge.log()
        assert "nothing from the peer for" in log and "NETWORK_UNSTABLE" in log, log[-3000:]
        alice.thaw()                                                # it learns how its call ended
        assert await alice.exit_code(15) == 0, alice.text()
        assert "ended: NETWORK_UNSTABLE (1301) by callee" in alice.text(), alice.text()
    finally:
        alice.kill()


async def test_an_sdk_user_notices_its_frozen_peer(start_bridge, kamailio):  # noqa: F811
    bridge = await start_bridge()
    bob = AppProcess(bridge, "answer", "--as", "bob@demo-app", "--tone", "440", "--seconds", "120")
    try:
        await bob.says("waiting for calls", 20)
        alice = Party(bridge.platform_url, "alice", tone=1000)
        await alice.make_call(("bob", "demo-app"), bridge.token("alice"))
        await asyncio.wait_for(alice.events.connected.wait(), 15)
        await asyncio.sleep(2)
        frozen_at = bob.freeze()
        ended = await alice.ended(DETECT_WITHIN + 5)
        took = time.monotonic() - frozen_at
        print(f"frozen app callee: the caller's SDK ended the call {took:.2f} s after SIGSTOP")
        assert (ended.reason, ended.source) == (R.NETWORK_UNSTABLE, Source.CALLER), ended
        assert 7.5 <= took <= DETECT_WITHIN, took
        bob.thaw()
        assert await bob.exit_code(15) == 0, bob.text()
        assert "ended: NETWORK_UNSTABLE (1301) by caller" in bob.text(), bob.text()
    finally:
        bob.kill()


async def test_a_muted_app_user_is_not_cut_off(start_bridge, kamailio, baresip_factory):  # noqa: F811
    bridge = await start_bridge()
    phone = baresip_factory("2001", kamailio, tone_hz=700)
    alice = await talking_to_the_phone(bridge, phone)
    mark = phone.mark()
    alice.call.mute_my_audio(True)
    await asyncio.sleep(15)                                        # twice the liveness timeout
    assert alice.call.state == "connected" and not alice.events.disconnected.done()
    assert phone.wait_event("CALL_CLOSED", 0.1, mark) is None
    alice.call.mute_my_audio(False)
    await asyncio.sleep(3)
    await alice.call.end_call()
    await blocking(phone.wait_closed, 5, mark)
    text = await bridge_metric(bridge, 'bridge_calls_total{direction="app_to_sip",result="normal"} 1.0')
    assert "network_unstable" not in text
    heard, rate = await blocking(read_wav, phone.latest_recording("dec"))
    muted = heard[-14 * rate:-6 * rate]                           # well inside the 15 s of mute
    assert rms_dbfs(muted) < -50, rms_dbfs(muted)                 # the mute was real: silence...
    freq, snr = tone_analysis(heard[-int(1.5 * rate):] * 32768, rate)
    assert abs(freq - 1000) < 20 and snr > 20, (freq, snr)        # ...and the call carries audio after it


async def test_an_sdk_user_notices_a_frozen_bridge_and_the_bridge_recovers(start_bridge, kamailio, baresip_factory):  # noqa: F811
    """The whole daemon freezes (platform included): the app user still learns within the limit;
    thawed, the bridge ends its side and the phone gets its BYE."""
    bridge = await start_bridge()
    phone = baresip_factory("2001", kamailio)
    alice = await talking_to_the_phone(bridge, phone)
    mark = phone.mark()
    bridge.signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        ended = await alice.ended(DETECT_WITHIN + 5)
        took = time.monotonic() - frozen_at
        print(f"frozen bridge: the app user's SDK ended the call {took:.2f} s after SIGSTOP")
        assert (ended.reason, ended.source) == (R.NETWORK_UNSTABLE, Source.CALLER), ended
        assert 7.5 <= took <= DETECT_WITHIN, took
    finally:
        bridge.signal(signal.SIGCONT)
    await blocking(phone.wait_closed, 10, mark)
    status, _ = await bridge.health()
    assert status == 200
