"""The Janus WebRTC server's SIP plugin as the gateway under test: `bridge loadtest --gateway janus`.

The peer to beat on cost (DESIGN.md section 6), driven exactly like the bridge: the same aiortc
callers (G.711 only, the same program track and receive taps), the same far end (the load test's
SIP user agent, registered at the same PBX), the same Kamailio; only the gateway in between
differs, and its process is measured the same way (CPU and RSS from /proc/<pid>).

- `JanusServer` starts Debian's `janus` (1.1.2) with a generated configuration in a temporary
  directory: the SIP plugin and the plain HTTP transport only, on the ports it is given, logs in
  that directory; `stop()` ends it.
- `JanusCall` is one app caller on the Janus API over HTTP: create a session, attach
  `janus.plugin.sip`, `register` as a guest (no REGISTER is sent; the INVITE is from
  `sip:<user>@<domain>` and goes to the PBX named in the target URI: Janus 1.1.2 ignores a
  guest's `proxy` and would send it to port 5060), `call` with aiortc's offer, `accepted` carries
  Janus's answer, and the call counts as connected when aiortc's ICE and DTLS are (the SDK's
  callers hear evtConnected at the same point). Janus 1.1.2's ICE does not pair with candidates
  on 127.0.0.1 (reference/testbed.md), so its callers offer the host's other addresses;
  `hangup`, `destroy`. Events arrive by long poll (GET /janus/<session>). One session per call,
  as a web app with a fresh page per call would do.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender

from . import rtcjitter, rtcprobe
from .reasons import DisconnectReason, Disconnected, Source

LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
PLUGINS_OFF = ("audiobridge", "duktape", "echotest", "lua", "nosip", "recordplay", "streaming", "textroom",
               "videocall", "videoroom", "voicemail")
TRANSPORTS_OFF = ("websockets", "mqtt", "nanomsg", "pfunix", "rabbitmq")


class JanusError(Exception):
    """Janus is not installed, did not start, or refused a request."""


class JanusServer:
    """`janus` in the background with only the SIP plugin and HTTP, on the given ports."""

    def __init__(self, http_port: int, rtp_ports: str, sip_rtp_ports: str, *, lib: Path = LIB) -> None:
        self.http_port = http_port
        self.url = f"http://127.0.0.1:{http_port}/janus"
        self.rtp_ports, self.sip_rtp_ports = rtp_ports, sip_rtp_ports
        self.lib = lib
        self.proc: subprocess.Popen | None = None
        self.dir: Path | None = None

    def _write_config(self, d: Path) -> None:
        lib = self.lib
        (d / "janus.jcfg").write_text(
            f'general: {{ configs_folder = "{d}", plugins_folder = "{lib}/plugins", '
            f'transports_folder = "{lib}/transports", events_folder = "{lib}/events", '
            f'loggers_folder = "{lib}/loggers", debug_level = 3, session_timeout = 60 }}\n'
            f'certificates: {{}}\nmedia: {{ rtp_port_range = "{self.rtp_ports}" }}\n'
            'nat: { ice_ignore_list = "vmnet" }\n'
            f'plugins: {{ disable = "{",".join(f"libjanus_{p}.so" for p in PLUGINS_OFF)}" }}\n'
            f'transports: {{ disable = "{",".join(f"libjanus_{t}.so" for t in TRANSPORTS_OFF)}" }}\n'
            'loggers: { disable = "libjanus_jsonlog.so" }\nevents: { broadcast = false }\n')
        (d / "janus.transport.http.jcfg").write_text(
            f'general: {{ json = "compact", base_path = "/janus", http = true, port = {self.http_port}, '
            'ip = "127.0.0.1", https = false }\nadmin: { admin_http = false, admin_https = false }\n')
        (d / "janus.plugin.sip.jcfg").write_text(
            'general: { local_ip = "127.0.0.1", keepalive_interval = 0, behind_nat = false, '
            f'register_ttl = 3600, rtp_port_range = "{self.sip_rtp_ports}", sip_timer_t1x64 = 32000 }}\n')

    async def start(self, timeout: float = 10.0) -> "JanusServer":
        exe = shutil.which("janus")
        if exe is None or not (self.lib / "plugins" / "libjanus_sip.so").exists():
            raise JanusError("Janus with its SIP plugin is not installed (Debian: apt-get install janus)")
        self.dir = Path(tempfile.mkdtemp(prefix="bridge-janus-"))
        self._write_config(self.dir)
        self.proc = subprocess.Popen([exe, "-C", str(self.dir / "janus.jcfg"), "-F", str(self.dir), "-o"],
                                     stdout=open(self.dir / "janus.log", "w"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.post(self.url, json={"janus": "info", "transaction": "up"}) as r:
                        info = await r.json(content_type=None)
                        if "janus.plugin.sip" in info.get("plugins", {}):
                            self.info = info
                            return self
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = self.log()[-1500:]
                    self.stop()
                    raise JanusError(f"janus did not come up on {self.url}:\n{log}")
                await asyncio.sleep(0.1)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "janus.log").read_text(errors="replace") if self.dir else ""
        return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


_transactions = itertools.count(1)


class JanusCall:
    """One caller through Janus's SIP plugin, with the surface of the SDK's Call the load test
    uses (make_call, codec, state, hook_receiver, tap_peer_packets, inbound_stats, end_call)."""

    def __init__(self, janus_url: str, domain: str) -> None:
        self.url = janus_url
        self.domain = domain
        self.codec = ""
        self.state = "idle"
        self._http: aiohttp.ClientSession | None = None
        self._session: str | None = None
        self._handle: str | None = None
        self._pc: RTCPeerConnection | None = None
        self._delegate: Any = None
        self._events: asyncio.Queue = asyncio.Queue()
        self._poller: asyncio.Task | None = None
        self._drains: list[asyncio.Task] = []

    async def _post(self, path: str, body: dict) -> dict:
        assert self._http is not None
        body = {**body, "transaction": str(next(_transactions))}
        async with self._http.post(self.url + path, json=body) as r:
            answer = await r.json(content_type=None)
        if answer.get("janus") == "error":
            raise JanusError(f"{body['janus']}: {answer.get('error')}")
        return answer

    async def _message(self, request: dict, jsep: dict | None = None) -> None:
        body: dict = {"janus": "message", "body": request}
        if jsep is not None:
            body["jsep"] = jsep
        await self._post(f"/{self._session}/{self._handle}", body)

    async def _poll(self) -> None:
        """Long-poll the session's events into the queue until the session is gone."""
        assert self._http is not None
        while True:
            try:
                async with self._http.get(f"{self.url}/{self._session}?maxev=5",
                                          timeout=aiohttp.ClientTimeout(total=40)) as r:
                    events = await r.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                await asyncio.sleep(0.2)
                continue
            for event in events if isinstance(events, list) else [events]:
                self._events.put_nowait(event)

    async def _next(self, wanted: Callable[[dict], bool], timeout: float) -> dict:
        """The next plugin event (or hangup) that `wanted` accepts; a hangup ends the wait."""
        async with asyncio.timeout(timeout):
            while True:
                ev = await self._events.get()
                data = ev.get("plugindata", {}).get("data", {})
                result = data.get("result", {}) if isinstance(data.get("result"), dict) else {}
                if ev.get("janus") == "hangup" or result.get("event") == "hangup" or "error" in data:
                    raise JanusError(f"janus: {data.get('error') or result.get('reason') or ev.get('reason')}")
                if wanted(ev):
                    return ev

    async def make_call(self, params: Any, *, target: str, setup_timeout: float = 30.0) -> None:
        """Register as params.my_id (guest), call `target` (a SIP URI with the PBX's address and
        port) with params.audio; the
        delegate hears evt_wait_connected (Janus took the call) and evt_connected (answered)."""
        self.state = "calling"
        self._delegate = params.delegate
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._session = (await self._post("", {"janus": "create"}))["data"]["id"]
        self._handle = (await self._post(f"/{self._session}", {"janus": "attach",
                                                               "plugin": "janus.plugin.sip"}))["data"]["id"]
        self._poller = asyncio.ensure_future(self._poll())
        await self._message({"request": "register", "type": "guest",
                             "username": f"sip:{params.my_id}@{self.domain}", "display_name": params.my_id})
        await self._next(lambda e: _result(e) == "registered", 10)

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._pc = pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._drains.append(asyncio.ensure_future(_drain(track)))
        transceiver = pc.addTransceiver(params.audio, direction="sendrecv")
        rtcjitter.no_send_history(transceiver.sender)
        transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("audio").codecs
                                         if c.mimeType == "audio/PCMU"])
        self.codec = "PCMU"           # the only codec offered: known before the first frame is sent
        await pc.setLocalDescription(await pc.createOffer())
        await self._message({"request": "call", "uri": target},
                            {"type": "offer", "sdp": pc.localDescription.sdp})
        await self._next(lambda e: _result(e) == "calling", 10)
        self._delegate.evt_wait_connected()
        answer = await self._next(lambda e: _result(e) == "accepted", setup_timeout)
        await pc.setRemoteDescription(RTCSessionDescription(answer["jsep"]["sdp"], "answer"))
        async with asyncio.timeout(setup_timeout):      # answered; connected once ICE and DTLS are
            while pc.connectionState != "connected":
                if pc.connectionState in ("failed", "closed"):
                    raise JanusError(f"media connection {pc.connectionState}")
                await asyncio.sleep(0.005)
        self.state = "connected"
        self._delegate.evt_connected()
        self._watch = asyncio.ensure_future(self._watch_hangup())

    async def _watch_hangup(self) -> None:
        """A hangup from the far side (or Janus) while the call is up: evtDisconnected."""
        with contextlib.suppress(JanusError, asyncio.TimeoutError):
            await self._next(lambda e: False, 24 * 3600)
        if self.state == "connected":
            self.state = "disconnected"
            self._delegate.evt_disconnected(Disconnected(Source.CALLEE, DisconnectReason.NORMAL))

    def hook_receiver(self, on_packet: Callable) -> bool:
        return rtcprobe.stamp_arrivals(self._pc, on_packet) if self._pc is not None else False

    def tap_peer_packets(self, sink: Callable) -> None:
        receivers = [r for r in self._pc.getReceivers() if r.track.kind == "audio"] if self._pc else []
        if not receivers:
            raise RuntimeError("no negotiated audio to tap yet")
        rtcjitter.tap(receivers[0], sink)

    async def inbound_stats(self) -> dict:
        return await rtcprobe.inbound_stats(self._pc, 8) if self._pc is not None else {}     # PCMU: 8 kHz

    async def end_call(self) -> None:
        """Hang up (Janus sends BYE), close the peer connection, destroy the session."""
        self.state = "disconnected"
        watch = getattr(self, "_watch", None)
        if watch is not None:
            watch.cancel()
        with contextlib.suppress(Exception):
            if self._handle is not None:
                await self._message({"request": "hangup"})
                with contextlib.suppress(JanusError, asyncio.TimeoutError):
                    await self._next(lambda e: False, 3)       # until Janus says hangup
        for t in [*self._drains, self._poller]:
            if t is not None:
                t.cancel()
        if self._pc is not None:
            await self._pc.close()
        with contextlib.suppress(Exception):
            if self._session is not None:
                await self._post(f"/{self._session}", {"janus": "destroy"})
        if self._http is not None:
            await self._http.close()


class JanusProbe:
    """What the load test reads of the gateway (BridgeProbe's surface): Janus's pid; it has no
    /metrics, so the bridge-only figures (setup histograms, frame counters, loop lag) stay empty."""

    def __init__(self, server: JanusServer) -> None:
        self.server = server
        self.base = server.url
        self.pid = server.pid
        self.pids = [server.pid]

    async def __aenter__(self) -> "JanusProbe":
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def health(self) -> tuple[int, dict]:
        alive = self.server.proc is not None and self.server.proc.poll() is None
        return (200 if alive else 503), {"pid": self.pid, "bridged_calls": 0, "gateway": "janus",
                                         "version": self.server.info.get("version_string")}

    async def metrics(self) -> dict:
        return {"setup": {}, "frames": {}, "calls": {}, "loop_lag": {}, "gc": {}}

    async def redis_idle(self) -> None:
        pass

    async def redis_delta(self) -> None:
        return None


def _result(event: dict) -> str | None:
    result = event.get("plugindata", {}).get("data", {}).get("result")
    return result.get("event") if isinstance(result, dict) else None


async def _drain(track: MediaStreamTrack) -> None:
    """Read the remote track (aiortc queues decoded frames without bound otherwise)."""
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return
