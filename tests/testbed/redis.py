"""Redis (Debian `redis-server`) on 127.0.0.1 for the cluster tests: in memory, no persistence.

``RedisServer(workdir).start()`` runs ``redis-server --port P --bind 127.0.0.1 --save ''`` in
the foreground and waits until it answers PING; ``url`` is its redis:// URL; ``stop()`` and
``start()`` again (same port) act out a Redis that goes away and comes back.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Optional

from .proc import HOST, ManagedProcess, free_port, require_binary, wait_for


def _pong(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.3) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, workdir, port: Optional[int] = None) -> None:
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "redis.log"
        self._proc: Optional[ManagedProcess] = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        argv = [require_binary("redis-server"), "--port", str(self.port), "--bind", HOST, "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no"]
        self._proc = ManagedProcess(f"redis:{self.port}", argv, self.log_path, cwd=self.workdir)
        self._proc.start()
        wait_for(lambda: _pong(self.port), timeout, alive=self._proc, what=f"PONG on {HOST}:{self.port}")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()

    @property
    def running(self) -> bool:
        return bool(self._proc and self._proc.running)

    def log_tail(self, lines: int = 30) -> str:
        return self._proc.log_tail(lines) if self._proc else ""
