"""The SIP leg: bridge's own user agent (RFC 3261 and friends), pyVoIP's parser mended.

Modules, one per concept: `uri` and `message` (parsing, building), `sdp`, `sdes` (SRTP keys in
SDP, RFC 4568), `transport` (UDP, and the trace), `stream` (TCP and TLS), `connection` (one TCP
or TLS connection), `framing` (SIP on a stream), `resolver` (RFC 3263), `transaction` (RFC 3261
section 17: the layer; the machines in `clienttransaction` and `servertransaction`, their timers
in `timers`), `dialog`, `trust` (who may talk to us, where media may go), `call` (with its parts
`indialog`, what the peer sends in the dialog, and `offeranswer`, SDP and the media policy),
`result` (how a call ended), `outgoing`, `incoming`, `transfer` (REFER, Replaces),
`sessiontimer` (RFC 4028), `dtmf` (SIP INFO), `registration`, `journal` (crash recovery), `hep`
(HEPv3 copies for Homer) and `useragent`, which ties them together (with its parts `receiving`,
what arrives, and `sending`, where requests go). The bridge sees only the names exported here.
"""

from .call import SipCall
from .incoming import IncomingCall
from .journal import JournalError
from .outgoing import OutgoingCall
from .result import CallEnd, CallFailed, SipResult
from .transfer import Referral
from .useragent import UserAgent

__all__ = ["CallEnd", "CallFailed", "IncomingCall", "JournalError", "OutgoingCall", "Referral", "SipCall",
           "SipResult", "UserAgent"]
