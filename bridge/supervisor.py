"""Child processes that never outlive the program that started them, nor leave files behind.

What it promises, however the parent ends (return, exception, Ctrl-C, `kill -9`):
- each child runs in its own process group, so Ctrl-C at the terminal reaches the parent alone
  (it decides how to stop), and a signal to the group reaches the child's own children
  (Kamailio's forked workers);
- each child gets PR_SET_PDEATHSIG: the kernel kills it the moment its parent dies;
- a forking child's children lose that signal at fork, so a small watchdog process (its own
  session, reading a pipe from the parent) kills every group it was told about, then removes
  the work directory, when the pipe closes without a "done": the parent died;
- a normal stop (`close`) ends the groups itself (SIGTERM, then SIGKILL after a grace time),
  removes the work directory unless asked to keep it, and dismisses the watchdog.
`leftovers(work)` finds processes whose command line names a work directory: what a next start
ends should even the watchdog have been killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1

_WATCHDOG = r"""
import os, shutil, signal, sys, time
work, groups = sys.argv[1], set()
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "done":
        sys.exit(0)
    if arg.isdigit():
        (groups.add if cmd == "add" else groups.discard)(int(arg))
for sig in (signal.SIGTERM, signal.SIGKILL):
    for g in groups:
        try:
            os.killpg(g, sig)
        except OSError:
            pass
    time.sleep(0.5)
shutil.rmtree(work, ignore_errors=True)
"""


def die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Supervisor:
    """Starts children in `work` and guarantees they end (and `work` goes) with this process."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.children: list[subprocess.Popen] = []
        self._logs: list[IO[bytes]] = []
        self._watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(work)], stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True, close_fds=True)

    def _tell(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self._watchdog.stdin is not None
            self._watchdog.stdin.write(f"{line}\n".encode())
            self._watchdog.stdin.flush()

    def start(self, argv: list[str], log: Path) -> subprocess.Popen:
        """Start `argv` in `work`, its output into `log`."""
        out = open(log, "wb")
        self._logs.append(out)
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=self.work, start_new_session=True, preexec_fn=die_with_parent)
        self.children.append(proc)
        self._tell(f"add {proc.pid}")
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 2.0) -> None:
        """SIGTERM the child's group, SIGKILL what is left after `grace` seconds."""
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        _signal_group(proc.pid, signal.SIGKILL)      # workers may outlive their leader
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(2)
        self._tell(f"del {proc.pid}")

    def close(self, keep_work: bool = False) -> None:
        """Stop every child (the last started first), remove `work` unless kept, dismiss the watchdog."""
        for proc in reversed(self.children):
            self.stop(proc)
        for out in self._logs:
            out.close()
        if not keep_work:
            shutil.rmtree(self.work, ignore_errors=True)
        self._tell("done")
        with contextlib.suppress(OSError, ValueError):
            assert self._watchdog.stdin is not None
            self._watchdog.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._watchdog.wait(2)


def leftovers(work: Path) -> list[int]:
    """Pids of processes whose command line names `work` (a unique temporary directory)."""
    needle = str(work).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def end(pids: list[int], grace: float = 1.0) -> None:
    """SIGTERM `pids`, then SIGKILL those still there after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.05)
