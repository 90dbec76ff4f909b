"""bridge's open signalling protocol: JSON messages over one WebSocket per call leg.

Client -> platform, first message of a socket (it says what the socket is for):
  make_call   {token, my_id, my_service_id, peer_id, peer_service_id, media_type, sdp, app_server_data?}
  verify_call {cc_param, my_id, my_service_id, media_type}
  listen      {token, my_id, my_service_id}            (embedded push: receive `push` messages)
  ice_servers {token, my_id, my_service_id}            (before make_call, on the same socket: a
              caller gathers its ICE candidates before its offer; answered `ice_servers`, empty
              for a bad token; the socket's next message must be make_call, within 10 s)
Client -> platform, later:
  answer {sdp}  accept_call {}  end_call {reason?}  mute {muted}  dtmf {digits}
  hold {held}                      (connected calls only: the leg holds or resumes the call)
Platform -> client:
  ice_servers {ice_servers}   verified {sid, peer_id, peer_service_id, sdp, app_server_data, ice_servers}
      ice_servers: the STUN/TURN servers for this call, as W3C RTCIceServer dicts
      {urls, username?, credential?} (TURN credentials may be minted for this call: `iceservers`)
  call_made {sid}  wait_connected {}
  sdp {sdp}  connected {}  disconnected {source, code, str_code}  peer_mute {muted}  dtmf {digits}
  peer_hold {held}
  push {cc_param, app_callee_uid, app_callee_sid, app_call_type, app_svr_data}  listening {}
  error {code, message}
"""

from __future__ import annotations

import json
import re
from typing import Any

USER_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
SERVICE_ID = re.compile(r"[a-zA-Z0-9.-]{1,64}")
DTMF_DIGITS = re.compile(r"[0-9*#A-Da-d]{1,32}")
MEDIA_TYPES = ("audio",)
MAX_APP_SERVER_DATA = 4096
MAX_SDP = 32 * 1024

_STR = (str,)
_OPT_STR = (str, type(None))

# message type -> {field: allowed python types}; every listed field is required.
CLIENT_MESSAGES: dict[str, dict[str, tuple[type, ...]]] = {
    "make_call": {
        "token": _STR, "my_id": _STR, "my_service_id": _STR, "peer_id": _STR,
        "peer_service_id": _STR, "media_type": _STR, "sdp": _STR,
    },
    "verify_call": {"cc_param": _STR, "my_id": _STR, "my_service_id": _STR, "media_type": _STR},
    "listen": {"token": _STR, "my_id": _STR, "my_service_id": _STR},
    "ice_servers": {"token": _STR, "my_id": _STR, "my_service_id": _STR},
    "answer": {"sdp": _STR},
    "accept_call": {},
    "end_call": {},
    "mute": {"muted": (bool,)},
    "dtmf": {"digits": _STR},
    "hold": {"held": (bool,)},
}
OPTIONAL_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "make_call": {"app_server_data": _OPT_STR},
    "end_call": {"reason": (int,)},
}
# Reasons a leg may give when it ends a call (bridge's extension to endCall, used by the
# bridge to pass on why the desk phone did not take the call).
END_REASONS = (1001, 1002, 1109, 1110, 1112, 1202, 1203, 1301, 1502, 1503, 1504, 1505, 1512)
OPENING_MESSAGES = ("make_call", "verify_call", "listen", "ice_servers")


class ProtocolError(Exception):
    """A message that does not follow the protocol; `code` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self) -> dict:
        return {"type": "error", "code": self.code, "message": self.message}


def parse(text: str) -> dict[str, Any]:
    """Parse and validate one client message; raises ProtocolError with a clear message."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_json", "message is not valid JSON") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", "message must be a JSON object")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "message has no string field 'type'")
    fields = CLIENT_MESSAGES.get(kind)
    if fields is None:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}")
    for name, types in fields.items():
        if name not in msg:
            raise ProtocolError("missing_field", f"{kind}: missing field {name!r}")
        _check_type(kind, name, msg[name], types)
    for name, types in OPTIONAL_FIELDS.get(kind, {}).items():
        if name in msg:
            _check_type(kind, name, msg[name], types)
    _check_values(kind, msg)
    return msg


def _check_type(kind: str, name: str, value: Any, types: tuple[type, ...]) -> None:
    # bool is an int in Python; keep JSON's types apart.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise ProtocolError("wrong_type", f"{kind}: field {name!r} must be {want}")
    if isinstance(value, str) and not _is_text(value):
        raise ProtocolError("bad_text", f"{kind}: field {name!r} is not valid Unicode text "
                                        "(a lone surrogate escape)")


def _is_text(value: str) -> bool:
    """JSON may escape lone surrogates ("\\ud800"); such a string cannot be encoded or sent on."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_values(kind: str, msg: dict[str, Any]) -> None:
    for name, pattern in (("my_id", USER_ID), ("peer_id", USER_ID),
                          ("my_service_id", SERVICE_ID), ("peer_service_id", SERVICE_ID)):
        if name in msg and not pattern.fullmatch(msg[name]):
            raise ProtocolError("invalid_id", f"{kind}: {name} {msg[name][:70]!r} is not a valid id")
    if "media_type" in msg and msg["media_type"] not in MEDIA_TYPES:
        raise ProtocolError("invalid_media_type", f"{kind}: media_type must be 'audio'")
    if "sdp" in msg and len(msg["sdp"]) > MAX_SDP:
        raise ProtocolError("too_large", f"{kind}: sdp longer than {MAX_SDP} characters")
    data = msg.get("app_server_data")
    if data is not None and len(data.encode()) > MAX_APP_SERVER_DATA:
        raise ProtocolError("too_large", f"{kind}: app_server_data longer than {MAX_APP_SERVER_DATA} bytes")
    if kind == "end_call" and "reason" in msg and msg["reason"] not in END_REASONS:
        raise ProtocolError("invalid_reason", f"end_call: reason must be one of {END_REASONS}")
    if kind == "dtmf" and not DTMF_DIGITS.fullmatch(msg["digits"]):
        raise ProtocolError("invalid_digits", "dtmf: digits must be 1-32 of 0-9 * # A-D")


def dumps(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields})
