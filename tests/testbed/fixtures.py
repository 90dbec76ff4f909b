"""pytest fixtures for the SIP test bed.

Use them from a test module with::

    from tests.testbed.fixtures import *  # noqa: F401,F403  (kamailio, baresip_factory, ...)

(or import the names you need).  All fixtures are function-scoped: every test gets fresh
processes on fresh ports, each in its own directory under the test's ``tmp_path``, and
everything is stopped at teardown even when the test fails.  At teardown the tail of each
process log is printed, so a failing test shows it under "Captured stdout teardown".

Fixtures:
  kamailio_factory(users=None, *, invite_auth=True, port=None, start=True) -> Kamailio
  kamailio          started Kamailio, DEFAULT_USERS, INVITE proxy-auth (407) on
  kamailio_noauth   started Kamailio, DEFAULT_USERS, INVITE proxy-auth off
  baresip_factory(ext, kamailio, *, password=None, answermode="auto", tone_hz=None,
                  source_wav=None, regint=10, start=True, wait_registered=True, **kw) -> Baresip
  linphone_factory(ext, kamailio, *, codecs=("PCMU",), tone_hz=None, autoanswer=True, **kw) -> Linphone
  redis_server      started Redis (tests/testbed/redis.py), no persistence
  sipp              SippRunner: .invite_expect(kamailio, to_ext, expect, ...) -> SippResult,
                    .uas(kamailio, ext, code=603, reason="Decline") -> started SippUas,
                    .run(scenario, target_port, ...) -> SippResult
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from .baresip import Baresip
from .kamailio import DEFAULT_USERS, Kamailio
from .linphone import Linphone
from .proc import stop_all
from .sipp import SippResult, SippUas, run_sipp, sipp_invite_expect

__all__ = ["kamailio_factory", "kamailio", "kamailio_noauth", "baresip_factory", "linphone_factory", "sipp",
           "SippRunner", "redis_server"]


def _dump(title: str, text: str) -> None:
    print(f"\n===== {title} =====\n{text}")


@pytest.fixture
def kamailio_factory(tmp_path):
    made: list[Kamailio] = []

    def make(users: Optional[dict] = None, *, invite_auth: bool = True, port: Optional[int] = None,
             start: bool = True, **kw) -> Kamailio:   # kw: debug, dispatcher (see Kamailio)
        k = Kamailio(port, users, invite_auth=invite_auth,
                     workdir=tmp_path / f"kamailio-{len(made)}", **kw)
        made.append(k)
        if start:
            k.start()
        return k

    yield make
    for k in made:
        _dump(f"kamailio:{k.port} log tail ({k.workdir})", k.log_tail(60))
    errors = []
    for k in reversed(made):
        try:
            k.stop()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def kamailio(kamailio_factory) -> Kamailio:
    """A started Kamailio with DEFAULT_USERS and 407 proxy-auth on new INVITEs."""
    return kamailio_factory(DEFAULT_USERS, invite_auth=True)


@pytest.fixture
def kamailio_noauth(kamailio_factory) -> Kamailio:
    """A started Kamailio with DEFAULT_USERS; INVITEs are routed without a 407 challenge."""
    return kamailio_factory(DEFAULT_USERS, invite_auth=False)


@pytest.fixture
def baresip_factory(tmp_path, kamailio_factory):
    # depends on kamailio_factory so phones are stopped (and un-register) before the registrar
    made: list[Baresip] = []

    def make(ext: str, kamailio: Kamailio, *, password: Optional[str] = None, answermode: str = "auto",
             tone_hz: Optional[float] = None, source_wav=None, regint: int = 10, start: bool = True,
             wait_registered: bool = True, **kw) -> Baresip:
        ext = str(ext)
        if password is None:
            password = kamailio.users[ext]
        kw.setdefault("registrar_host", kamailio.host)
        port = kamailio.tls_port if kw.get("transport") == "tls" else kamailio.port   # TLS: Kamailio's TLS port
        b = Baresip(ext, password, port, answermode=answermode, tone_hz=tone_hz,
                    source_wav=source_wav, regint=regint,
                    workdir=tmp_path / f"baresip-{ext}-{len(made)}", **kw)
        made.append(b)
        if start:
            b.start(wait_registered=wait_registered)
        return b

    yield make
    for b in made:
        _dump(f"baresip {b.ext} (sip {b.sip_port}) log tail ({b.workdir})", b.log_tail(40))
    errors = []
    for b in reversed(made):
        try:
            b.stop()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def linphone_factory(tmp_path, kamailio_factory):
    # depends on kamailio_factory so phones are stopped (and un-register) before the registrar
    made: list[Linphone] = []

    def make(ext: str, kamailio: Kamailio, *, password: Optional[str] = None, start: bool = True,
             **kw) -> Linphone:
        ext = str(ext)
        port = kamailio.tls_port if kw.get("transport") == "tls" else kamailio.port
        phone = Linphone(ext, kamailio.users[ext] if password is None else password, port,
                         workdir=tmp_path / f"linphone-{ext}-{len(made)}", **kw)
        made.append(phone)
        if start:
            phone.start()
        return phone

    yield make
    for phone in made:
        _dump(f"linphonec {phone.ext} (sip {phone.sip_port}) output tail ({phone.workdir})", phone.log_tail(40))
    stop_all(reversed(made))


class SippRunner:
    """Runs sipp in per-run directories under the test's tmp_path; see tests/testbed/sipp.py."""

    def __init__(self, base: Path):
        self.base = base
        self.results: list[SippResult] = []
        self.uases: list[SippUas] = []
        self._n = 0

    def _dir(self) -> Path:
        self._n += 1
        d = self.base / f"sipp-{self._n}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def run(self, scenario, target_port: int, **kw) -> SippResult:
        r = run_sipp(scenario, target_port, workdir=self._dir(), **kw)
        self.results.append(r)
        return r

    def invite_expect(self, kamailio: Kamailio, to_ext: str, expect: int, *, from_user: str = "sipp",
                      auth: Optional[tuple[str, str]] = None, timeout: float = 15.0) -> SippResult:
        """One INVITE to ``to_ext`` via ``kamailio``; ok if the final answer is ``expect`` (3xx-6xx).
        With ``auth=(user, pw)`` a 407 challenge is answered once."""
        r = sipp_invite_expect(kamailio.port, to_ext, expect, from_user=from_user, auth=auth,
                               workdir=self._dir(), timeout=timeout)
        self.results.append(r)
        return r


    def uas(self, kamailio: Kamailio, ext: str, code: int = 603, reason: str = "Decline", *,
            ring_ms: int = 300, timeout: float = 30.0, early_media: bool = False) -> SippUas:
        """Start a sipp UAS registered as ``ext`` that declines one call with ``code``
        (after a 183 with SDP, with ``early_media``)."""
        u = SippUas(kamailio, ext, code, reason, ring_ms=ring_ms, timeout=timeout, workdir=self._dir(),
                    early_media=early_media)
        self.uases.append(u)
        return u.start()


@pytest.fixture
def sipp(tmp_path, kamailio_factory):
    # depends on kamailio_factory so UAS processes stop before the registrar
    runner = SippRunner(tmp_path)
    yield runner
    for u in runner.uases:
        r = u.stop()
        if r is not None:
            runner.results.append(r)
    for r in runner.results:
        if not r.ok:
            _dump(f"sipp run in {r.workdir}", r.describe())


@pytest.fixture
def redis_server(tmp_path):
    """A started Redis on a free port (no persistence); stopped at teardown."""
    from .redis import RedisServer
    server = RedisServer(tmp_path / "redis").start()
    yield server
    _dump(f"redis:{server.port} log tail", server.log_tail())
    server.stop()
