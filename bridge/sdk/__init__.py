"""The Python SDK: the seed's 1-to-1 audio call with aiortc.

    call = Call("http://127.0.0.1:8080")
    await call.make_call(MakeCallParams(my_id="alice", my_service_id="demo-app", peer_id="bob",
                                        peer_service_id="demo-app", access_token=token,
                                        delegate=my_delegate, audio="hello.wav"))
    ...
    await call.end_call()

The callee gets `cc_param` by push (its app server's, or the platform's embedded `PushListener`),
then runs `verify_call`, waits for `evt_verified`, and runs `accept_call`.

Only local validation raises (`StartFailError` with `reason` and `message`); anything the
platform or the peer decides arrives as `evt_disconnected(Disconnected)`.

STUN/TURN servers come from the platform with each call (`webrtc.ice_servers` of its config;
TURN credentials may be minted for the call): a caller asks for them before its offer, a callee
gets them with `verified`. `Call(..., ice_transport_policy="relay")` (bridge's extension, the
W3C `iceTransportPolicy`) gathers and uses TURN relay candidates only. `Call(..., ssl=...)`
verifies a wss:// platform against a private CA (`bridge.tls.client_context(ca_file)`).

Hold (bridge's extension, as PlanetKit's native SDKs have it): `hold()` / `unhold()` tell the peer,
which gets `evt_peer_hold` / `evt_peer_unhold`; while held, this side sends silence. `get_stats()`
(bridge's extension) gives the call's audio packets, loss and jitter each way; the last figures
stay in `stats` when the call ends.

A peer that stops sending and stops answering ICE consent checks for `liveness_timeout` seconds
(8 by default; bridge's extension, see `bridge.liveness`), or whose media connection fails, ends
the call with NETWORK_UNSTABLE: the platform tells the peer, and `evt_disconnected` follows here
(within a second even if the platform cannot be reached).

Modules: `call` (the Call), `signalling` (its WebSocket to the platform), `media` (its peer
connection and audio), `params` (parameters, delegate, errors), `negotiation` (ICE
configuration, what the SDP negotiated), `push` (the embedded push listener).
"""

from __future__ import annotations

from ..reasons import Disconnected, DisconnectReason, StartFailReason
from .call import Call
from .negotiation import CODEC_NAMES, ice_configuration, negotiated_codec, negotiated_payload_types
from .params import (AudioSource, AudioStats, CallDelegate, CallVerifiedParam, MakeCallParams, StartFailError,
                     VerifyCallParams)
from .push import ListenError, Push, PushListener

__all__ = [
    "AudioSource", "AudioStats", "CODEC_NAMES", "Call", "CallDelegate", "CallVerifiedParam",
    "Disconnected", "DisconnectReason", "ListenError", "MakeCallParams", "Push", "PushListener",
    "StartFailError", "StartFailReason", "VerifyCallParams", "ice_configuration",
    "negotiated_codec", "negotiated_payload_types",
]
