"""liblinphone's ``linphonec`` 5.1 (Debian ``linphone-cli``) as a second, independent desk phone.

baresip (``baresip.py``) and bridge share no code with liblinphone (belle-sip for SIP,
mediastreamer2/oRTP for media): what works with both is not an accident of one stack.

Facts found on this machine (tests/test_linphone.py relies on each):

* linphonec reads commands from stdin, one a line, from a pipe as well as a tty, and prints what
  happens on stdout at once (the lines ``wait_*`` look for). Commands used: ``soundcard use
  files`` (no sound card: ``play FILE.wav`` is what the phone sends, ``record FILE.wav`` what it
  hears, both set before the call they are for), ``codec list`` / ``codec enable N`` / ``codec
  disable N``, ``call SIP-URI``, ``answer``, ``terminate``, ``pause`` / ``resume`` (hold: a
  re-INVITE with ``a=sendonly``), ``status register``; a line holding one DTMF character during a
  call sends it as an RFC 4733 telephone-event, and a received one prints "Receiving tone D".
* Without a writable ``~/.local/share/linphone`` the core never starts (its log says "Unable to
  open linphone database" and nothing is ever sent): each phone gets its own HOME.
* ``[sip] supported`` must leave out ``gruu``: Kamailio's registrar then gives no GRUU, which
  linphone would put in its Contact (``sip:EXT@127.0.0.1;gr=...``), and in-dialog requests to it
  (the ACK, a re-INVITE to hold) would go to port 5060 and be lost.
* G.722 is present and disabled by default; ``codec list`` shows it as ``G722 (8000)`` (RFC 3551's
  RTP clock) and the recording of a G.722 call is 16000 Hz. The play file may be at any rate.
* While it holds a call (``pause``) linphonec sends its play file as music on hold and records
  nothing; it records the DTMF tones it sends itself.
* ``-d 5 -l FILE`` writes liblinphone's own log (SIP messages included) to ``debug.log``.
* Over TLS (``transport="tls"``: ``reg_proxy=<sip:HOST:PORT;transport=tls>``, ``root_ca`` the test
  CA, ``verify_server_certs``; ``verify_server_cn=0``: its mbedTLS matches a name, never the IP
  address Kamailio is dialled by) with ``media_encryption=srtp``: liblinphone
  offers ``RTP/AVP`` with ``a=crypto`` (SDES), or ``RTP/SAVP`` when it is mandatory
  (``media_encryption_mandatory=1``).
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import pytest

from .audio import silence_wav, tone_wav
from .proc import HOST, ManagedProcess, free_port, require_binary, wait_for


class Linphone:
    """One linphonec desk phone registered at a test-bed Kamailio.

    ``Linphone(ext, password, kamailio_port, *, codecs=("PCMU",), autoanswer=True, tone_hz=None,
    source_rate=16000, workdir=None)``: ``codecs`` are the only codecs enabled (telephone-event is
    always on); the phone plays a sine of ``tone_hz`` (or silence) and records what it hears in
    each call to a WAV of its own: ``recording`` (this call's, or the next one's) and, once
    ``wait_ended`` saw the call end, ``recorded``. start() waits for the registration; stop()
    quits (SIGKILL if it must).
    """

    def __init__(self, ext: str, password: str, kamailio_port: int, *, codecs: Sequence[str] = ("PCMU",),
                 autoanswer: bool = True, tone_hz: Optional[float] = None, source_rate: int = 16000,
                 tone_dbfs: float = -13.0, source_seconds: float = 60.0, workdir=None, transport: str = "udp",
                 root_ca=None, srtp: Optional[str] = None):
        """``transport``: "udp" or "tls" (``kamailio_port`` is then Kamailio's TLS port, ``root_ca``
        its CA); ``srtp``: None, "optional" (RTP/AVP with a=crypto) or "mandatory" (RTP/SAVP)."""
        self.ext = str(ext)
        self.password = password
        self.kamailio_port = kamailio_port
        self.codecs = tuple(codecs)
        self.autoanswer = autoanswer
        self.transport = transport
        self.root_ca = root_ca
        self.srtp = srtp
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"linphone-{self.ext}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home = self.workdir / "home"
        (self.home / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        self.rc_path = self.workdir / "linphonerc"
        self.log_path = self.workdir / "linphonec.log"
        self.sip_port = free_port()
        self.rtp_port = free_port(span=2, step=2)
        self.source_wav = self.workdir / (f"tone-{tone_hz:g}Hz.wav" if tone_hz else "silence.wav")
        if tone_hz:
            tone_wav(self.source_wav, tone_hz, source_seconds, source_rate, tone_dbfs)
        else:
            silence_wav(self.source_wav, source_seconds, source_rate)
        self.calls = 0
        self.recording: Optional[Path] = None       # what the phone hears in this (or the next) call
        self.recorded: Optional[Path] = None        # ... and heard in the call that ended last
        self._proc: Optional[ManagedProcess] = None
        self._offset = 0

    # --- config -----------------------------------------------------------------------
    def write_config(self) -> None:
        # supported without "gruu": Kamailio's registrar would hand out a GRUU that linphone puts in
        # its Contact (sip:EXT@127.0.0.1;gr=...), and in-dialog requests to it would go to port 5060
        tls = self.transport == "tls"
        secure = ""
        if tls:
            # its TLS (mbedTLS) matches the name against the CN and DNS names, never an IP address
            secure += f"root_ca={self.root_ca}\nverify_server_certs=1\nverify_server_cn=0\n"
        if self.srtp:
            secure += (f"media_encryption=srtp\nmedia_encryption_mandatory={int(self.srtp == 'mandatory')}\n"
                       "srtp_crypto_suites=AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32\n")
        proxy = f"<sip:{HOST}:{self.kamailio_port}" + (";transport=tls>" if tls else ">")
        self.rc_path.write_text(f"""\
[sip]
sip_port={0 if tls else self.sip_port}
sip_tcp_port=0
sip_tls_port={self.sip_port if tls else 0}
default_proxy=0
supported=replaces, outbound
{secure}[rtp]
audio_rtp_port={self.rtp_port}
[sound]
echocancellation=0
[proxy_0]
reg_proxy={proxy}
reg_identity=sip:{self.ext}@{HOST}
reg_expires=60
reg_sendregister=1
publish=0
[auth_info_0]
username={self.ext}
passwd={self.password}
realm={HOST}
""")

    # --- lifecycle --------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> "Linphone":
        exe = require_binary("linphonec")
        self.write_config()
        argv = [exe, "-c", str(self.rc_path), "-d", "5", "-l", str(self.workdir / "debug.log")] + (["-a"] if self.autoanswer else [])
        self._proc = ManagedProcess(f"linphonec:{self.ext}@{self.sip_port}", argv, self.log_path, cwd=self.workdir,
                                    env={"HOME": str(self.home), "PATH": "/usr/bin:/bin"}, stdin_pipe=True)
        self._proc.start()
        self.command("soundcard use files")
        self.expect("Using wav files instead of soundcard", 5)
        self._choose_codecs()
        self.command(f"play {self.source_wav}")
        self.record_next_call()
        self.wait_registered(timeout)
        return self

    def stop(self) -> None:
        if self._proc and self._proc.running:
            try:
                self.command("quit")
                self._proc.proc.wait(2)
            except Exception:
                pass
        if self._proc:
            self._proc.stop(timeout=1.0)

    @property
    def running(self) -> bool:
        return bool(self._proc and self._proc.running)

    def log_text(self) -> str:
        return self._proc.log_text() if self._proc else ""

    def log_tail(self, lines: int = 40) -> str:
        return self._proc.log_tail(lines) if self._proc else ""

    def fail(self, msg: str) -> None:
        if self._proc:
            self._proc.fail(msg)
        pytest.fail(f"test bed: linphonec {self.ext}: {msg}", pytrace=False)

    # --- the console ------------------------------------------------------------------
    def command(self, line: str) -> None:
        if not self.running:
            self.fail(f"not running (command {line!r})")
        self._proc.write_line(line)

    def mark(self) -> int:
        """A position in the output: expect(..., since=mark) looks only after it."""
        return len(self.log_text())

    def expect(self, pattern: str, timeout: float = 10.0, since: Optional[int] = None) -> re.Match:
        """The first output line after ``since`` (default: the start) matching ``pattern``."""
        rx = re.compile(pattern)
        start = since or 0

        def found():
            return rx.search(self.log_text()[start:])
        return wait_for(found, timeout, interval=0.05, alive=self._proc, what=f"output {pattern!r}")

    def _choose_codecs(self) -> None:
        mark = self.mark()
        self.command("codec list")
        self.expect(r"(?m)^\s*\d+: L16", 5, mark)
        listed = re.findall(r"(?m)^\s*(\d+): (\S+) \((\d+)\) (enabled|disabled)", self.log_text()[mark:])
        wanted = {c.upper() for c in self.codecs}
        for index, name, rate, state in listed:
            on = name.upper() in wanted
            if on != (state == "enabled"):
                self.command(f"codec {'enable' if on else 'disable'} {index}")
        names = {name.upper() for _, name, _, _ in listed}
        if not wanted <= names:
            self.fail(f"codecs {sorted(wanted - names)} not in this linphonec: {sorted(names)}")

    # --- registration and calls ------------------------------------------------------------
    def wait_registered(self, timeout: float = 15.0) -> None:
        def registered() -> bool:
            mark = self.mark()
            self.command("status register")
            time.sleep(0.2)
            return "registered," in self.log_text()[mark:]
        wait_for(registered, timeout, interval=0.3, alive=self._proc, what=f"registration of {self.ext}")

    def record_next_call(self) -> Path:
        """What this phone hears in its next call goes to a new WAV (written out when the call ends)."""
        self.calls += 1
        self.recording = self.workdir / f"heard-{self.calls}.wav"
        self.command(f"record {self.recording}")
        return self.recording

    def dial(self, ext: str) -> int:
        """Call ``ext`` through the registrar; returns the output mark before the call."""
        mark = self.mark()
        self.command(f"call sip:{ext}@{HOST}")
        return mark

    def answer(self) -> None:
        self.command("answer")

    def hangup(self) -> None:
        self.command("terminate")

    def hold(self) -> None:
        """Put the call on hold: a re-INVITE with a=sendonly."""
        self.command("pause")

    def resume(self) -> None:
        self.command("resume")

    def send_dtmf(self, digits: str) -> None:
        """RFC 4733 telephone-events, one digit a line, 300 ms apart."""
        for digit in digits:
            self.command(digit)
            time.sleep(0.3)

    def wait_incoming(self, timeout: float = 10.0, since: int = 0) -> re.Match:
        return self.expect(r"Receiving new incoming call from (.+), assigned id (\d+)", timeout, since)

    def wait_connected(self, timeout: float = 10.0, since: int = 0) -> re.Match:
        """The call is up and its media streams run."""
        return self.expect(r"Media streams established with (.+) for call (\d+)", timeout, since)

    def wait_ended(self, timeout: float = 10.0, since: int = 0) -> re.Match:
        """The call ended (or failed); group 3 says why. Its recording, complete, is `recorded`;
        the next call gets a new one."""
        found = self.expect(r"Call (\d+) (?:with|to) (.+) (?:ended \((.*)\)|error)\.", timeout, since)
        time.sleep(0.3)                        # the WAV header is written as the call is released
        self.recorded = self.recording
        self.record_next_call()
        return found

    def wait_paused_by_remote(self, timeout: float = 10.0, since: int = 0) -> re.Match:
        return self.expect(r"Call (\d+) has been paused by (.+)\.", timeout, since)

    def wait_dtmf(self, digit: str, timeout: float = 10.0, since: int = 0) -> re.Match:
        return self.expect(rf"Receiving tone {re.escape(digit)} from (.+)", timeout, since)

    def __repr__(self) -> str:
        return f"Linphone({self.ext}, sip={self.sip_port}, rtp={self.rtp_port}, running={self.running})"
