"""App users for tests: SDK calls with a recording delegate."""

from __future__ import annotations

import asyncio

from bridge.audio import RATE, ToneTrack, WavRecorder, tone_analysis
from bridge.sdk import (Call, CallDelegate, MakeCallParams, PushListener, VerifyCallParams)


class Events(CallDelegate):
    """Records every delegate event in order."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.connected = asyncio.Event()
        self.verified = asyncio.Event()
        self.wait_connected = asyncio.Event()
        self.disconnected: asyncio.Future = asyncio.get_running_loop().create_future()
        self.dtmf: list[str] = []
        self.peer_muted: list[bool] = []
        self.peer_held: list[bool] = []
        self.hold_changed = asyncio.Event()

    def evt_wait_connected(self) -> None:
        self.names.append("wait_connected")
        self.wait_connected.set()

    def evt_verified(self, param) -> None:
        self.names.append("verified")
        self.verified.set()

    def evt_connected(self) -> None:
        self.names.append("connected")
        self.connected.set()

    def evt_disconnected(self, param) -> None:
        self.names.append("disconnected")
        if not self.disconnected.done():
            self.disconnected.set_result(param)

    def evt_peer_mic_muted(self) -> None:
        self.peer_muted.append(True)

    def evt_peer_mic_unmuted(self) -> None:
        self.peer_muted.append(False)

    def evt_dtmf(self, digits: str) -> None:
        self.dtmf.append(digits)

    def evt_peer_hold(self) -> None:
        self.peer_held.append(True)
        self.hold_changed.set()

    def evt_peer_unhold(self) -> None:
        self.peer_held.append(False)
        self.hold_changed.set()

    async def held_changes(self, count: int, timeout: float = 10) -> list[bool]:
        """The peer's hold changes once `count` of them arrived."""
        async with asyncio.timeout(timeout):
            while len(self.peer_held) < count:
                self.hold_changed.clear()
                await self.hold_changed.wait()
        return self.peer_held


class Party:
    """One app user with a Call, its events and what it heard."""

    def __init__(self, url: str, user: str, service: str = "demo-app", tone: float | None = None) -> None:
        self.url, self.user, self.service = url, user, service
        self.call = Call(url)
        self.events = Events()
        self.heard = WavRecorder()
        self.tone = tone

    def _audio(self):
        return ToneTrack(self.tone, dbfs=-12) if self.tone else None

    async def make_call(self, peer: "Party | tuple[str, str]", token: str, **kw) -> None:
        peer_id, peer_service = (peer.user, peer.service) if isinstance(peer, Party) else peer
        await self.call.make_call(MakeCallParams(
            my_id=self.user, my_service_id=self.service, peer_id=peer_id, peer_service_id=peer_service,
            access_token=token, delegate=self.events, audio=self._audio(), peer_audio=self.heard, **kw))

    async def verify(self, cc_param: str) -> None:
        await self.call.verify_call(VerifyCallParams(
            my_id=self.user, my_service_id=self.service, cc_param=cc_param,
            delegate=self.events, audio=self._audio(), peer_audio=self.heard))

    def listener(self, token: str) -> PushListener:
        return PushListener(self.url, self.user, self.service, token)

    async def ended(self, timeout: float = 10):
        return await asyncio.wait_for(asyncio.shield(self.events.disconnected), timeout)


def min_snr(freq: float) -> float:
    """G.722 codes 4-8 kHz with 2 bits a sample: a clean 5-6 kHz tone comes out at ~22 dB SNR."""
    return 15.0 if freq > 4000 else 20.0


def assert_heard(party: Party, freq: float, seconds: float = 1.5) -> None:
    """The last `seconds` that `party` heard are a tone of `freq`."""
    found, snr = tone_analysis(party.heard.samples[-int(seconds * RATE):])
    assert abs(found - freq) < freq * 0.01 and snr > min_snr(freq), \
        f"{party.user} heard {found:.0f} Hz at {snr:.1f} dB, not {freq} Hz"
