"""coturn (Debian `coturn`, binary `turnserver`) as the TURN server of app users, on 127.0.0.1.

It runs with the TURN REST scheme (`use-auth-secret` + `static-auth-secret`): a username is
"<expiry unix time>:<user>" and its password base64(HMAC-SHA1(secret, username)); an expired
username is refused. On loopback it needs `allow-loopback-peers` (test beds only: in
production that would let clients relay to the TURN host's own services). `--verbose` logs
each session with its username and the peers it relays to, which a test reads.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from .proc import HOST, ManagedProcess, free_port, require_binary, wait_for

REALM = "bridge.test"


class Coturn(ManagedProcess):
    def __init__(self, workdir: Path, secret: str) -> None:
        self.port = free_port()
        self.secret = secret
        relay = free_port(span=100)
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "turnserver.log"
        argv = [require_binary("turnserver"), "-n", "--no-cli", "--no-tls", "--no-dtls",
                f"--listening-ip={HOST}", f"--relay-ip={HOST}", f"--listening-port={self.port}",
                f"--min-port={relay}", f"--max-port={relay + 99}", "--allow-loopback-peers",
                "--use-auth-secret", f"--static-auth-secret={secret}", f"--realm={REALM}",
                "--fingerprint", "--no-multicast-peers", "--verbose", "--log-file=stdout",
                "--pidfile", str(workdir / "turnserver.pid")]
        super().__init__("coturn", argv, self.log_path, cwd=workdir)

    def start(self) -> None:
        super().start()

        def listening() -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.2)
                return s.connect_ex((HOST, self.port)) == 0
        if not wait_for(listening, 10):
            self.fail(f"turnserver not listening on {HOST}:{self.port}")

    @property
    def url(self) -> str:
        return f"turn:{HOST}:{self.port}?transport=udp"


@pytest.fixture
def coturn(tmp_path):
    server = Coturn(tmp_path / "coturn", secret="turn-rest-test-secret-0123456789")
    server.start()
    yield server
    print(f"\n===== coturn log tail =====\n{server.log_tail(60)}")
    server.stop()
