"""The crash journal: enough of each SIP call to end it after the bridge died mid-call.

One JSON line per event in a file under the service's state directory:
  {"op": "invite",  "call_id", "request": <our INVITE, wire form>, "dest": [host, port]}
  {"op": "ringing", "call_id", "response": <a 480 to the PBX's INVITE, wire form>, "dest": [...]}
  {"op": "up",      "call_id", "dialog": {...}}     a confirmed dialog
  {"op": "down",    "call_id"}                      the call ended
Writes are appended and flushed (no fsync: a killed process loses nothing the kernel has; a
power cut ends the calls anyway). After a crash the next start reads what is still open and
ends it: BYE for confirmed dialogs, CANCEL for INVITEs still ringing at the far end, 480 for
calls the PBX was still ringing at us; then the file starts afresh. An exclusive lock keeps
two processes from sharing one journal.

The entries are plain dicts (`invite_entry`, `ringing_entry`, `up_entry`, `down_entry`), so
that another sink (a cluster node's mirror in Redis, `bridge.cluster.dialogs`) can keep the
same ones, and `end_left_open` ends them whoever kept them.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..logsafe import safe
from .dialog import Dialog
from .message import Request, SipMessage, SipParseError

if TYPE_CHECKING:
    from .useragent import UserAgent

log = logging.getLogger("bridge.sip")


class JournalError(RuntimeError):
    """The journal cannot be opened (unwritable, or in use by another process)."""


def invite_entry(call_id: str, request: bytes, dest: tuple[str, int]) -> dict[str, Any]:
    return {"op": "invite", "call_id": call_id, "request": request.decode("utf-8", "replace"), "dest": list(dest)}


def ringing_entry(call_id: str, response: bytes, dest: tuple[str, int]) -> dict[str, Any]:
    return {"op": "ringing", "call_id": call_id, "response": response.decode("utf-8", "replace"),
            "dest": list(dest)}


def up_entry(dialog: Dialog) -> dict[str, Any]:
    data = asdict(dialog)
    data.pop("credentials", None)                          # nothing secret on disk
    data["peers"] = sorted(dialog.peers)
    return {"op": "up", "call_id": dialog.call_id, "dialog": data}


def down_entry(call_id: str) -> dict[str, Any]:
    return {"op": "down", "call_id": call_id}


def still_open(open_calls: dict[str, dict[str, Any]], entry: dict[str, Any]) -> None:
    """Fold one entry into the calls left open: `down` closes, `up` wins over the earlier ones."""
    call_id, op = entry["call_id"], entry["op"]
    if op == "down":
        open_calls.pop(call_id, None)
    elif op == "up" or call_id not in open_calls or open_calls[call_id]["op"] != "up":
        open_calls[call_id] = entry


class Journal:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        self.write_errors = 0

    def open(self) -> list[dict[str, Any]]:
        """Lock the journal and return the calls a previous process left open."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            handle = open(self.path, "a+", encoding="utf-8")
        except OSError as exc:
            raise JournalError(f"cannot open the SIP crash journal {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise JournalError(f"the SIP crash journal {self.path} is in use by another bridge process") from None
        handle.seek(0)
        open_calls: dict[str, dict[str, Any]] = {}
        for line in handle:
            try:
                still_open(open_calls, json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue                                   # a torn last line after a crash
        handle.seek(0)
        handle.truncate()
        self._file = handle
        return list(open_calls.values())

    def write(self, entry: dict[str, Any]) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
            self._file.flush()
        except (OSError, ValueError) as exc:
            self.write_errors += 1
            if self.write_errors == 1:
                log.error("SIP crash journal %s: cannot write: %s", self.path, exc)

    def close(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()                          # a clean stop leaves nothing to recover
            self._file.close()
            self._file = None


def dialog_of(entry: dict[str, Any]) -> Dialog:
    data = dict(entry["dialog"])
    data["peers"] = set(data.get("peers", []))
    return Dialog(**data)


async def end_left_open(ua: "UserAgent", entries: list[dict[str, Any]]) -> None:
    """End what a previous process left open: BYE, CANCEL, or 480 to a ringing INVITE."""
    log.warning("ending %d SIP call(s) left open by a previous run (crash or kill)", len(entries))
    waits = []
    for entry in entries:
        try:
            op, dest = entry["op"], (str(entry.get("dest", ["", 0])[0]), int(entry.get("dest", ["", 0])[1]))
            if op == "up":
                dialog = dialog_of(entry)
                dialog.local_seq += 100               # above any request the old process sent
                tx = await ua.send_in_dialog(dialog, dialog.request("BYE", ua.via()))
                if tx is not None:
                    waits.append(tx.next())
            elif op == "invite":
                invite = SipMessage(entry["request"].encode())
                cancel = Request("CANCEL", invite.uri, invite.top_via, invite.first("From") or "",
                                 invite.first("To") or "", invite.call_id, invite.cseq[0], invite.all("Route"))
                waits.append(ua.layer.request(cancel, dest).next())
            elif op == "ringing":
                ua.transport.send(entry["response"].encode(), dest)
            ua.recovered += 1
        except (KeyError, TypeError, ValueError, SipParseError) as exc:
            log.warning("crash journal: skipped an unreadable entry: %s", safe(exc))
    if waits:
        await asyncio.wait([asyncio.ensure_future(w) for w in waits], timeout=5)
