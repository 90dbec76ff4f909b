"""Bridged calls: one object per call owns the app leg (WebRTC) and the SIP leg.

app -> desk phone: notification -> route -> verifyCall (WebRTC connects while the phone rings)
-> INVITE (fallback targets in order) -> ringback or early media -> 200 OK -> acceptCall.
desk phone -> app: INVITE -> route -> 180 -> makeCall -> the app user accepts -> 200 OK.
Either side hanging up ends the other within one signalling round trip; reasons are mapped by
`reasons.from_sip` and `reasons.to_sip_status`.
Hold travels both ways: the phone's re-INVITE (sendonly, inactive) becomes `hold` on the app
leg (evt_peer_hold), and the app user's `hold` a re-INVITE to the phone (sendonly) with music on
hold or silence meanwhile. When the call is over, its record goes to `callrecord`.
"""

from .app_to_desk import AppToDeskCall, Notification
from .bridge import Admission, Bridge
from .call import BridgedCall
from .desk_to_app import DeskToAppCall

__all__ = ["Admission", "AppToDeskCall", "Bridge", "BridgedCall", "DeskToAppCall", "Notification"]
