"""SIP test bed: real peers on 127.0.0.1 (Kamailio registrar/proxy, baresip desk phones, sipp).

Everything binds 127.0.0.1 on free ports picked per run (``free_port``), each process runs in
its own directory and process group, and every process is stopped at fixture teardown (plus an
atexit sweep).  A missing binary or a peer that does not come up fails the test
(``pytest.fail`` with the log tail) - nothing is skipped.

Pieces:
  kamailio.cfg / Kamailio       registrar + proxy, static digest users, optional 407 on INVITE
  Baresip / CtrlTcp             baresip 1.0.0 phone driven over ctrl_tcp (facts in baresip.py)
  Linphone                      liblinphone's linphonec 5.1 driven on stdin (facts in linphone.py)
  sipp.py                       sipp runs: SippProcess, run_sipp, sipp_invite_expect, SippUas
  sipp_uac_invite.xml           UAC: INVITE, answers one 407, expects a given failure code
  sipp_register.xml             REGISTER with digest auth and a chosen Contact port
  sipp_uac_delayed_offer.xml    UAC: INVITE without SDP, the answer (G.722) in the ACK, a pcap played
  sipp_uas_reply.xml            UAS: 100, 180, then a chosen failure code
  sipp_offer.py                 UAC scenarios offering a chosen SDP (and re-offers); the answers
  audio.py                      tone_wav, dominant_frequency (Hann FFT + SNR), read_wav, ...
  sipmsg.py                     minimal UDP SIP client (OPTIONS probe, bare REGISTER)
  fixtures.py                   pytest fixtures: kamailio_factory, kamailio, kamailio_noauth,
                                baresip_factory, linphone_factory, sipp

In a test module::

    from tests.testbed.fixtures import kamailio, kamailio_factory, baresip_factory, sipp  # noqa: F401
"""

from .audio import dominant_frequency, read_wav, tone_wav, wav_dominant_frequency
from .baresip import MAX_CALLS_CODE, REJECT_CODE, Baresip, CtrlTcp
from .kamailio import DEFAULT_USERS, Kamailio
from .proc import HOST, free_port
from .sipmsg import SipResponse, sip_request
from .sipp import SippProcess, SippResult, SippUas, run_sipp, sipp_invite_expect

__all__ = [
    "Baresip", "CtrlTcp", "DEFAULT_USERS", "HOST", "Kamailio", "MAX_CALLS_CODE", "REJECT_CODE",
    "SipResponse", "SippProcess", "SippResult", "SippUas", "dominant_frequency", "free_port",
    "read_wav", "run_sipp", "sip_request", "sipp_invite_expect", "tone_wav", "wav_dominant_frequency",
]
