"""Proves the SIP test bed (tests/testbed/) works: Kamailio, baresip, sipp on 127.0.0.1.

Run: python -m pytest -q tests/test_testbed.py -x
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # make "tests.testbed" importable however pytest is started
    sys.path.insert(0, str(_ROOT))

from tests.testbed import REJECT_CODE, dominant_frequency, read_wav, tone_wav  # noqa: E402
from tests.testbed.audio import tone_samples, wav_dominant_frequency  # noqa: E402
from tests.testbed.fixtures import (  # noqa: E402,F401  (fixtures are used by name)
    baresip_factory,
    kamailio,
    kamailio_factory,
    kamailio_noauth,
    sipp,
)

SHORT_REGINT = 4  # seconds; a restarted Kamailio has the phones back within ~regint


def assert_tone(path: Path, freq: float, min_snr: float = 20.0, tol: float = 0.02) -> None:
    got, snr = wav_dominant_frequency(path)
    data, rate = read_wav(path)
    assert abs(got - freq) <= tol * freq, f"{path.name}: dominant {got:.1f} Hz, expected {freq} Hz (SNR {snr:.1f} dB)"
    assert snr >= min_snr, f"{path.name}: {got:.1f} Hz with SNR {snr:.1f} dB < {min_snr} dB"
    print(f"{path.name}: {got:.1f} Hz, SNR {snr:.1f} dB, {len(data) / rate:.1f} s recorded")


def talk(caller, callee, seconds: float, hangup_by: str = "caller") -> None:
    """caller dials callee's extension, the call runs ``seconds``, one side hangs up; both see the end."""
    m_caller, m_callee = caller.mark(), callee.mark()
    caller.dial(callee.ext)
    callee.wait_established(timeout=10, since=m_callee)
    caller.wait_established(timeout=10, since=m_caller)
    time.sleep(seconds)
    (caller if hangup_by == "caller" else callee).hangup()
    caller.wait_closed(timeout=5, since=m_caller)
    callee.wait_closed(timeout=5, since=m_callee)
    time.sleep(0.3)  # let sndfile close the WAVs


def test_audio_helpers(tmp_path):
    p = tone_wav(tmp_path / "t.wav", 1234.0, 1.0, rate=8000, dbfs=-13)
    data, rate = read_wav(p)
    assert rate == 8000 and len(data) == 8000
    assert abs(20 * np.log10(np.max(np.abs(data))) + 13) < 0.2
    f, snr = dominant_frequency(data, rate)
    assert abs(f - 1234.0) < 2 and snr > 60
    noisy = tone_samples(700, 2.0, dbfs=-20) / 32768.0 + np.random.default_rng(1).normal(0, 0.01, 16000)
    f, snr = dominant_frequency(noisy, 8000)
    assert abs(f - 700) < 2 and 15 < snr < 40


def test_register_digest(kamailio, baresip_factory):
    # (a) no credentials -> 401 with a digest challenge
    r = kamailio.register_without_auth("2001")
    assert r is not None, "no answer to REGISTER"
    assert r.status == 401, r.raw
    assert r.header("WWW-Authenticate", "").startswith("Digest "), r.raw
    assert not kamailio.registered("2001")
    # baresip answers the challenge and gets registered
    phone = baresip_factory("2001", kamailio)
    kamailio.wait_registered("2001", timeout=5)
    log = kamailio.log_text()
    assert "TESTBED REGISTER challenge for sip:2001@" in log
    assert phone.is_registered()
    # a wrong password is refused (401 again, baresip reports REGISTER_FAIL)
    bad = baresip_factory("2002", kamailio, password="wrong", wait_registered=False)
    # (its REGISTER_FAIL event fires before ctrl_tcp is connected: poll reginfo instead)
    deadline = time.monotonic() + 5
    while bad.reg_status() == "" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert bad.reg_status() == "ERR"
    assert not kamailio.registered("2002")
    assert "TESTBED REGISTER bad credentials for sip:2002@" in kamailio.log_text()


def test_call_tones_both_ways(kamailio, baresip_factory):
    # (b) 2002 (1000 Hz) dials 2001 (auto-answer, 700 Hz) through Kamailio with 407 proxy auth
    a = baresip_factory("2001", kamailio, answermode="auto", tone_hz=700)
    b = baresip_factory("2002", kamailio, tone_hz=1000)
    talk(b, a, seconds=6)
    log = kamailio.log_text()
    assert "TESTBED INVITE proxy challenge for sip:2002@" in log  # baresip handled the 407
    assert "TESTBED in-dialog BYE relayed" in log  # BYE followed the Record-Route
    assert_tone(a.latest_recording("dec"), 1000)  # 2001 heard 2002
    assert_tone(b.latest_recording("dec"), 700)  # 2002 heard 2001
    assert_tone(a.latest_recording("enc"), 700)


def test_reregister_after_kamailio_restart(kamailio, baresip_factory):
    # (c) registrations are in memory: after a restart the phones re-register within regint
    a = baresip_factory("2001", kamailio, tone_hz=700, regint=SHORT_REGINT)
    b = baresip_factory("2002", kamailio, tone_hz=1000, regint=SHORT_REGINT)
    port = kamailio.port
    kamailio.restart()
    assert kamailio.port == port and kamailio.running
    assert not kamailio.registered("2001") and not kamailio.registered("2002")
    t0 = time.monotonic()
    kamailio.wait_registered("2001", timeout=SHORT_REGINT + 6)
    kamailio.wait_registered("2002", timeout=SHORT_REGINT + 6)
    print(f"re-registered {time.monotonic() - t0:.1f} s after the restart")
    talk(b, a, seconds=4.5, hangup_by="callee")
    assert_tone(a.latest_recording("dec"), 1000)
    assert_tone(b.latest_recording("dec"), 700)


def test_sipp_invite_unregistered_gets_404(kamailio_noauth, kamailio, sipp):
    # (d) sipp as UAC through the proxy
    r = sipp.invite_expect(kamailio_noauth, "2999", 404)
    assert r.ok, r.describe()
    assert r.status_codes() == [404], r.describe()
    # with INVITE proxy-auth on: 407 challenge answered with -au/-ap, then 404
    r = sipp.invite_expect(kamailio, "2999", 404, from_user="2003", auth=("2003", kamailio.users["2003"]))
    assert r.ok, r.describe()
    assert r.status_codes() == [407, 404], r.describe()
    # without credentials the challenge is the final answer
    r = sipp.invite_expect(kamailio, "2999", 407, from_user="2003")
    assert r.ok and r.status_codes() == [407], r.describe()


def test_baresip_reject_and_ring(kamailio_noauth, baresip_factory):
    # baresip 1.0.0: hangup() on a ringing incoming call answers "486 Rejected"; manual
    # answermode otherwise rings until the caller gives up (CANCEL -> callee CALL_CLOSED)
    k = kamailio_noauth
    a = baresip_factory("2001", k, answermode="manual")
    b = baresip_factory("2002", k)
    m_a, m_b = a.mark(), b.mark()
    b.dial("2001")
    a.wait_incoming(since=m_a)
    b.expect_event("CALL_RINGING", since=m_b)
    a.hangup()
    ev = b.wait_closed(since=m_b)
    assert ev["param"].startswith(f"{REJECT_CODE} "), ev
    k.wait_log(f"TESTBED reply {REJECT_CODE} Rejected for INVITE")

    m_a, m_b = a.mark(), b.mark()
    b.dial("2001")
    a.wait_incoming(since=m_a)
    b.expect_event("CALL_RINGING", since=m_b)
    time.sleep(1.0)
    assert a.wait_event("CALL_ESTABLISHED", timeout=0, since=m_a) is None  # still ringing
    b.hangup()  # caller gives up -> CANCEL
    b.wait_closed(since=m_b)  # fires when the CANCEL is sent, before the 487 arrives
    a.wait_closed(since=m_a)
    k.wait_log("TESTBED reply 487 Request Terminated for INVITE")

    # manual answer with accept(), then switch the answer mode at run time
    m_a, m_b = a.mark(), b.mark()
    b.dial("2001")
    a.wait_incoming(since=m_a)
    a.accept()
    a.wait_established(since=m_a)
    b.wait_established(since=m_b)
    a.hangup()
    b.wait_closed(since=m_b)
    assert "auto" in a.answermode("auto")["data"]
    m_a = a.mark()
    b.dial("2001")
    a.wait_established(since=m_a, timeout=5)
    b.hangup()
    a.wait_closed(since=m_a)


def test_sipp_uas_declines_with_chosen_code(kamailio, baresip_factory, sipp):
    # baresip cannot decline with a chosen code; a registered sipp UAS can (here 603 Decline)
    uas = sipp.uas(kamailio, "2003", 603, "Decline", ring_ms=300)
    assert kamailio.registered("2003")
    b = baresip_factory("2002", kamailio)
    m = b.mark()
    b.dial("2003")
    b.expect_event("CALL_RINGING", since=m)
    ev = b.wait_closed(since=m)
    assert ev["param"] == "603 Decline", ev
    r = uas.wait(timeout=5)
    assert r.ok, r.describe()
