"""The call model's codes: START_FAIL_REASON, disconnect reasons, sources, Q.850 causes.

Names and numbers follow the 1-to-1 call model (see README, "Call model"), so that a
PlanetKit developer recognises them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StartFailReason(str, enum.Enum):
    """Why makeCall/verifyCall was rejected locally (the promise rejection)."""

    NONE = "none"
    INVALID_PARAM = "invalid_param"
    DECODE_CALL_PARAM = "decode_call_param"
    ID_CONFLICT = "id_conflict"
    INVALID_USER_ID = "invalid_user_id"
    INVALID_SERVICE_ID = "invalid_service_id"
    INVALID_API_KEY = "invalid_api_key"
    TOO_LONG_APP_SERVER_DATA = "too_long_app_server_data"
    BROWSER_NOT_SUPPORTED = "browser_not_supported"
    INVALID_MEDIA_TYPE = "invalid_media_type"
    INTERNAL_INITIALIZATION_ERROR = "internal_initialization_error"


class DisconnectReason(enum.IntEnum):
    """Why a call ended (evtDisconnected and the Call Event callback)."""

    NORMAL = 1001
    DECLINE = 1002
    INTERNAL_ERROR = 1109
    USER_ERROR = 1110
    AUDIO_TX_NO_SRC = 1112
    CANCEL = 1201
    BUSY = 1202
    NOANSWER = 1203
    ALREADY_GOT_A_CALL = 1204
    MULTIDEV_IN_USE = 1205
    MAX_CALL_TIME_EXCEEDED = 1208
    NETWORK_UNSTABLE = 1301
    PUSH_ERROR = 1302
    AUTH_ERROR = 1303
    RELEASED_CALL = 1304
    SERVER_INTERNAL_ERROR = 1305
    UNAVAILABLE_NETWORK = 1308
    APP_DESTROY = 1309
    SERVICE_ACCESS_TOKEN_ERROR = 1501
    SERVICE_INVALID_ID = 1502
    SERVICE_MAINTENANCE = 1503
    SERVICE_BUSY = 1504
    SERVICE_INTERNAL_ERROR = 1505
    SERVICE_TOO_MANY_REQUESTS = 1512
    WEB_RTC_NOT_ALLOWED = 1602
    WEB_NO_MEDIA_PACKET = 1608
    WEB_SIGNALING_UNEXPECTED_DISCONNECTED = 1611

    @property
    def str_code(self) -> str:
        return f"PLANETKIT_DISCONNECT_REASON_{self.name}"

    @property
    def q850(self) -> int:
        """The Q.850 cause carried as `terminate` in the Call Event callback."""
        return _Q850.get(self, 127)


_Q850 = {
    DisconnectReason.NORMAL: 16,
    DisconnectReason.BUSY: 17,
    DisconnectReason.NOANSWER: 18,
    DisconnectReason.DECLINE: 21,
    DisconnectReason.CANCEL: 77,
}


class Source(str, enum.Enum):
    """Who released the call (evtDisconnected `source`)."""

    CALLEE = "callee"
    CALLER = "caller"
    PARTICIPANT = "participant"
    CLOUD_SERVER = "cloud_server"
    APP_SERVER = "app_server"

    @property
    def releaser_type(self) -> int:
        """The number used by the Call Event callback's `releaser_type`."""
        return _RELEASER[self]


_RELEASER = {
    Source.CALLEE: 1,
    Source.CALLER: 2,
    Source.PARTICIPANT: 3,
    Source.CLOUD_SERVER: 4,
    Source.APP_SERVER: 5,
}


@dataclass(frozen=True)
class Disconnected:
    """The parameter of evtDisconnected."""

    source: Source
    reason: DisconnectReason

    def to_json(self) -> dict:
        return {"source": self.source.value, "code": int(self.reason), "str_code": self.reason.str_code}

    @classmethod
    def from_json(cls, data: dict) -> "Disconnected":
        try:
            reason = DisconnectReason(int(data["code"]))
        except (KeyError, TypeError, ValueError):
            reason = DisconnectReason.INTERNAL_ERROR
        try:
            source = Source(data.get("source"))
        except ValueError:
            source = Source.CLOUD_SERVER
        return cls(source, reason)

    def __str__(self) -> str:
        return f"{self.reason.name} ({int(self.reason)}) by {self.source.value}"


# --- SIP <-> call model (see README, "Hang-up reasons") ---------------------------------------

def from_sip(result: str) -> DisconnectReason:
    """The disconnect reason an app caller sees when the desk phone's leg ends with `result`."""
    return _FROM_SIP.get(result, DisconnectReason.INTERNAL_ERROR)


_FROM_SIP = {
    "normal": DisconnectReason.NORMAL,
    "busy": DisconnectReason.BUSY,
    "declined": DisconnectReason.DECLINE,
    "not_found": DisconnectReason.SERVICE_INVALID_ID,
    "unavailable": DisconnectReason.NOANSWER,
    "no_answer": DisconnectReason.NOANSWER,
    "cancelled": DisconnectReason.NORMAL,
    "auth_failed": DisconnectReason.SERVICE_INTERNAL_ERROR,
    "rejected": DisconnectReason.USER_ERROR,
    "server_error": DisconnectReason.SERVICE_INTERNAL_ERROR,
    "failed": DisconnectReason.INTERNAL_ERROR,
    "media_timeout": DisconnectReason.NETWORK_UNSTABLE,
    "session_expired": DisconnectReason.NETWORK_UNSTABLE,
}


def to_sip_status(reason: DisconnectReason) -> int:
    """The SIP status a desk phone's unanswered call gets when the app call ends with `reason`."""
    return _TO_SIP.get(reason, 480)


_TO_SIP = {
    DisconnectReason.DECLINE: 603,
    DisconnectReason.BUSY: 486,
    DisconnectReason.NOANSWER: 480,
    DisconnectReason.PUSH_ERROR: 480,
    DisconnectReason.AUTH_ERROR: 403,
    DisconnectReason.SERVICE_ACCESS_TOKEN_ERROR: 403,
    DisconnectReason.SERVICE_INVALID_ID: 404,
    DisconnectReason.SERVICE_BUSY: 503,
    DisconnectReason.SERVICE_TOO_MANY_REQUESTS: 503,
    DisconnectReason.SERVICE_MAINTENANCE: 503,
    DisconnectReason.UNAVAILABLE_NETWORK: 503,
}
