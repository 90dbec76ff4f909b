"""How a SIP call ends: its result (`SipResult`, and `result_of` a final response), `CallEnd`
(result, status, by whom) and `CallFailed`, what awaiting the answer of a call that ended raises."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class SipResult(str, enum.Enum):
    """How a SIP call ended, in terms a bridge can map to the app side."""

    NORMAL = "normal"               # answered, then hung up (BYE)
    BUSY = "busy"                   # 486, 600
    DECLINED = "declined"           # 603
    NOT_FOUND = "not_found"         # 404, 484, 604
    UNAVAILABLE = "unavailable"     # 480, 408, transaction timeout
    NO_ANSWER = "no_answer"         # ring timeout (we cancelled)
    CANCELLED = "cancelled"         # cancelled before answer (by us on request, or by the caller)
    AUTH_FAILED = "auth_failed"     # 401/407 after credentials, or 403
    REJECTED = "rejected"           # other 4xx/6xx
    SERVER_ERROR = "server_error"   # 5xx
    FAILED = "failed"               # local trouble (media, no common codec, no ACK, ...)
    MEDIA_TIMEOUT = "media_timeout"       # no RTP from the peer for sip.media_timeout
    SESSION_EXPIRED = "session_expired"   # RFC 4028: the session was not refreshed in time


_RESULTS = {486: SipResult.BUSY, 600: SipResult.BUSY, 603: SipResult.DECLINED,
            404: SipResult.NOT_FOUND, 484: SipResult.NOT_FOUND, 604: SipResult.NOT_FOUND,
            480: SipResult.UNAVAILABLE, 408: SipResult.UNAVAILABLE, 410: SipResult.NOT_FOUND,
            401: SipResult.AUTH_FAILED, 407: SipResult.AUTH_FAILED, 403: SipResult.AUTH_FAILED,
            487: SipResult.CANCELLED}


def result_of(code: int) -> SipResult:
    if code in _RESULTS:
        return _RESULTS[code]
    return SipResult.SERVER_ERROR if 500 <= code < 600 else SipResult.REJECTED


@dataclass(frozen=True)
class CallEnd:
    result: SipResult
    code: int          # the SIP status that ended it (0 for BYE / local)
    by: str            # "local" or "remote"

    def __str__(self) -> str:
        code = f" {self.code}" if self.code else ""
        return f"{self.result.value}{code} by {self.by}"


class CallFailed(Exception):
    def __init__(self, end: CallEnd) -> None:
        super().__init__(str(end))
        self.end = end
