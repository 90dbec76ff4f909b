"""Call transfer: REFER (RFC 3515) with progress NOTIFYs, Replaces (RFC 3891), Referred-By (3892).

A desk phone in a call with the bridge sends REFER with `Refer-To: <sip:2002@pbx>` (blind) or
`<sip:2003@pbx?Replaces=...>` (attended). `Referral.of` reads it (400 if it is not one usable
Refer-To); the call's user decides (202, or 403 when no transfer route allows the target); then
`Referral.notify` reports how the new call goes as `message/sipfrag` bodies in NOTIFYs of the
implicit subscription: `SIP/2.0 100 Trying` when the REFER is taken, then the final status (`200
OK` or the failure), which terminates the subscription. `Replaces` also names a dialog of ours in an incoming INVITE: `Replaces.parse`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote

from ..logsafe import safe
from .dialog import Dialog
from .message import SipMessage, phrase
from .uri import NameAddr, SipParseError

if TYPE_CHECKING:
    from .useragent import UserAgent

log = logging.getLogger("bridge.sip")


@dataclass(frozen=True)
class Replaces:
    """A dialog named by a Replaces header: its Call-ID and both tags."""

    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False

    @classmethod
    def parse(cls, value: str) -> "Replaces":
        call_id, *params = value.split(";")
        tags: dict[str, str] = {}
        early_only = False
        for param in params:
            name, _, arg = param.strip().partition("=")
            if name.lower() in ("to-tag", "from-tag"):
                tags[name.lower()] = arg.strip()
            elif name.lower() == "early-only":
                early_only = True
        if not call_id.strip() or "to-tag" not in tags or "from-tag" not in tags:
            raise SipParseError(f"bad Replaces: {value[:80]!r}")
        return cls(call_id.strip(), tags["to-tag"], tags["from-tag"], early_only)

    def __str__(self) -> str:
        return f"{self.call_id};to-tag={self.to_tag};from-tag={self.from_tag}"

    def names(self, dialog: Dialog) -> bool:
        """Does this name `dialog`? The tags are the recipient's view: to-tag is its local tag
        (RFC 3891 3); a sender that swapped them is forgiven."""
        return self.call_id == dialog.call_id and {self.to_tag, self.from_tag} == {dialog.local_tag, dialog.remote_tag}


@dataclass
class Referral:
    """One REFER taken: where to call, what it replaces, and the subscription to report on."""

    target: str                    # the Refer-To URI without its headers
    user: str                      # its user part (what transfer routes match), or ""
    replaces: Replaces | None
    referred_by: str | None
    dialog: Dialog
    ua: "UserAgent"
    finished: bool = False

    @classmethod
    def of(cls, msg: SipMessage, dialog: Dialog, ua: "UserAgent") -> "Referral":
        values = msg.all("Refer-To")
        if len(values) != 1:
            raise SipParseError("a REFER needs exactly one Refer-To")
        refer_to = NameAddr.parse(values[0])
        uri_text, _, headers = refer_to.uri_text.partition("?")
        replaces = None
        for header in headers.split("&") if headers else []:
            name, _, value = header.partition("=")
            if name.lower() == "replaces":
                replaces = Replaces.parse(unquote(value))
        target = NameAddr.parse(f"<{uri_text}>").uri
        if target.scheme not in ("sip", "sips", "tel"):
            raise SipParseError("Refer-To must be a SIP or tel URI")
        return cls(str(target), target.user or "", replaces, msg.first("Referred-By"), dialog, ua)

    async def notify(self, code: int, reason: str = "") -> None:
        """Tell the transferor how the new call goes; a final status ends the subscription."""
        if self.finished:
            return
        final = code >= 200
        self.finished = final
        state = "terminated;reason=noresource" if final else "active;expires=60"
        body = f"SIP/2.0 {code} {reason or phrase(code)}\r\n"
        request = self.dialog.request("NOTIFY", self.ua.via(), [
            ("Event", "refer"), ("Subscription-State", state), ("Contact", self.ua.contact_header())],
            body, content_type="message/sipfrag;version=2.0")
        tx = await self.ua.send_in_dialog(self.dialog, request)
        if tx is not None:
            self.ua.spawn(self._answered(tx))

    async def _answered(self, tx) -> None:
        reply = await tx.next()
        if reply is None or reply.code >= 300:
            log.info("call %s: transfer NOTIFY answered %s", safe(self.dialog.call_id),
                     reply.code if reply is not None else "nothing")
