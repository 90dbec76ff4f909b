"""`bridge doctor -c FILE`: is this setup ready to run? Each check prints OK, WARN or FAIL with
what to fix; the exit status is 1 if any check failed, else 0 (a config that does not load is
the CLI's exit 2, every error with file and line).

The checks, in order (a check that needs an earlier one is SKIPped when that one failed):
- config (production refusals of `bridge run` beyond loopback) and secrets (unset `*_env` variables);
- SIP listen address: `sip.listen` bindable, or held by a bridge that answers SIP (a running one);
- PBX: `sip.registrar` resolved as the daemon does (`bridge.sip.resolver.Resolver`, RFC 3263),
  then an OPTIONS from a short-lived user agent on a free port: any answer means reachable;
- registration: that user agent registers with the account (a second binding of the account,
  removed again at the end; no crash journal); the registrar's refusal is shown as it answered;
- RTP ports: every pair of `sip.rtp_ports` test-bound on `sip.rtp_host`; none free fails, fewer
  than `bridge.max_calls` warns;
- platform: embedded, `platform.listen` bindable (or served by a running bridge); remote, its
  public URL answers HTTP; the notification listener likewise;
- ICE addresses: each of `webrtc.ice_addresses` is an address of this host;
- codecs (when G.722 is listed): its encoder is spandsp's; FFmpeg's instead (no `libspandsp2`) warns.
Nothing here changes the setup: sockets are bound and closed, the registration is removed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import socket
import time
from dataclasses import dataclass

import aiohttp

from . import g722, production
from .config import Config, SipConfig
from .logsafe import safe
from .sip import UserAgent
from .sip.message import Request, new_call_id, new_tag
from .sip.resolver import ResolveError, Resolver
from .sip.uri import hostport

OPTIONS_TIMEOUT = 2.0
REGISTER_WAIT = 8.0
HTTP_TIMEOUT = 3.0


@dataclass
class Check:
    name: str
    status: str           # OK, WARN, FAIL, SKIP
    text: str


class Doctor:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.checks: list[Check] = []
        self.sip_taken = False

    def add(self, name: str, status: str, text: str) -> None:
        check = Check(name, status, text)
        self.checks.append(check)
        print(f"  {status:<5} {name:<16} {text}", flush=True)

    async def run(self) -> int:
        cfg = self.cfg
        print(f"bridge doctor: {cfg.path}", flush=True)
        self.config()
        if cfg.sip is not None:
            self.sip_listen(cfg.sip)
            await self.pbx(cfg.sip)
            self.rtp_ports(cfg.sip)
        else:
            self.add("SIP", "SKIP", "no sip section: the platform alone")
        await self.platform()
        self.ice()
        self.codecs()
        failed = [c for c in self.checks if c.status == "FAIL"]
        print(f"{len(failed)} problem(s): " + ", ".join(c.name for c in failed) if failed else
              "every check passed", flush=True)
        return 1 if failed else 0

    # --- the checks ------------------------------------------------------------------------

    def config(self) -> None:
        cfg = self.cfg
        exposed = production.exposure(cfg)
        refused = production.problems(cfg) if exposed else []
        unset = sorted({s.env_name for s in cfg.secrets if s.env_name and s.source == "inline"})
        if unset:
            self.add("secrets", "WARN", f"{len(unset)} *_env variable(s) unset, the config's inline values are "
                     f"used: {', '.join(unset)} (fine on loopback; `bridge check-config` names each key)")
        if refused:
            self.add("config", "FAIL", f"`bridge run` would refuse it beyond loopback ({', '.join(exposed)}): "
                     + "; ".join(refused))
            return
        self.add("config", "OK", f"{len(cfg.platform.services)} services, {len(cfg.router.to_sip)} app->SIP and "
                 f"{len(cfg.router.to_app)} SIP->app routes")

    def sip_listen(self, sip: SipConfig) -> None:
        where = hostport(sip.bind_host, sip.bind_port) + ("" if sip.bind_port else " (any free port)")
        problem = _bind(socket.SOCK_DGRAM if sip.transport == "udp" else socket.SOCK_STREAM, sip.bind_host,
                        sip.bind_port)
        if problem is None:
            self.add("SIP listen", "OK", f"{sip.transport} {where} is free")
        elif problem == errno.EADDRINUSE:
            self.sip_taken = True                  # the PBX check asks who holds it
        else:
            self.add("SIP listen", "FAIL", f"cannot listen on {sip.transport} {where}: {_strerror(problem)} "
                     "(is it an address of this host? see sip.listen)")

    async def pbx(self, sip: SipConfig) -> None:
        registrar = hostport(sip.registrar_host, sip.registrar_port) if sip.registrar_port else sip.registrar_host
        family = socket.AF_INET6 if ":" in sip.bind_host else socket.AF_INET
        try:
            found = await Resolver(family, sip.dns_servers).resolve(sip.registrar_host, sip.registrar_port,
                                                                     sip.transport)
        except ResolveError as exc:
            self.add("PBX", "FAIL", f"sip.registrar {registrar} does not resolve: {safe(exc)}")
            self.add("registration", "SKIP", "no PBX address")
            return
        probe = dataclasses.replace(sip, bind_port=0, register=True, journal=None, keepalive=3600.0,
                                    transaction_timeout=OPTIONS_TIMEOUT, max_backoff=REGISTER_WAIT)
        ua = UserAgent(probe)
        try:
            await ua.start()
        except OSError as exc:
            self.add("PBX", "FAIL", f"cannot open a SIP socket on {sip.bind_host}: {exc.strerror}")
            self.add("registration", "SKIP", "no SIP socket")
            return
        try:
            if self.sip_taken:
                await self._who_listens(ua, sip)
            dest = found[0]
            started = time.monotonic()
            domain = hostport(sip.domain)
            request = Request("OPTIONS", f"sip:{domain}", ua.via(), f"<sip:{sip.username}@{domain}>;tag={new_tag()}",
                              f"<sip:{domain}>", new_call_id(sip.contact_host), 1,
                              headers=[("Accept", "application/sdp")])
            reply = await ua.layer.request(request, dest, timeout=OPTIONS_TIMEOUT).next()
            shown = f"{registrar} ({hostport(*dest)})" if hostport(*dest) != registrar else registrar
            if reply is None:
                self.add("PBX", "FAIL", f"{shown} does not answer SIP OPTIONS within {OPTIONS_TIMEOUT:g} s: is the "
                         f"PBX up, sip.registrar right, and {sip.transport.upper()} open between here and there?")
                self.add("registration", "SKIP", "the PBX does not answer")
                return
            self.add("PBX", "OK", f"{shown} answers OPTIONS: {reply.code} {safe(reply.reason, 60)} "
                     f"in {1000 * (time.monotonic() - started):.0f} ms")
            await self._registration(ua, sip)
        finally:
            await ua.stop()

    async def _who_listens(self, ua: UserAgent, sip: SipConfig) -> None:
        """sip.listen is taken: by a running bridge (it answers SIP as `bridge`), or by another program."""
        where = hostport(sip.bind_host, sip.bind_port)
        request = Request("OPTIONS", f"sip:{where}", ua.via(),
                          f"<sip:doctor@{hostport(sip.domain)}>;tag={new_tag()}",
                          f"<sip:{where}>", new_call_id(sip.contact_host), 1)
        reply = await ua.layer.request(request, (sip.bind_host, sip.bind_port), timeout=1.0).next()
        if reply is not None and reply.first("Server") == "bridge":
            self.add("SIP listen", "OK", f"{sip.transport} {where} is served by a running bridge")
        else:
            self.add("SIP listen", "FAIL", f"{sip.transport} {where} is taken by another program: stop it, or "
                     "change sip.listen")

    async def _registration(self, ua: UserAgent, sip: SipConfig) -> None:
        deadline = time.monotonic() + REGISTER_WAIT
        reg = ua.registration
        while reg.state != "registered" and time.monotonic() < deadline:
            if reg.state == "failed" and "not answering" not in reg.detail:
                break
            await asyncio.sleep(0.05)
        account = f"{sip.username}@{hostport(sip.domain)}" + (f" (auth user {sip.auth_username})"
                                                    if sip.auth_username != sip.username else "")
        if reg.state == "registered":
            self.add("registration", "OK", f"{account} registered {reg.detail} (a test binding, removed again)")
        else:
            self.add("registration", "FAIL", f"{account}: {reg.detail or reg.state}")

    def rtp_ports(self, sip: SipConfig) -> None:
        pairs = range(sip.rtp_low + (sip.rtp_low & 1), sip.rtp_high, 2)
        free, other = 0, None
        for port in pairs:
            problem = _bind(socket.SOCK_DGRAM, sip.rtp_host, port) or _bind(socket.SOCK_DGRAM, sip.rtp_host, port + 1)
            if problem is None:
                free += 1
            elif problem != errno.EADDRINUSE:
                other = problem
                break
        span = f"{sip.rtp_low}-{sip.rtp_high} on {sip.rtp_host}"
        need = self.cfg.bridge.max_calls if self.cfg.bridge else 1
        if other is not None:
            self.add("RTP ports", "FAIL", f"cannot bind {span}: {_strerror(other)} (sip.rtp_host must be an "
                     "address of this host)")
        elif free == 0:
            self.add("RTP ports", "FAIL", f"all {len(pairs)} port pairs of {span} are taken by other programs: "
                     "stop them, or give sip.rtp_ports another range")
        elif free < need:
            self.add("RTP ports", "WARN", f"{free} of {len(pairs)} pairs of {span} are free: fewer than "
                     f"bridge.max_calls ({need}); widen sip.rtp_ports")
        else:
            taken = len(pairs) - free
            self.add("RTP ports", "OK", f"{free} of {len(pairs)} pairs of {span} are free"
                     + (f" ({taken} taken by other programs)" if taken else ""))

    async def platform(self) -> None:
        p = self.cfg.platform
        if p.embedded:
            await self._listener("platform", p.host, p.port, f"{p.public_url}/sdk/planetkit.js", "platform.listen")
        else:
            url = f"{p.public_url.rstrip('/')}/sdk/planetkit.js"
            answer = await _http_get(url)
            if isinstance(answer, str):
                self.add("platform", "FAIL", f"{p.public_url} is unreachable ({answer}): start the platform "
                         "(`bridge platform`) or fix platform.public_url")
            else:
                self.add("platform", "OK", f"{p.public_url} answers HTTP {answer[0]}"
                         + (" (a bridge platform)" if answer[1] == "bridge" else ""))
        n = self.cfg.notifications
        if n is not None and self.cfg.bridge is not None:
            await self._listener("notifications", n.host, n.port, f"http://{hostport(n.host, n.port)}/healthz",
                                 "notifications.listen")

    async def _listener(self, name: str, host: str, port: int, probe_url: str, key: str) -> None:
        where = hostport(host, port)
        problem = _bind(socket.SOCK_STREAM, host, port)
        if problem is None:
            self.add(name, "OK", f"tcp {where} is free to listen on")
            return
        if problem != errno.EADDRINUSE:
            self.add(name, "FAIL", f"cannot listen on tcp {where}: {_strerror(problem)} (see {key})")
            return
        answer = await _http_get(probe_url)
        if not isinstance(answer, str) and answer[1] == "bridge":
            self.add(name, "OK", f"tcp {where} is served by a running bridge")
        else:
            self.add(name, "FAIL", f"tcp {where} is taken by another program: stop it, or change {key}")

    def ice(self) -> None:
        addresses = self.cfg.webrtc.ice_addresses
        if not addresses:
            self.add("ICE addresses", "OK", "every address of this host (webrtc.ice_addresses: [])")
            return
        missing = [a for a in addresses if _bind(socket.SOCK_DGRAM, a, 0) is not None]
        if missing:
            self.add("ICE addresses", "FAIL", f"{', '.join(missing)} not assigned to this host: fix "
                     "webrtc.ice_addresses (`ip -brief address` lists this host's addresses)")
        else:
            self.add("ICE addresses", "OK", f"{', '.join(addresses)} assigned to this host")

    def codecs(self) -> None:
        cfg = self.cfg
        if g722.G722 not in (cfg.sip.codecs if cfg.sip else ()) + cfg.webrtc.codecs:
            return
        if g722.Encoder is g722.SpandspEncoder:
            self.add("codecs", "OK", "G.722 encoded by spandsp")
        else:
            self.add("codecs", "WARN", "G.722 encoded by FFmpeg through PyAV, ~3x the CPU a frame: "
                     "apt-get install libspandsp2")


def _bind(kind: int, host: str, port: int) -> int | None:
    """None if `host:port` can be bound, else the errno."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno or errno.EINVAL
    return None


def _strerror(code: int) -> str:
    return os.strerror(code)


async def _http_get(url: str) -> tuple[int, str] | str:
    """(status, Server header) of a GET, or why it failed."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)) as http:
            async with http.get(url, allow_redirects=False) as r:
                return r.status, r.headers.get("Server", "")
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        return safe(exc, 120) or type(exc).__name__


async def run(cfg: Config) -> int:
    return await Doctor(cfg).run()
