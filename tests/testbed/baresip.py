"""baresip 1.0.0 (Debian 12) as a scriptable desk phone.

Facts found on this machine (see tests/test_testbed.py for the checks):

* ``stdio.so`` cannot be used with ``stdin=/dev/null``: baresip logs
  ``main: epoll_ctl: EPOLL_CTL_ADD: fd=0 (Operation not permitted)`` and
  ``module stdio.so: Operation not permitted`` (a regular file cannot be epoll'ed).
  It is harmless but useless, so it is not loaded; ``ctrl_tcp`` is the control path.
* ``ctrl_tcp`` speaks netstrings: ``LEN:{"command":"dial","params":"sip:..","token":"t1"},``.
  Replies are ``{"response":true,"ok":true|false,"data":"..","token":"t1"}``; every
  connected client also gets events ``{"event":true,"class":"call","type":"CALL_INCOMING",
  "accountaor":..,"direction":..,"peeruri":..,"param":..}`` (REGISTER_OK, CALL_RINGING,
  CALL_ESTABLISHED, CALL_CLOSED, ...).  Commands are the menu's long commands
  (``/help`` lists them): dial, accept, hangup, answermode, reginfo, listcalls, callstat,
  uanew/uadel, options, quit ...  There is no DND and no "reject with code" command in 1.0.0.
* Rejecting: ``hangup`` while an incoming call is ringing (answermode manual) answers the
  INVITE with **486 "Rejected"** (``REJECT_CODE``; the caller's CALL_CLOSED param is
  "486 Rejected").  The status cannot be chosen: ``hangup`` takes no code in 1.0.0 and
  there is no DND.  A call arriving while ``call_max_calls`` calls are up gets
  **486 "Max Calls"** (``MAX_CALLS_CODE``; log "ua: rejected call from ... (maximum 1 calls)").
  For any other status (603, 480, ...) use a sipp UAS instead.
  "Never answer": answermode manual and do nothing; the caller sees 180 Ringing until it
  cancels (-> 487, callee gets CALL_CLOSED) or Kamailio's fr_inv_timer (60 s) answers 408.
  ``accept`` with no incoming call still replies ok ("Answering incoming call").
* ``net_interface lo`` fails ("could not get IPv4 address"); ``net_interface 127.0.0.1``
  works ("Local network address: IPv4=lo|127.0.0.1"); without it baresip takes eth0's
  address as its local address ("IPv4=eth0|192.0.2.2" here).
* Events emitted before the test connects to ctrl_tcp are lost, and the first REGISTER goes
  out at once: so registration is judged by polling ``reginfo`` (``reg_status()``), not by
  the REGISTER_OK/REGISTER_FAIL events.
* Wrong password: baresip answers each 401 again at once - about 15 REGISTERs within
  well under a second - then gives up (``reginfo`` shows ERR, log "reg: ...: 401 Unauthorized").
* baresip binds SIP on ``sip_listen`` for UDP+TCP and TLS on port+1: instances are
  placed with ``free_port(span=2)`` so the pair is free.
* On SIGTERM baresip un-registers first; with the registrar gone it keeps waiting, so
  stop() falls back to SIGKILL after a short grace time.
* Recordings (``sndfile``): per call a ``...-enc.wav`` (what this phone sends) and ``...-dec.wav`` (what it hears) in ``snd_path``; 8000 Hz mono 16-bit for G.711.
* G.722 (module ``g722.so``) is named ``G722/16000/1`` in ``audio_codecs`` (baresip counts its
  audio rate; a bare ``G722`` means G722/8000 and is "not found"); its SDP says ``G722/8000``
  (RFC 3551's clock). With G.722 first, the source WAV, ``ausrc_srate``/``auplay_srate`` and the
  recordings are 16000 Hz.
  The name is ``dump-YYYY-MM-DD-hh-mm-ss-{enc,dec}.wav`` (no peer, 1 s resolution): two calls
  starting within the same second on one phone overwrite each other.  RTP (and so audio in
  the recordings) starts ~1-3 s after CALL_ESTABLISHED; the start of a ``-dec.wav`` is silence.
* CALL_CLOSED on the side that sends CANCEL fires at once, before the 487 comes back.
* menu.so prints a call status line about 10 times a second into the log while a call is up
  (``STATUS_LINE``; filtered out of log tails).
"""

from __future__ import annotations

import json
import queue
import re
import socket
import tempfile
import threading
import time
import wave
from pathlib import Path
from typing import Callable, Optional

import pytest

from .audio import silence_wav, tone_wav
from .proc import HOST, ManagedProcess, free_port, require_binary, wait_for

MODULE_PATH = "/usr/lib/baresip/modules"
#: menu.so prints a call status line ~10x/s while a call is up; left out of log tails
STATUS_LINE = r"^\[\d+:\d\d:\d\d\] audio="

#: status code a ringing incoming call gets when this side runs ``hangup()`` (baresip 1.0.0)
REJECT_CODE = 486
#: status code for a call arriving while ``call_max_calls`` calls are active
MAX_CALLS_CODE = 486


def _check_source_wav(path: Path, rate: int = 8000) -> None:
    """aufile plays the file as is: it must match the codec's audio rate (8000 Hz for G.711,
    16000 Hz for G.722), mono, 16-bit."""
    try:
        with wave.open(str(path), "rb") as w:
            fmt = (w.getframerate(), w.getnchannels(), w.getsampwidth())
    except (OSError, wave.Error, EOFError) as e:
        pytest.fail(f"test bed: baresip source WAV {path}: {e}", pytrace=False)
    if fmt != (rate, 1, 2):
        pytest.fail(f"test bed: baresip source WAV {path} is {fmt[0]} Hz/{fmt[1]} ch/{fmt[2] * 8}-bit; "
                    f"the codec needs {rate} Hz mono 16-bit (resample it, e.g. sox in.wav -r {rate} -c 1 -b 16 "
                    "out.wav)", pytrace=False)


class CtrlError(RuntimeError):
    pass


class CtrlTcp:
    """Client for baresip's ctrl_tcp: netstring JSON commands plus an event stream."""

    def __init__(self, port: int, host: str = HOST, timeout: float = 5.0):
        self.addr = (host, port)
        self.timeout = timeout
        self.sock = socket.create_connection(self.addr, timeout=timeout)
        self.sock.settimeout(None)
        self._responses: "queue.Queue[dict]" = queue.Queue()
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self._lock = threading.Lock()  # one command in flight at a time
        self._token = 0
        self._closed = False
        self._thread = threading.Thread(target=self._reader, name=f"ctrl_tcp:{port}", daemon=True)
        self._thread.start()

    # netstring framing --------------------------------------------------------------
    def _reader(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while True:
                    colon = buf.find(b":")
                    if colon < 0:
                        break
                    try:
                        n = int(buf[:colon])
                    except ValueError:
                        buf = b""  # desynchronised; drop
                        break
                    if len(buf) < colon + 1 + n + 1:
                        break
                    payload = buf[colon + 1:colon + 1 + n]
                    buf = buf[colon + 1 + n + 1:]
                    try:
                        msg = json.loads(payload.decode(errors="replace"))
                    except ValueError:
                        continue
                    if msg.get("response"):
                        self._responses.put(msg)
                    else:
                        msg["_t"] = time.monotonic()
                        with self._cond:
                            self.events.append(msg)
                            self._cond.notify_all()
        except OSError:
            pass
        finally:
            self._closed = True
            with self._cond:
                self._cond.notify_all()

    def command(self, command: str, params: Optional[str] = None, timeout: Optional[float] = None) -> dict:
        """Run a menu long command; returns the response dict ({"ok":..,"data":..})."""
        with self._lock:
            self._token += 1
            token = str(self._token)
            msg = {"command": command, "token": token}
            if params is not None:
                msg["params"] = params
            data = json.dumps(msg).encode()
            self.sock.sendall(str(len(data)).encode() + b":" + data + b",")
            deadline = time.monotonic() + (timeout or self.timeout)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CtrlError(f"no ctrl_tcp response to {command!r} within {timeout or self.timeout}s")
                try:
                    resp = self._responses.get(timeout=left)
                except queue.Empty:
                    continue
                if resp.get("token") in (token, None):
                    return resp

    def wait_event(self, types, timeout: float = 10.0, since: int = 0,
                   pred: Optional[Callable[[dict], bool]] = None) -> Optional[dict]:
        """First event (index >= ``since``) whose type is in ``types``; None on timeout."""
        if isinstance(types, str):
            types = (types,)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events[since:]:
                    if ev.get("type") in types and (pred is None or pred(ev)):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return None
                self._cond.wait(left)

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Baresip:
    """One baresip desk phone registered to a test-bed Kamailio.

    ``Baresip(ext, password, kamailio_port, sip_port=None, *, answermode="auto",
    source_wav=None, tone_hz=None, tone_dbfs=-13, record_dir=None, regint=10, workdir=None)``

    - ``answermode``: "auto" (answers at once), "manual" (rings; the test calls accept(),
      hangup() -> 486, or does nothing), "early" (baresip's early-media mode).
    - audio source: ``source_wav`` (8000 Hz mono 16-bit WAV) or a generated sine of
      ``tone_hz`` (default silence); baresip's aufile stops at the end of the file, so
      generated tones are ``source_seconds`` (60 s) long.
    - ``record_dir``: sndfile's ``snd_path`` (default ``<workdir>/rec``).
    - ``regint``: REGISTER interval in seconds (short so a restarted Kamailio is
      re-registered quickly).
    - ``transport``: "udp", "tcp" or "tls" to the registrar (``kamailio_port`` is then its TLS
      port); over TLS ``cafile`` verifies Kamailio and ``certificate`` (a PEM holding certificate
      and key) is what baresip's own TLS listener presents when Kamailio connects to it.
    - ``mediaenc``: None (plain RTP), "srtp" (RTP/AVP with SDES crypto: SRTP if the peer takes
      it) or "srtp-mand" (RTP/SAVP only: an SRTP-only phone).
    - ``host``: the address it binds (and that ``registrar_host`` is reached on): 127.0.0.1 or ::1.

    start() waits for the REGISTER 200 unless ``wait_registered=False``; stop() kills it.
    Control: dial(uri), accept(), hangup(), answermode(mode), command(cmd, params),
    wait_event(types), wait_established(), wait_closed(); recordings(kind="dec").
    """

    def __init__(self, ext: str, password: str, kamailio_port: int, sip_port: Optional[int] = None, *,
                 answermode: str = "auto", source_wav=None, tone_hz: Optional[float] = None,
                 tone_dbfs: float = -13.0, source_seconds: float = 60.0, record_dir=None,
                 regint: int = 10, workdir=None, max_calls: int = 4, codecs: str = "PCMU,PCMA",
                 registrar_host: str = HOST, transport: str = "udp", mediaenc: Optional[str] = None,
                 cafile=None, certificate=None, host: str = HOST):
        if answermode not in ("auto", "manual", "early"):
            raise ValueError(f"answermode must be auto/manual/early, not {answermode!r}")
        self.ext = str(ext)
        self.password = password
        self.kamailio_port = kamailio_port
        self.registrar_host = registrar_host
        self.transport = transport
        self.mediaenc = mediaenc
        self.cafile = cafile
        self.certificate = certificate
        self.host = host
        self.sip_port = sip_port or free_port(span=2)  # TLS binds sip_port+1
        self.ctrl_port = free_port()
        self.answermode_initial = answermode
        self.regint = regint
        self.max_calls = max_calls
        self.codecs = codecs
        # the audio rate of the first codec: G.722 samples at 16 kHz (its RTP clock is 8 kHz)
        self.sample_rate = 16000 if codecs.split(",")[0].strip().upper().startswith("G722") else 8000
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"baresip-{self.ext}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.confdir = self.workdir / "conf"
        self.confdir.mkdir(exist_ok=True)
        self.record_dir = Path(record_dir) if record_dir else self.workdir / "rec"
        self.record_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "baresip.log"
        if source_wav is None:
            src = self.workdir / (f"tone-{tone_hz:g}Hz.wav" if tone_hz else "silence.wav")
            if tone_hz:
                tone_wav(src, tone_hz, source_seconds, self.sample_rate, tone_dbfs)
            else:
                silence_wav(src, source_seconds, self.sample_rate)
            source_wav = src
        self.source_wav = Path(source_wav)
        _check_source_wav(self.source_wav, self.sample_rate)
        self.ctrl: Optional[CtrlTcp] = None
        self._proc: Optional[ManagedProcess] = None

    # --- config -----------------------------------------------------------------------
    @property
    def aor(self) -> str:
        host = f"[{self.registrar_host}]" if ":" in self.registrar_host else self.registrar_host
        return f"sip:{self.ext}@{host}:{self.kamailio_port}"

    def account_line(self) -> str:
        transport = f";transport={self.transport}" if self.transport != "udp" else ""
        mediaenc = f";mediaenc={self.mediaenc}" if self.mediaenc else ""
        return (f"<{self.aor}{transport}>;auth_user={self.ext};auth_pass={self.password};regint={self.regint};"
                f"answermode={self.answermode_initial};audio_codecs={self.codecs}{mediaenc}")

    def write_config(self) -> None:
        conf = f"""\
# generated by tests/testbed/baresip.py
poll_method		epoll
sip_listen		{f"[{self.host}]" if ":" in self.host else self.host}:{self.sip_port}
net_interface		{self.host}
call_local_timeout	120
call_max_calls		{self.max_calls}
audio_player		aubridge,{self.ext}
audio_source		aufile,{self.source_wav}
audio_alert		aubridge,{self.ext}
audio_level		no
ausrc_srate		{self.sample_rate}
auplay_srate		{self.sample_rate}
ausrc_channels		1
auplay_channels		1
rtp_ports		10000-19998
rtp_timeout		0
jitter_buffer_delay	5-10
module_path		{MODULE_PATH}
module			g711.so
module			g722.so
module			srtp.so
module			aufile.so
module			aubridge.so
module			sndfile.so
module_app		account.so
module_app		menu.so
module_app		ctrl_tcp.so
ctrl_tcp_listen		{HOST}:{self.ctrl_port}
snd_path		{self.record_dir}
"""
        if self.cafile:
            conf += f"sip_cafile\t\t{self.cafile}\n"
        if self.certificate:
            conf += f"sip_certificate\t\t{self.certificate}\n"
        (self.confdir / "config").write_text(conf)
        (self.confdir / "accounts").write_text(self.account_line() + "\n")
        (self.confdir / "contacts").write_text("")

    # --- lifecycle --------------------------------------------------------------------
    def start(self, wait_registered: bool = True, timeout: float = 10.0) -> "Baresip":
        exe = require_binary("baresip")
        self.write_config()
        self._proc = ManagedProcess(f"baresip:{self.ext}@{self.sip_port}", [exe, "-f", str(self.confdir)],
                                    self.log_path, cwd=self.workdir, noise=STATUS_LINE)
        self._proc.start()

        def connect():
            try:
                self.ctrl = CtrlTcp(self.ctrl_port)
                return True
            except OSError:
                return False
        wait_for(connect, timeout, alive=self._proc, what=f"ctrl_tcp on {HOST}:{self.ctrl_port}")
        if wait_registered:
            self.wait_registered(timeout)
        return self

    def stop(self) -> None:
        if self.ctrl:
            self.ctrl.close()
            self.ctrl = None
        if self._proc:
            self._proc.stop(timeout=2.0)

    @property
    def running(self) -> bool:
        return bool(self._proc and self._proc.running)

    @property
    def process(self) -> Optional[ManagedProcess]:
        return self._proc

    def log_text(self) -> str:
        return self._proc.log_text() if self._proc else ""

    def log_tail(self, lines: int = 40) -> str:
        return self._proc.log_tail(lines) if self._proc else ""

    def fail(self, msg: str) -> None:
        if self._proc:
            self._proc.fail(msg)
        pytest.fail(f"test bed: baresip {self.ext}: {msg}", pytrace=False)

    # --- registration -----------------------------------------------------------------
    def reg_status(self) -> str:
        """Registration state per ``reginfo``: "OK", "ERR", or "" (not yet answered / unknown).

        "OK" stays after the registrar lost the binding (e.g. Kamailio restarted) until the
        next refresh; ask Kamailio (``Kamailio.registered``) for the registrar's view.
        """
        data = self.command("reginfo").get("data", "")
        clean = re.sub(r"\x1b\[[0-9;]*m", " ", data)
        m = re.search(r"sip:\S+\s+(OK|ERR)\b", clean)
        return m.group(1) if m else ""

    def is_registered(self) -> bool:
        return self.reg_status() == "OK"

    def wait_registered(self, timeout: float = 10.0, since: Optional[int] = None) -> None:
        """Wait for a REGISTER 200 (event REGISTER_OK after ``since``; else reginfo OK)."""
        if since is None:
            wait_for(self.is_registered, timeout, interval=0.1, alive=self._proc,
                     what=f"registration of {self.ext}")
            return
        if self.ctrl.wait_event("REGISTER_OK", timeout, since=since) is None:
            self.fail(f"no REGISTER_OK within {timeout}s")

    # --- control ----------------------------------------------------------------------
    def command(self, cmd: str, params: Optional[str] = None, timeout: float = 5.0) -> dict:
        if not self.ctrl:
            self.fail(f"not started (command {cmd!r})")
        try:
            return self.ctrl.command(cmd, params, timeout)
        except (CtrlError, OSError) as e:
            self.fail(f"ctrl_tcp command {cmd!r} failed: {e}")

    def mark(self) -> int:
        """Event index to pass as ``since`` to wait_* (ignore earlier events)."""
        return self.ctrl.mark()

    def dial(self, uri: str) -> dict:
        """Dial ``uri`` (an extension alone is completed to sip:EXT@registrar:port; baresip adds
        the account's ``;transport=`` itself)."""
        if not uri.startswith("sip"):
            host = f"[{self.registrar_host}]" if ":" in self.registrar_host else self.registrar_host
            uri = f"sip:{uri}@{host}:{self.kamailio_port}"
        r = self.command("dial", uri)
        if not r.get("ok"):
            self.fail(f"dial {uri} refused: {r}")
        return r

    def accept(self) -> dict:
        return self.command("accept")

    def hangup(self) -> dict:
        """Hang up the current call; while an incoming call rings this rejects it (486)."""
        return self.command("hangup")

    def answermode(self, mode: str) -> dict:
        return self.command("answermode", mode)

    def wait_event(self, types, timeout: float = 10.0, since: int = 0, pred=None) -> Optional[dict]:
        return self.ctrl.wait_event(types, timeout, since, pred)

    def expect_event(self, types, timeout: float = 10.0, since: int = 0, pred=None) -> dict:
        ev = self.wait_event(types, timeout, since, pred)
        if ev is None:
            seen = [e.get("type") for e in self.ctrl.events[since:]]
            self.fail(f"no event {types} within {timeout}s (events seen: {seen})")
        return ev

    def wait_incoming(self, timeout: float = 10.0, since: int = 0) -> dict:
        return self.expect_event("CALL_INCOMING", timeout, since)

    def wait_established(self, timeout: float = 10.0, since: int = 0) -> dict:
        return self.expect_event("CALL_ESTABLISHED", timeout, since)

    def wait_closed(self, timeout: float = 10.0, since: int = 0) -> dict:
        """CALL_CLOSED event; its "param" holds the reason, e.g. "486 Busy Here"."""
        return self.expect_event("CALL_CLOSED", timeout, since)

    # --- recordings -------------------------------------------------------------------
    def recordings(self, kind: str = "dec") -> list[Path]:
        """sndfile recordings of ``kind`` ("dec" = heard, "enc" = sent), oldest first."""
        return sorted(self.record_dir.glob(f"*-{kind}.wav"), key=lambda p: (p.stat().st_mtime, p.name))

    def latest_recording(self, kind: str = "dec") -> Path:
        recs = self.recordings(kind)
        if not recs:
            self.fail(f"no *-{kind}.wav in {self.record_dir}")
        return recs[-1]

    def __repr__(self) -> str:
        return f"Baresip({self.ext}, sip={self.sip_port}, ctrl={self.ctrl_port}, running={self.running})"
