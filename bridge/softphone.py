"""An app user at the terminal: `bridge dial` and `bridge answer`, built on the Python SDK."""

from __future__ import annotations

import argparse
import asyncio
import ssl
import time
from typing import Callable

from . import tls
from .audio import ToneTrack, WavRecorder
from .config import Config
from .reasons import Disconnected
from .sdk import (Call, CallDelegate, ListenError, MakeCallParams, PushListener, StartFailError,
                  VerifyCallParams)

TokenFor = Callable[[str, str], str]


def say(text: str) -> None:
    print(text, flush=True)


class Progress(CallDelegate):
    """Prints the call's progress; remembers whether it connected."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.ended = asyncio.Event()
        self.connected_at: float | None = None

    def evt_wait_connected(self) -> None:
        say("ringing")

    def evt_verified(self, param) -> None:
        say(f"incoming call from {param.peer_id}@{param.peer_service_id}")

    def evt_connected(self) -> None:
        self.connected_at = time.monotonic()
        say("connected")
        self.connected.set()

    def evt_disconnected(self, param: Disconnected) -> None:
        held = f" after {time.monotonic() - self.connected_at:.1f} s" if self.connected_at else ""
        say(f"ended: {param}{held}")
        self.ended.set()

    def evt_peer_mic_muted(self) -> None:
        say("peer muted")

    def evt_peer_mic_unmuted(self) -> None:
        say("peer unmuted")

    def evt_dtmf(self, digits: str) -> None:
        say(f"dtmf: {digits}")


def _source(args: argparse.Namespace):
    if args.tone:
        return ToneTrack(args.tone)
    return args.play


async def _wait(event: asyncio.Event, timeout: float | None) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except TimeoutError:
        return False


async def _hold(call: Call, progress: Progress, seconds: float) -> None:
    """Stay connected for `seconds` (or until the peer hangs up), then hang up."""
    await _wait(progress.ended, seconds)
    if not progress.ended.is_set():
        await call.end_call()


def _new_call(url: str, args: argparse.Namespace, cfg: Config) -> Call:
    """An SDK call with the options of the command line: `--ca` (else `bridge.platform_ca`) for a
    wss:// platform with a private CA, `--relay` for TURN relay candidates only."""
    return Call(url, ssl=_ssl(args, cfg), ice_transport_policy="relay" if args.relay else "all")


def _ssl(args: argparse.Namespace, cfg: Config) -> ssl.SSLContext | None:
    ca = args.ca or (cfg.bridge.platform_ca if cfg.bridge is not None else None)
    return tls.client_context(ca) if ca else None


async def dial(args: argparse.Namespace, cfg: Config, token_for: TokenFor) -> int:
    (my_id, my_service), (peer_id, peer_service) = args.caller, args.callee
    progress = Progress()
    recorder = WavRecorder(args.record)
    call = _new_call(args.platform or cfg.platform.public_url, args, cfg)
    try:
        await call.make_call(MakeCallParams(
            my_id=my_id, my_service_id=my_service, peer_id=peer_id, peer_service_id=peer_service,
            access_token=token_for(my_service, my_id), app_server_data=args.app_server_data,
            delegate=progress, audio=_source(args), peer_audio=recorder))
    except StartFailError as exc:
        say(f"call failed to start: {exc.reason.value}: {exc.message}")
        return 2
    if call.sid:
        say(f"calling {peer_id}@{peer_service} (sid {call.sid})")
    done = asyncio.ensure_future(progress.ended.wait())
    connected = asyncio.ensure_future(progress.connected.wait())
    await asyncio.wait([done, connected], timeout=cfg.platform.answer_timeout + 15,
                       return_when=asyncio.FIRST_COMPLETED)
    if progress.connected.is_set() and not progress.ended.is_set():
        if args.dtmf:
            await call.send_dtmf(args.dtmf)
        await _hold(call, progress, args.seconds)
    elif not progress.ended.is_set():
        await call.end_call()
    await _wait(progress.ended, 5)
    done.cancel()
    connected.cancel()
    recorder.close()
    return 0 if progress.connected_at is not None else 1


async def answer(args: argparse.Namespace, cfg: Config, token_for: TokenFor) -> int:
    my_id, my_service = args.me
    url = args.platform or cfg.platform.public_url
    failures = 0
    try:
        async with PushListener(url, my_id, my_service, token_for(my_service, my_id),
                                ssl=_ssl(args, cfg)) as pushes:
            say(f"waiting for calls as {my_id}@{my_service}")
            for n in range(args.calls):
                try:
                    push = await pushes.next(timeout=args.wait)
                except TimeoutError:
                    say("no call came")
                    return 1
                record = args.record if args.calls == 1 or not args.record else \
                    args.record.replace(".wav", f"-{n + 1}.wav")
                if not await _take(_new_call(url, args, cfg), push, args, record):
                    failures += 1
    except ListenError as exc:
        say(f"cannot wait for calls: {exc.param}")
        return 1
    except (OSError, ConnectionError) as exc:
        say(f"cannot reach the platform at {url}: {exc}")
        return 1
    return 1 if failures else 0


async def _take(call: Call, push, args: argparse.Namespace, record: str | None) -> bool:
    progress = Progress()
    recorder = WavRecorder(record)
    try:
        await call.verify_call(VerifyCallParams(
            my_id=push.app_callee_uid, my_service_id=push.app_callee_sid, cc_param=push.cc_param,
            delegate=progress, audio=_source(args), peer_audio=recorder))
    except StartFailError as exc:
        say(f"cannot take the call: {exc.reason.value}: {exc.message}")
        return False
    ok = False
    if call.state == "verified":
        if args.decline:
            await call.end_call()
            ok = True
        else:
            try:
                await call.accept_call()
                ok = True
                await _hold(call, progress, args.seconds)
            except RuntimeError as exc:
                say(f"accept failed: {exc}")
    await _wait(progress.ended, 5)
    recorder.close()
    return ok
