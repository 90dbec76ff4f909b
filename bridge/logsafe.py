"""Text from the network, made safe to log.

Anything a peer sent (SIP headers, HTTP headers, JSON fields, user ids) may carry control
characters that forge log lines (CR/LF), move a terminal's cursor (ESC) or hide text. `safe()`
escapes them the way Python's repr does and caps the length, so one log line stays one line.
"""

from __future__ import annotations

import re
import traceback

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(value: object, limit: int = 200) -> str:
    """`value` as text with control characters escaped, at most `limit` characters (+ '...')."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return _UNSAFE.sub(_escape, text)


def failure(exc: BaseException) -> str:
    """An exception as one safe line: its type, where it was raised (file:line), its message."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{where}: {safe(exc)}"
