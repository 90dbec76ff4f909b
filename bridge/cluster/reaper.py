"""Ending a dead node's calls: BYE, CANCEL or 480 for each dialog it left in Redis.

The node that claimed the reaping (`node`) reads the dead node's dialogs (`dialogs`) and ends
each through its own user agent with `bridge.sip.journal.end_left_open`, exactly as a restarted
node ends what its journal holds: the PBX relays the BYE along the dialog's route, so the desk
phone hangs up within one lease and one heartbeat of the death. The app side of those calls
was a WebSocket of the dead process to the platform: the platform ends it (NETWORK_UNSTABLE to
the app user) when that socket drops, which a killed process does at once.
"""

from __future__ import annotations

import logging

from ..sip.journal import end_left_open
from ..sip.useragent import UserAgent
from . import dialogs
from .store import Store

log = logging.getLogger("bridge.cluster")


class Reaper:
    def __init__(self, store: Store, ua: UserAgent) -> None:
        self.store = store
        self.ua = ua
        self.ended = 0                       # dialogs of dead nodes this node ended

    async def reap(self, dead: str) -> None:
        """End the dialogs `dead` left open (the caller then forgets them)."""
        entries = await dialogs.left_open(self.store, dead)
        if not entries:
            log.info("cluster: node %s left no open dialogs", dead)
            return
        log.warning("cluster: ending %d SIP call(s) of dead node %s", len(entries), dead)
        await end_left_open(self.ua, entries)
        self.ended += len(entries)
