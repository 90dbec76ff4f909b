"""A sipp "desk phone" that answers and plays crafted RTP from a pcap (see pcap.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .sipp import RegisteredUas

HERE = Path(__file__).parent
UAS_PCAP_TEMPLATE = HERE / "sipp_uas_pcap.xml"


class SippPcapUas(RegisteredUas):
    """sipp UAS registered as ``ext``: answers one call (PCMU + telephone-event 101), plays
    ``pcap`` to the caller's SDP address, hangs up with BYE after ``hold_ms``.

    start() launches it and registers ``ext`` -> its port (digest auth against the Kamailio
    user table, as SippUas does); wait() -> SippResult when the call is done; stop() kills it.
    """

    def __init__(self, kamailio, ext: str, pcap, *, hold_ms: int = 4000, timeout: float = 30.0,
                 workdir=None):
        workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"sipp-pcap-{ext}-"))
        workdir.mkdir(parents=True, exist_ok=True)
        pcap = Path(pcap).resolve()
        if any(c in str(pcap) for c in '"<>&'):
            raise ValueError(f"pcap path not usable in XML: {pcap}")
        self.scenario = workdir / "uas_pcap.xml"
        self.scenario.write_text(UAS_PCAP_TEMPLATE.read_text().replace("@@PCAP@@", str(pcap))
                                 .replace("@@HOLD_MS@@", str(int(hold_ms))).replace("@@EXT@@", str(ext)))
        super().__init__(kamailio, ext, self.scenario, timeout=timeout, workdir=workdir)
