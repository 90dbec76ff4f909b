"""Kamailio 5.6 as registrar/proxy on 127.0.0.1 for tests."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Optional

from .certs import ServerCert
from .proc import HOST, ManagedProcess, free_port, require_binary, wait_for
from .sipmsg import SipResponse, sip_request

# the PBX config is shared with `bridge demo`
CFG_TEMPLATE = Path(__file__).resolve().parents[2] / "bridge" / "pbx" / "kamailio.cfg"

DEFAULT_USERS = {"2001": "pw2001", "2002": "pw2002", "2003": "pw2003", "2004": "pw2004"}

_SAFE = re.compile(r"^[A-Za-z0-9_.+-]+$")


class Kamailio:
    """Kamailio registrar/proxy with static digest users.

    ``Kamailio(port=None, users={"2001": "pw", ...}, invite_auth=True, workdir=None)``

    - ``port``: UDP+TCP listen port (None: a free one is picked).
    - ``host``: the address it listens on, 127.0.0.1 or an IPv6 one such as ``::1`` (then Via and
      Contact of what it reaches must bracket it: Kamailio refuses ``::1:5060``, "bad ipv6 reference").
    - ``tls``: a server certificate (``testbed.certs``): Kamailio also listens for TLS on
      ``tls_port`` (tls module from Debian ``kamailio-tls-modules``), presenting it; it does not ask
      clients for certificates, and does not verify the ones of the phones it connects to.
    - ``users``: static extension -> password table (htable filled at start).
      REGISTER is challenged with 401 (realm = To domain, i.e. "127.0.0.1");
      the auth user must equal the To user.
    - ``dispatcher``: the SIP ports of bridge nodes on 127.0.0.1: calls to 7NNN go to them
      through Kamailio's dispatcher (``WITH_DISPATCHER``; OPTIONS probing, failover), not to
      the "bridge" user's binding.
    - ``invite_auth``: new INVITEs get a 407 proxy challenge (realm = From domain) and
      must authenticate as the From user (Kamailio define ``WITH_INVITE_AUTH``, passed with
      ``-A``).  With False, any INVITE is routed.
    - INVITE to an extension with no binding -> ``404 Not Found``; OPTIONS to the proxy
      itself (no user part) -> 200; in-dialog requests follow Record-Route.

    start() waits until an OPTIONS over UDP gets a 200 (fails the test with the log tail
    otherwise); restart() keeps the port but loses all registrations (in-memory usrloc).
    ``log_text()`` / ``log_tail()`` give stderr (``-E``); script lines start with "TESTBED".
    """

    def __init__(self, port: Optional[int] = None, users: Optional[dict] = None, *,
                 invite_auth: bool = True, workdir=None, debug: int = 2, host: str = HOST,
                 tls: Optional[ServerCert] = None, dispatcher: Optional[list[int]] = None):
        self.port = port or free_port()
        self.tls = tls
        self.tls_port = free_port() if tls is not None else None
        self.users = dict(DEFAULT_USERS if users is None else users)
        for k, v in self.users.items():
            if not _SAFE.match(str(k)) or '"' in str(v) or "\\" in str(v) or "\n" in str(v):
                raise ValueError(f"unsupported user/password characters: {k!r}")
        self.invite_auth = invite_auth
        self.debug = debug
        self.dispatcher = list(dispatcher) if dispatcher is not None else None   # bridge nodes' SIP ports
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"kamailio-{self.port}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cfg_path = self.workdir / "kamailio.cfg"
        self.log_path = self.workdir / "kamailio.log"
        self._proc: Optional[ManagedProcess] = None
        self._log_offset = 0  # where the current run's log starts
        self.host = host

    # --- config -----------------------------------------------------------------------
    def write_config(self) -> Path:
        users = "\n".join(f'\t$sht(users=>{k}) = "{v}";' for k, v in self.users.items()) or "\tnone;"
        text = re.sub(r"(?m)^@@USERS@@$", lambda _m: users, CFG_TEMPLATE.read_text())
        text = text.replace("debug=2", f"debug={self.debug}", 1)
        self.cfg_path.write_text(text)
        if self.tls is not None:
            (self.workdir / "tls.cfg").write_text(f"""[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
private_key = {self.tls.key}
certificate = {self.tls.cert}

[client:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
""")
        return self.cfg_path

    @property
    def hostref(self) -> str:
        """The host as a URI writes it (an IPv6 address in brackets)."""
        return f"[{self.host}]" if ":" in self.host else self.host

    def argv(self) -> list[str]:
        exe = require_binary("kamailio")
        argv = [exe, "-f", str(self.cfg_path), "-DD", "-E",
                "-l", f"udp:{self.hostref}:{self.port}", "-l", f"tcp:{self.hostref}:{self.port}",
                "-Y", str(self.workdir), "-P", str(self.workdir / "kamailio.pid"),
                "-w", str(self.workdir), "-m", "32", "-M", "8"]
        if self.invite_auth:
            argv += ["-A", "WITH_INVITE_AUTH"]
        if self.tls is not None:
            argv += ["-l", f"tls:{self.hostref}:{self.tls_port}", "-A", "WITH_TLS",
                     "-A", f'TLS_CONFIG="{self.workdir / "tls.cfg"}"']
        if self.dispatcher is not None:
            listed = self.workdir / "dispatcher.list"
            listed.write_text("".join(f"1 sip:{self.hostref}:{port}\n" for port in self.dispatcher))
            argv += ["-A", "WITH_DISPATCHER", "-A", f'DISPATCHER_LIST="{listed}"']
        return argv

    # --- lifecycle --------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "Kamailio":
        self.write_config()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc = ManagedProcess(f"kamailio:{self.port}", self.argv(), self.log_path, cwd=self.workdir)
        self._proc.start()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        def probe():
            r = sip_request(self.port, "OPTIONS", host=self.host, timeout=0.3)
            return r is not None and r.status == 200
        wait_for(probe, timeout, interval=0.05, alive=self._proc,
                 what=f"OPTIONS 200 on udp:{self.hostref}:{self.port}")

    def stop(self) -> None:
        if self._proc:
            self._proc.stop()

    def restart(self, timeout: float = 10.0) -> "Kamailio":
        """Stop and start again on the same port (registrations are lost)."""
        self.stop()
        # the UDP/TCP port is released with the process; wait until it can be bound again
        from .proc import _port_free
        wait_for(lambda: _port_free(self.port), 5.0, what=f"port {self.port} released")
        return self.start(timeout)

    @property
    def running(self) -> bool:
        return bool(self._proc and self._proc.running)

    # --- introspection ----------------------------------------------------------------
    @property
    def process(self) -> Optional[ManagedProcess]:
        return self._proc

    def log_text(self, current_run_only: bool = True) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        if current_run_only:
            data = data[self._log_offset:]
        return data.decode(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text(False).splitlines()[-lines:])

    def fail(self, msg: str) -> None:
        if self._proc:
            self._proc.fail(msg)
        import pytest
        pytest.fail(f"test bed: kamailio:{self.port}: {msg}", pytrace=False)

    def registered(self, ext: str) -> bool:
        """True if this run of Kamailio holds a binding for ``ext``, judged from its log:
        the last "REGISTER saved" line for ``ext`` is not an un-REGISTER (expires=0)."""
        lines = [ln for ln in self.log_text().splitlines() if f"TESTBED REGISTER saved sip:{ext}@" in ln]
        if not lines:
            return False
        last = lines[-1]
        return not re.search(r"expires=0\b|;expires=0\b|contact=\*", last)

    def wait_registered(self, ext: str, timeout: float = 10.0) -> None:
        wait_for(lambda: self.registered(ext), timeout, alive=self._proc, what=f"REGISTER of {ext}")

    def wait_log(self, text: str, timeout: float = 5.0) -> str:
        """Wait until ``text`` (a substring, or a compiled regex) shows up in this run's log."""
        if hasattr(text, "search"):
            return wait_for(lambda: text.search(self.log_text()), timeout, alive=self._proc,
                            what=f"log pattern {text.pattern!r}")
        return wait_for(lambda: text in self.log_text() and text, timeout, alive=self._proc,
                        what=f"log line containing {text!r}")

    def options(self, timeout: float = 1.0) -> Optional[SipResponse]:
        return sip_request(self.port, "OPTIONS", host=self.host, timeout=timeout)

    def register_without_auth(self, ext: str, timeout: float = 2.0) -> Optional[SipResponse]:
        """Send a REGISTER with no Authorization header; expect a 401 challenge."""
        return sip_request(self.port, "REGISTER", user=ext, host=self.host, timeout=timeout)

    def uri(self, ext: str) -> str:
        return f"sip:{ext}@{self.hostref}:{self.port}"

    def __repr__(self) -> str:
        return f"Kamailio(port={self.port}, invite_auth={self.invite_auth}, running={self.running})"

    def __enter__(self):
        return self.start() if not self.running else self

    def __exit__(self, *exc):
        self.stop()
