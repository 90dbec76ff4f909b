"""Drive sipp (Debian ``sip-tester``) against the test bed."""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .proc import HOST, ManagedProcess, free_port, require_binary

HERE = Path(__file__).parent
UAC_INVITE_TEMPLATE = HERE / "sipp_uac_invite.xml"


@dataclass
class SippResult:
    returncode: int
    workdir: Path
    log_path: Path
    message_log: Path
    error_log: Path
    duration: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def messages(self) -> str:
        try:
            return self.message_log.read_text(errors="replace")
        except OSError:
            return ""

    def status_codes(self) -> list[int]:
        """Status codes of all responses sipp received, in order (from -trace_msg)."""
        return [int(c) for c in re.findall(r"(?m)^\s*SIP/2\.0 (\d{3}) ", self.received_text())]

    def received_text(self) -> str:
        # sipp's message log: a "----- <timestamp>" line, then "UDP message received [N] bytes :"
        blocks = re.split(r"(?m)^-{10,} .*$", self.messages())
        return "\n".join(b for b in blocks if re.match(r"\s*\S+ message received", b))

    def describe(self) -> str:
        def tail(p: Path, n: int = 60) -> str:
            try:
                return "\n".join(p.read_text(errors="replace").splitlines()[-n:])
            except OSError:
                return "<none>"
        return (f"sipp rc={self.returncode} in {self.duration:.1f}s (workdir {self.workdir})\n"
                f"--- errors ---\n{tail(self.error_log)}\n--- messages ---\n{tail(self.message_log)}\n"
                f"--- screen/log ---\n{tail(self.log_path, 30)}")


def render_uac_invite(expect: int, workdir) -> Path:
    """Write sipp_uac_invite.xml with the expected final status filled in."""
    if not (300 <= int(expect) <= 699):
        raise ValueError("sipp_uac_invite.xml handles failure responses (3xx-6xx) only")
    out = Path(workdir) / f"uac_invite_expect_{int(expect)}.xml"
    text = UAC_INVITE_TEMPLATE.read_text()
    if int(expect) == 407:  # the challenge itself is the expected answer: do not answer it
        text = text.replace('  <recv response="407" optional="true" auth="true" next="auth"/>\n', "")
    out.write_text(text.replace("@@EXPECT@@", str(int(expect))))
    return out


class SippProcess:
    """One sipp run (UAC with a target, or UAS when ``target_port`` is None) in its own dir."""

    def __init__(self, scenario, target_port: Optional[int] = None, *, service: str = "service",
                 calls: int = 1, auth: Optional[tuple[str, str]] = None, keys: Optional[dict] = None,
                 extra_args: Sequence[str] = (), timeout: float = 15.0, workdir=None,
                 local_port: Optional[int] = None, target_host: str = HOST):
        exe = require_binary("sipp")
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sipp-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.local_port = local_port or free_port()
        self.timeout = timeout
        self.msg_log = self.workdir / "messages.log"
        self.err_log = self.workdir / "errors.log"
        argv = [exe]
        if target_port is not None:
            argv.append(f"{target_host}:{target_port}")
        argv += ["-sf", str(scenario), "-s", service,
                 "-i", HOST, "-p", str(self.local_port), "-mp", str(free_port(span=4, step=2)),
                 "-m", str(calls), "-l", str(max(1, calls)), "-nostdin",
                 "-timeout", f"{int(max(1, timeout - 2))}s", "-timeout_error",
                 "-recv_timeout", f"{int(max(1, timeout - 3)) * 1000}",
                 "-trace_msg", "-message_file", str(self.msg_log),
                 "-trace_err", "-error_file", str(self.err_log)]
        if auth:
            argv += ["-au", auth[0], "-ap", auth[1]]
        for k, v in (keys or {}).items():
            argv += ["-key", str(k), str(v)]
        argv += list(extra_args)
        self.proc = ManagedProcess(f"sipp:{Path(scenario).name}", argv, self.workdir / "sipp.log", cwd=self.workdir)
        self._t0 = 0.0
        self.result: Optional[SippResult] = None

    def start(self) -> "SippProcess":
        self._t0 = time.monotonic()
        self.proc.start()
        return self

    def wait(self, timeout: Optional[float] = None) -> SippResult:
        """Wait for sipp to finish (killed after ``timeout``, default the run's timeout)."""
        if self.result is not None:
            return self.result
        try:
            rc = self.proc.proc.wait(self.timeout if timeout is None else timeout)
        except Exception:
            rc = -9
        finally:
            self.proc.stop(timeout=1.0)
        self.result = SippResult(rc, self.workdir, self.proc.log_path, self.msg_log, self.err_log,
                                 time.monotonic() - self._t0)
        return self.result

    def stop(self) -> Optional[SippResult]:
        if self.proc.proc is None:
            return None
        return self.wait(timeout=0)


def run_sipp(scenario, target_port: Optional[int], **kw) -> SippResult:
    """Run sipp once to completion (killed after ``timeout``) and return its result.

    ``scenario``: path of an XML scenario; ``service``: Request-URI user (``-s``);
    ``auth=(user, password)`` -> ``-au/-ap``; ``keys`` -> ``-key k v`` (``[k]`` in the XML).
    sipp runs in its own temp dir with -trace_msg/-trace_err; never raises on failure,
    check ``result.ok`` / ``result.describe()``.
    """
    return SippProcess(scenario, target_port, **kw).start().wait()


def sipp_invite_expect(kamailio_port: int, to_ext: str, expect: int, *, from_user: str = "sipp",
                       auth: Optional[tuple[str, str]] = None, workdir=None, timeout: float = 15.0) -> SippResult:
    """sipp UAC: INVITE ``to_ext`` through the proxy, pass if the final answer is ``expect``."""
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sipp-"))
    workdir.mkdir(parents=True, exist_ok=True)
    scen = render_uac_invite(expect, workdir)
    return run_sipp(scen, kamailio_port, service=to_ext, auth=auth, keys={"from_user": from_user},
                    workdir=workdir, timeout=timeout)


REGISTER_SCENARIO = HERE / "sipp_register.xml"
UAS_REPLY_TEMPLATE = HERE / "sipp_uas_reply.xml"


class RegisteredUas:
    """A sipp UAS scenario registered at the test-bed Kamailio as extension ``ext``.

    start() launches the UAS (one call) on a free port and registers ``ext`` -> that port with a
    second, short sipp run (digest auth with the Kamailio user table); wait() -> SippResult once
    the call is done; stop() kills it (also done by the fixture).
    """

    def __init__(self, kamailio, ext: str, scenario: Path, *, timeout: float, workdir: Path):
        self.kamailio = kamailio
        self.ext = str(ext)
        self.workdir = workdir
        self.uas = SippProcess(scenario, None, timeout=timeout, workdir=self.workdir / "uas")
        self.register_result: Optional[SippResult] = None

    @property
    def port(self) -> int:
        return self.uas.local_port

    def start(self):
        self.uas.start()
        self.register_result = run_sipp(
            REGISTER_SCENARIO, self.kamailio.port, auth=(self.ext, self.kamailio.users[self.ext]),
            keys={"from_user": self.ext, "contact_port": self.port, "expires": 300},
            timeout=10.0, workdir=self.workdir / "register")
        if not self.register_result.ok:
            self.stop()
            import pytest
            pytest.fail(f"test bed: sipp REGISTER of {self.ext} failed\n{self.register_result.describe()}",
                        pytrace=False)
        if not self.uas.proc.running:
            self.uas.proc.fail("sipp UAS exited early")
        return self

    def wait(self, timeout: Optional[float] = None) -> SippResult:
        return self.uas.wait(timeout)

    def stop(self) -> Optional[SippResult]:
        return self.uas.stop()


EARLY_MEDIA_TEMPLATE = HERE / "sipp_uas_early_media.xml"


class SippUas(RegisteredUas):
    """A "desk phone" that declines with any status: sipp UAS registered as ``ext``.

    ``SippUas(kamailio, ext, code=603, reason="Decline", ring_ms=300, workdir=None)``: a call to
    ``ext`` gets 100, 180, and after ``ring_ms`` the final ``code reason``.
    (baresip 1.0.0 can only reject with 486, see baresip.py.)
    """

    def __init__(self, kamailio, ext: str, code: int = 603, reason: str = "Decline", *,
                 ring_ms: int = 300, timeout: float = 30.0, workdir=None, early_media: bool = False):
        if not (300 <= int(code) <= 699):
            raise ValueError("SippUas sends failure codes (3xx-6xx) only")
        self.code = int(code)
        workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"sipp-uas-{ext}-"))
        workdir.mkdir(parents=True, exist_ok=True)
        scen = workdir / f"uas_reply_{self.code}.xml"
        template = EARLY_MEDIA_TEMPLATE if early_media else UAS_REPLY_TEMPLATE
        scen.write_text(template.read_text().replace("@@CODE@@", str(self.code))
                        .replace("@@REASON@@", reason).replace("@@RING_MS@@", str(int(ring_ms))))
        super().__init__(kamailio, ext, scen, timeout=timeout, workdir=workdir)
