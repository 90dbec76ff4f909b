"""Process and port plumbing shared by the test-bed peers.

Every peer runs in its own session (process group) so stop() can kill it together
with any children (Kamailio forks workers).  All live peers are also tracked in a
module-level registry and killed by an atexit hook, so even an interrupted test
run leaves nothing behind; if the test process is killed outright, PR_SET_PDEATHSIG and a
small watchdog process (see _watch) kill the peers and their process groups.
"""

from __future__ import annotations

import atexit
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import pytest

HOST = "127.0.0.1"

# Ports below the Linux ephemeral range (32768+) so outgoing sockets never take them.
PORT_RANGE = (24000, 32000)    # single ports and small spans
WIDE_RANGE = (20000, 24000)    # spans of WIDE_SPAN ports or more (a TURN relay range)
WIDE_SPAN = 10

_reserved: set[int] = set()
_reserved_lock = threading.Lock()


def _port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_port(span: int = 1, step: int = 1) -> int:
    """A port P such that P .. P+span-1 are free for UDP and TCP on 127.0.0.1.

    Ports handed out in this Python process are never handed out again (the peer
    may not have bound them yet), and the start is random so parallel runs rarely
    collide.  ``span=2`` suits baresip (SIP on P, TLS on P+1); ``span=3`` leaves a gap.
    """
    rnd = random.SystemRandom()
    if span >= WIDE_SPAN:           # whole blocks of their own, or single ports would splinter them
        lo, hi = WIDE_RANGE
        starts = list(range(lo, hi - span + 1, span))
        rnd.shuffle(starts)
    else:
        lo, hi = PORT_RANGE
        starts = [rnd.randrange(lo, hi - span) for _ in range(2000)]
    for p in starts:
        p -= p % step
        with _reserved_lock:
            rng = range(p, p + span)
            if any(q in _reserved for q in rng):
                continue
            if all(_port_free(q) for q in rng):
                _reserved.update(rng)
                return p
    raise RuntimeError("no free port range found on 127.0.0.1")


def require_binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if not path:
        pytest.fail(f"test bed: required binary {name!r} not found in PATH (install it in .ci/run)", pytrace=False)
    return path


def tail(path, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"<no log: {e}>"
    return "\n".join(text.splitlines()[-lines:])


_live: "set[ManagedProcess]" = set()
_live_lock = threading.Lock()


class ManagedProcess:
    """A subprocess in its own process group, output to ``log_path``."""

    def __init__(self, name: str, argv: list[str], log_path, cwd=None, env=None, noise: Optional[str] = None,
                 stdin_pipe: bool = False):
        self.noise = re.compile(noise) if noise else None  # log lines to leave out of tails
        self.stdin_pipe = stdin_pipe  # a console program driven by lines written to stdin
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.env = env
        self.proc: Optional[subprocess.Popen] = None
        self._log_fh = None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} already running")
        self._log_fh = open(self.log_path, "ab", buffering=0)
        self._log_fh.write(f"\n===== {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE if self.stdin_pipe else subprocess.DEVNULL,
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as e:
            self._log_fh.close()
            pytest.fail(f"test bed: cannot start {self.name}: {e}", pytrace=False)
        with _live_lock:
            _live.add(self)
        _watch("add", self.proc.pid)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def write_line(self, line: str) -> None:
        """One line to the program's stdin (started with ``stdin_pipe``)."""
        if self.proc is None or self.proc.stdin is None:
            raise RuntimeError(f"{self.name}: no stdin pipe")
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def stop(self, timeout: float = 3.0) -> Optional[int]:
        """SIGTERM the process group, SIGKILL after ``timeout``. Idempotent."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            # children may outlive the leader: always sweep the group
            _signal_group(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(5)
        finally:
            with _live_lock:
                _live.discard(self)
            _watch("del", proc.pid)
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            if self._log_fh:
                self._log_fh.close()
                self._log_fh = None
        return proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        if not self.noise:
            return tail(self.log_path, lines)
        kept = [ln for ln in self.log_text().splitlines() if ln.strip() and not self.noise.search(ln)]
        return "\n".join(kept[-lines:])

    def fail(self, msg: str, lines: int = 40) -> None:
        """pytest.fail with the log tail attached."""
        state = "running" if self.running else f"exited rc={self.proc.returncode if self.proc else None}"
        pytest.fail(
            f"test bed: {self.name}: {msg} ({state})\n--- last {lines} lines of {self.log_path} ---\n"
            f"{self.log_tail(lines)}",
            pytrace=False,
        )


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the test process dies (even by SIGKILL)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


_WATCHDOG_CODE = r"""
import os, signal, sys
groups = set()
for line in sys.stdin:
    cmd, _, pgid = line.strip().partition(" ")
    if pgid.isdigit():
        (groups.add if cmd == "add" else groups.discard)(int(pgid))
for g in groups:  # EOF: the test process is gone (or done) -> kill what is left
    try:
        os.killpg(g, signal.SIGKILL)
    except OSError:
        pass
"""
_watchdog: Optional[subprocess.Popen] = None
_watchdog_lock = threading.Lock()


def _watch(cmd: str, pgid: int) -> None:
    """Tell the watchdog about a process group.  The watchdog is a tiny separate process that
    SIGKILLs every group still registered when its stdin closes, i.e. when the test process
    exits or is killed (SIGKILL included) - Kamailio's forked workers would survive otherwise."""
    global _watchdog
    with _watchdog_lock:
        try:
            if _watchdog is None or _watchdog.poll() is not None:
                if cmd != "add":
                    return
                _watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG_CODE], stdin=subprocess.PIPE,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                             start_new_session=True, close_fds=True)
            _watchdog.stdin.write(f"{cmd} {pgid}\n".encode())
            _watchdog.stdin.flush()
        except OSError:
            pass


def kill_all_live() -> None:
    with _live_lock:
        procs = list(_live)
    for p in procs:
        try:
            p.stop(timeout=1.0)
        except Exception:
            pass


atexit.register(kill_all_live)


def wait_for(cond: Callable[[], object], timeout: float, interval: float = 0.05,
             alive: Optional[ManagedProcess] = None, what: str = "condition"):
    """Poll ``cond`` until truthy; fail with the log tail if ``alive`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        r = cond()
        if r:
            return r
        if alive is not None and not alive.running:
            alive.fail(f"exited while waiting for {what}")
        if time.monotonic() >= deadline:
            if alive is not None:
                alive.fail(f"timed out after {timeout:.1f}s waiting for {what}")
            pytest.fail(f"test bed: timed out after {timeout:.1f}s waiting for {what}", pytrace=False)
        time.sleep(interval)


def stop_all(items: Iterable) -> None:
    """Stop everything, remembering the first error but always trying all."""
    first = None
    for it in items:
        try:
            it.stop()
        except BaseException as e:  # noqa: BLE001 - teardown must continue
            first = first or e
    if first:
        raise first
