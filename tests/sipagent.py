"""bridge's own SIP UserAgent as a test party, registered at the test-bed Kamailio."""

from __future__ import annotations

import asyncio

from bridge.config import SipConfig
from bridge.sip import IncomingCall, UserAgent
from stack import BRIDGE_PW, BRIDGE_USER


def sip_config(kamailio_port: int, **kw) -> SipConfig:
    settings = dict(registrar_host="127.0.0.1", registrar_port=kamailio_port, domain="127.0.0.1",
                    username=BRIDGE_USER, auth_username=BRIDGE_USER, password=BRIDGE_PW, bind_port=0,
                    keepalive=1.0, register_expires=30, transaction_timeout=1.0, max_backoff=2.0,
                    rtp_low=31000, rtp_high=31999, ring_timeout=20.0)
    settings.update(kw)
    return SipConfig(**settings)


class Agent:
    """A started UserAgent; incoming calls land in `incoming`."""

    def __init__(self, kamailio, journal: str | None = None, **kw) -> None:
        """`kamailio`: the registrar (a Kamailio, or anything with a `port`, like a SipPeer)."""
        self.incoming: asyncio.Queue[IncomingCall] = asyncio.Queue()
        self.ua = UserAgent(sip_config(kamailio.port, **kw), self._on_incoming, journal=journal)
        self.kamailio = kamailio

    async def _on_incoming(self, call: IncomingCall) -> None:
        self.incoming.put_nowait(call)

    async def start(self, registered: bool = True) -> "Agent":
        await self.ua.start()
        if registered:
            await self.wait_registered()
        return self

    @property
    def addr(self) -> tuple[str, int]:
        return self.ua.local

    async def wait_registered(self, count: int = 1, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not (self.ua.registration.state == "registered" and self.ua.registration.count >= count):
                await asyncio.sleep(0.05)


async def blocking(fn, *args, **kw):
    """Run a blocking test-bed call (baresip control, sipp) off the event loop."""
    return await asyncio.to_thread(fn, *args, **kw)
