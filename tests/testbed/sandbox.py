"""Run a command under the address-family restriction of a systemd unit, without systemd.

systemd's `RestrictAddressFamilies=AF_INET AF_INET6 ...` installs a seccomp filter that makes
socket(2) fail with EAFNOSUPPORT for every other family (socketpair(2) and inherited sockets
are not affected). Where systemd is not PID 1 (a container, CI), this wrapper installs the same
filter with libseccomp (PyPI `pyseccomp`, ctypes over Debian's libseccomp2), sets
no_new_privs as systemd does, and execs the command:

    python -m testbed.sandbox "AF_INET AF_INET6 AF_UNIX AF_NETLINK" -- bridge run -c FILE
"""

from __future__ import annotations

import errno
import os
import re
import socket
import sys
from pathlib import Path

import pyseccomp as seccomp

FAMILIES_MAX = 64           # Linux has 46 address families (AF_MAX); filter every number below this


def unit_families(unit: Path) -> list[str]:
    """The families a unit's RestrictAddressFamilies= allows (an allow-list, as in the shipped unit)."""
    found = re.findall(r"^RestrictAddressFamilies=(.+)$", unit.read_text(), re.M)
    if len(found) != 1 or found[0].startswith("~"):
        raise ValueError(f"{unit}: expected one allow-list RestrictAddressFamilies= line")
    return found[0].split()


def restrict(families: list[str]) -> None:
    """From now on, socket(2) of any other family fails with EAFNOSUPPORT (for this process and
    whatever it execs)."""
    allowed = {int(getattr(socket, name)) for name in families}
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)     # sets no_new_privs on load
    for family in range(FAMILIES_MAX):
        if family not in allowed:
            rules.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family))
    rules.load()


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: python -m testbed.sandbox 'AF_INET AF_UNIX ...' -- COMMAND [ARG...]")
    restrict(argv[0].split())
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
