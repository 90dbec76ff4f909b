"""A sipp "desk phone" that answers and plays crafted RTP from a pcap (see pcap.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from .sipp import REGISTER_SCENARIO, SippProcess, SippResult, run_sipp

HERE = Path(__file__).parent
UAS_PCAP_TEMPLATE = HERE / "sipp_uas_pcap.xml"


class SippPcapUas:
    """sipp UAS registered as ``ext``: answers one call (PCMU + telephone-event 101), plays
    ``pcap`` to the caller's SDP address, hangs up with BYE after ``hold_ms``.

    start() launches it and registers ``ext`` -> its port (digest auth against the Kamailio
    user table, as SippUas does); wait() -> SippResult when the call is done; stop() kills it.
    """

    def __init__(self, kamailio, ext: str, pcap, *, hold_ms: int = 4000, timeout: float = 30.0,
                 workdir=None):
        self.kamailio = kamailio
        self.ext = str(ext)
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"sipp-pcap-{ext}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        pcap = Path(pcap).resolve()
        if any(c in str(pcap) for c in '"<>&'):
            raise ValueError(f"pcap path not usable in XML: {pcap}")
        self.scenario = self.workdir / "uas_pcap.xml"
        self.scenario.write_text(UAS_PCAP_TEMPLATE.read_text().replace("@@PCAP@@", str(pcap))
                                 .replace("@@HOLD_MS@@", str(int(hold_ms))).replace("@@EXT@@", self.ext))
        self.uas = SippProcess(self.scenario, None, timeout=timeout, workdir=self.workdir / "uas")
        self.register_result: Optional[SippResult] = None

    @property
    def port(self) -> int:
        return self.uas.local_port

    def start(self) -> "SippPcapUas":
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
