"""Call records: one JSON object per bridged call, written when the call ends.

Every record goes to the `bridge.cdr` logger at INFO (one line), and, with `bridge.call_records:
PATH`, is appended to that file as one line (JSON Lines). The file is opened for each record and
closed again (so logrotate may move it at any time; no signal needed), and each line is written
whole with one append and a flush: a few tens of microseconds on the event loop. A file that
cannot be written is logged once (ERROR), and again only after a write succeeded in between; the
call is never affected.

The record (times ISO 8601 UTC with milliseconds; absent values are null):

    sid          the app call's sid (the platform's)
    direction    app_to_sip | sip_to_app
    route        the route's name
    result       the bridge's outcome: normal, busy, no_route, app_ended, network_unstable, ...
    app          caller, callee ("user@service"), codec, end {source, reason, code}
    sip          call_ids (each SIP leg in turn: fallback targets, transfers), from, to, codec,
                 end {result, status, by}
    times        setup (the push or INVITE arrived), answer (both legs up), end;
                 setup_seconds (setup to answer), talk_seconds (answer to end; 0 unanswered)
    media        per direction, what the bridge received from the sender (packets, lost,
                 jitter_ms) and sent on (sent); sip_to_app also what the app reported
                 (lost_at_app, jitter_at_app_ms: RTCP). SIP figures are the last SIP leg's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .reasons import Disconnected
from .rtp import RtpStats
from .sdk import AudioStats

log = logging.getLogger("bridge.call")
cdr_log = logging.getLogger("bridge.cdr")


def iso(t: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 UTC with milliseconds (None stays None)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class SipEnd:
    """How the SIP leg ended, in SIP terms."""

    result: str          # bridge.sip.SipResult value: normal, busy, declined, ...
    status: int          # the SIP status that ended it (0: BYE or local)
    by: str              # local or remote


@dataclass
class CallRecord:
    """What one bridged call leaves behind; filled in by the call as it goes."""

    direction: str
    setup: float                                   # time.time() when the call arrived
    sid: str | None = None
    route: str | None = None
    result: str = ""
    app_caller: str | None = None
    app_callee: str | None = None
    app_codec: str = ""
    app_end: Disconnected | None = None
    app_stats: AudioStats | None = None
    sip_call_ids: list[str] = field(default_factory=list)
    sip_from: str | None = None
    sip_to: str | None = None
    sip_codec: str = ""
    sip_end: SipEnd | None = None
    sip_stats: RtpStats | None = None
    answer: float | None = None
    end: float | None = None

    def to_json(self) -> dict[str, Any]:
        end = self.end if self.end is not None else self.setup
        app, sip = self.app_stats or AudioStats(), self.sip_stats or RtpStats()
        return {
            "sid": self.sid, "direction": self.direction, "route": self.route, "result": self.result,
            "app": {"caller": self.app_caller, "callee": self.app_callee, "codec": self.app_codec or None,
                    "end": None if self.app_end is None else {
                        "source": self.app_end.source.value, "reason": self.app_end.reason.name,
                        "code": int(self.app_end.reason)}},
            "sip": {"call_ids": self.sip_call_ids, "from": self.sip_from, "to": self.sip_to,
                    "codec": self.sip_codec or None,
                    "end": None if self.sip_end is None else vars(self.sip_end)},
            "times": {"setup": iso(self.setup), "answer": iso(self.answer), "end": iso(self.end),
                      "setup_seconds": round((self.answer or end) - self.setup, 3),
                      "talk_seconds": round(end - self.answer, 3) if self.answer is not None else 0.0},
            "media": {
                "app_to_sip": {"received": app.packets_received, "lost": app.packets_lost,
                               "jitter_ms": round(app.jitter_ms, 2), "sent": sip.packets_sent},
                "sip_to_app": {"received": sip.packets_received, "lost": sip.lost,
                               "jitter_ms": round(sip.jitter_ms, 2), "sent": app.packets_sent,
                               "lost_at_app": app.peer_packets_lost,
                               "jitter_at_app_ms": None if app.peer_jitter_ms is None
                               else round(app.peer_jitter_ms, 2)},
            },
        }


class CallRecordLog:
    """Writes call records: to `bridge.cdr`, and appended to `path` if given."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.written = 0
        self._failing = False

    def write(self, record: CallRecord) -> None:
        line = json.dumps(record.to_json(), separators=(",", ":"))
        cdr_log.info("%s", line)
        if self.path is None:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(line + "\n")
                file.flush()
        except OSError as exc:
            if not self._failing:
                log.error("call records: cannot write %s: %s (logged once until a write succeeds)",
                          self.path, exc.strerror or exc)
                self._failing = True
            return
        self.written += 1
        if self._failing:
            log.warning("call records: writing %s again", self.path)
            self._failing = False
