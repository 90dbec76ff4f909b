"""The demo's desk phone (baresip) driven from outside: its ctrl_tcp socket, and `bridge phone`.

baresip's ctrl_tcp speaks netstrings (`LEN:JSON,`): a command `{"command": "dial", "params":
"sip:7001@pbx", "token": "1"}` gets `{"response": true, "ok": true, "data": "...", "token": "1"}`,
and every connected client also receives the phone's events, `{"event": true, "class": "call",
"type": "CALL_ESTABLISHED", "peeruri": "...", "param": "..."}` (CALL_INCOMING, CALL_RINGING,
CALL_PROGRESS, CALL_ESTABLISHED, CALL_CLOSED with the reason in "param", REGISTER_OK, ...).

baresip serves one control client at a time, so the demo holds that connection and relays it
(`Relay`) to any number of clients on a port of its own: its console and `bridge phone`.

`bridge phone EXT dial NUMBER` finds the running demo of the same config (its state file), has
desk phone EXT dial NUMBER at the demo's PBX, prints the call's progress and waits for its end
(or hangs up after --seconds, or on Ctrl-C); `bridge phone EXT hangup` ends the phone's call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
from typing import Any

from .logsafe import safe

Event = dict[str, Any]
NUMBER = re.compile(r"[0-9A-Za-z*#+._-]{1,32}")
CONNECT_TIMEOUT = 3.0


class PhoneError(Exception):
    """The phone cannot be reached or refused a command: printed as one line."""


class DeskPhone:
    """One connection to a baresip ctrl_tcp socket: commands, and the phone's events in a queue."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self.events: asyncio.Queue[Event | None] = asyncio.Queue()    # None: the phone went away
        self._replies: dict[str, asyncio.Future[Event]] = {}
        self._token = 0
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, host: str, port: int) -> "DeskPhone":
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            raise PhoneError(f"cannot reach the desk phone's control socket {host}:{port}: {exc}") from None
        return cls(reader, writer)

    async def _read(self) -> None:
        try:
            while True:
                length = await self._reader.readuntil(b":")
                payload = await self._reader.readexactly(int(length[:-1]) + 1)   # + the trailing ","
                with contextlib.suppress(ValueError):
                    msg = json.loads(payload[:-1])
                    if msg.get("response"):
                        waiter = self._replies.pop(str(msg.get("token")), None)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(msg)
                    elif msg.get("event"):
                        self.events.put_nowait(msg)
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.events.put_nowait(None)           # the phone closed it (closed by us: cancelled)
        finally:
            for waiter in self._replies.values():
                if not waiter.done():
                    waiter.set_exception(PhoneError("the desk phone closed its control socket"))

    async def command(self, command: str, params: str | None = None, timeout: float = 5.0) -> Event:
        """Run one of baresip's long commands (dial, hangup, accept, reginfo, ...); its reply."""
        self._token += 1
        token = str(self._token)
        msg: dict[str, str] = {"command": command, "token": token}
        if params is not None:
            msg["params"] = params
        waiter = asyncio.get_running_loop().create_future()
        self._replies[token] = waiter
        try:
            self._writer.write(_frame(msg))
            await self._writer.drain()
            return await asyncio.wait_for(waiter, timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise PhoneError(f"the desk phone did not answer {command!r}: {exc or 'timeout'}") from None
        finally:
            self._replies.pop(token, None)

    async def registered(self) -> bool:
        """Does `reginfo` say the phone's account is registered (OK)?"""
        data = (await self.command("reginfo")).get("data", "")
        return bool(re.search(r"sip:\S+\s+(?:\x1b\[[0-9;]*m)*\s*OK\b", str(data)))

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(OSError):
            self._writer.close()
            await self._writer.wait_closed()


def _frame(msg: dict) -> bytes:
    data = json.dumps(msg).encode()
    return str(len(data)).encode() + b":" + data + b","


class Relay:
    """baresip's ctrl_tcp serves one client at a time (a new connection drops the last one), so
    the demo holds that connection and serves any number of clients on a port of its own, in the
    same protocol: each command goes to the phone and its reply back to the client that asked;
    every event goes to every client."""

    def __init__(self, phone: DeskPhone) -> None:
        self.phone = phone
        self._clients: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str) -> int:
        self._server = await asyncio.start_server(self._serve, host, 0)
        return self._server.sockets[0].getsockname()[1]

    def broadcast(self, event: Event) -> None:
        for writer in list(self._clients):
            writer.write(_frame(event))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while True:
                length = await reader.readuntil(b":")
                msg = json.loads((await reader.readexactly(int(length[:-1]) + 1))[:-1])
                try:
                    reply = await self.phone.command(str(msg["command"]), msg.get("params"))
                except PhoneError as exc:
                    reply = {"response": True, "ok": False, "data": str(exc)}
                writer.write(_frame({**reply, "token": msg.get("token")}))
        except (OSError, ValueError, KeyError, TypeError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._clients):
            writer.close()


def describe(event: Event) -> str | None:
    """A call event as a short line for a person, or None for events not worth a line."""
    kind, peer, param = event.get("type", ""), safe(event.get("peeruri", ""), 80), safe(event.get("param", ""), 80)
    return {
        "CALL_INCOMING": f"incoming call from {peer}",
        "CALL_OUTGOING": f"calling {peer}",
        "CALL_RINGING": "ringing",
        "CALL_PROGRESS": "ringing (early media)",
        "CALL_ESTABLISHED": f"connected with {peer}",
        "CALL_CLOSED": f"call ended ({_closed(param)})",
    }.get(str(kind))


def _closed(param: str) -> str:
    """baresip's reason for a closed call, in words: a BYE from the other side reads
    "Connection reset by peer" (ECONNRESET), a local hangup is empty."""
    if not param:
        return "hung up here"
    return "the other side hung up" if "reset by peer" in param else param


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `bridge phone` arguments (the caller adds -c/--config)."""
    parser.add_argument("ext", metavar="EXT", help="the demo's desk phone (2001)")
    parser.add_argument("action", choices=("dial", "hangup"), help="dial NUMBER, or hang up its call")
    parser.add_argument("number", nargs="?", help="what to dial (7NNN reaches app user agent-NNN)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="hang up after this long connected (default: wait for the other side)")


async def run(args: argparse.Namespace, ctrl: tuple[str, int], pbx: tuple[str, int]) -> int:
    """`bridge phone`: 0 if the call connected (dial) or the command was taken (hangup)."""
    phone = await DeskPhone.connect(*ctrl)
    try:
        if args.action == "hangup":
            reply = await phone.command("hangup")
            print(f"desk phone {args.ext}: {safe(reply.get('data', '') or 'hung up', 120).strip()}")
            return 0 if reply.get("ok") else 1
        if not args.number or not NUMBER.fullmatch(args.number):
            raise PhoneError("dial needs a number, e.g. `bridge phone 2001 dial 7001`")
        uri = f"sip:{args.number}@{pbx[0]}:{pbx[1]}"
        reply = await phone.command("dial", uri)
        if not reply.get("ok"):
            raise PhoneError(f"the desk phone refused to dial {uri}: {safe(reply.get('data', ''), 120)}")
        print(f"desk phone {args.ext} dials {args.number}", flush=True)
        return await _follow(phone, args.seconds)
    except (KeyboardInterrupt, asyncio.CancelledError):
        with contextlib.suppress(PhoneError):
            await phone.command("hangup")
        raise
    finally:
        await phone.close()


async def _follow(phone: DeskPhone, seconds: float | None) -> int:
    """Print the call's events until it ends; hang up `seconds` after it connected."""
    connected = False
    deadline: float | None = None
    loop = asyncio.get_running_loop()
    while True:
        timeout = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            event = await asyncio.wait_for(phone.events.get(), timeout)
        except asyncio.TimeoutError:
            await phone.command("hangup")
            deadline = None
            continue
        if event is None:
            print("the desk phone went away")
            return 1
        line = describe(event)
        if line:
            print(line, flush=True)
        if event.get("type") == "CALL_ESTABLISHED":
            connected = True
            if seconds is not None:
                deadline = loop.time() + seconds
        if event.get("type") == "CALL_CLOSED":
            return 0 if connected else 1
