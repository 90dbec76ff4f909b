"""The framing of SIP on a stream (RFC 3261 18.3) and its CRLF keep-alives (RFC 5626 3.5.1).

Framing (18.3): a message is its head, up to the empty line, then exactly Content-Length bytes.
On a stream the framing is all there is, so a message without a Content-Length, with a bad one,
with a start line that is not SIP (what follows a lying Content-Length), or larger than
`message.MAX_MESSAGE` closes the connection (counted `stream_malformed`); nothing more is read.
"""

from __future__ import annotations

import re

from .message import MAX_MESSAGE

PING, PONG = b"\r\n\r\n", b"\r\n"
_START = re.compile(rb"SIP/2\.0 [1-6]\d\d(?: [^\r\n]*)?|[A-Za-z0-9!%*_+`'~.-]+ [^\s]+ SIP/2\.0")
_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


class FramingError(ValueError):
    """The stream no longer holds SIP messages where they should be: the connection is closed."""


class Framer:
    """The bytes of one stream in; whole messages, pings (PING) and pongs (PONG) out, in order."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self.buffer = bytearray()
        self.awaiting_pong = False      # a lone CRLF is then our pong, not half of a ping

    @property
    def partial(self) -> bool:
        """Part of a message has arrived and the rest has not (a lone CRLF is no message)."""
        return bool(self.buffer) and self.buffer != b"\r\n"

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        frames: list[bytes] = []
        while self.buffer:
            frame = self._next()
            if frame is None:
                break
            frames.append(frame)
        return frames

    def _next(self) -> bytes | None:
        buf = self.buffer
        if buf.startswith(b"\r\n"):
            if buf.startswith(PING) and not self.awaiting_pong:
                del buf[:4]
                return PING
            if len(buf) == 2 and not self.awaiting_pong:
                return None                         # perhaps the first half of a ping
            del buf[:2]
            self.awaiting_pong = False
            return PONG
        line_end = buf.find(b"\r\n")
        if line_end < 0:
            if len(buf) > 1024:
                raise FramingError("no start line within 1024 bytes")
            return None
        if not _START.fullmatch(bytes(buf[:line_end])):
            raise FramingError("not a SIP start line")
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buf) > self.max_message:
                raise FramingError(f"a message head longer than {self.max_message} bytes")
            return None
        head = bytes(buf[:head_end + 2])
        lengths = _LENGTH.findall(head)
        if len(lengths) != 1:
            raise FramingError("no Content-Length" if not lengths else "more than one Content-Length")
        if not lengths[0].isdigit() or len(lengths[0]) > 9:
            raise FramingError("a bad Content-Length")
        size = head_end + 4 + int(lengths[0])
        if size > self.max_message:
            raise FramingError(f"a message longer than {self.max_message} bytes")
        if len(buf) < size:
            return None
        message = bytes(buf[:size])
        del buf[:size]
        return message
