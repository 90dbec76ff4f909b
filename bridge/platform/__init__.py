"""The call platform: access tokens, cc_param, Notify/Call Event callbacks, signalling, timers.

One WebSocket per call leg (see `protocol`). The platform relays SDP between the two legs
and owns the call's state: who may do what, when it ends, and why. It hands each leg the
STUN/TURN servers of `webrtc.ice_servers` (TURN credentials minted for that user, `iceservers`):
the caller asks first (`ice_servers`, with its access token), the callee gets them in `verified`.
A client without a valid token (or cc_param) gets none.

Alone (the default), all of it is in this process's memory. On a node of a cluster
(`cluster:`), `cluster` links the platform nodes (`bridge.cluster.signalling`): each call stays
on the node its caller reached, and what the others need goes through Redis: who is busy, who
listens where (pushes), the legs of callees that reached another node, and app servers' REST
requests (`/v1/calls/{sid}` answered by the call's home node, whichever node they reach).

Callbacks go out through `callbacks.Clients`: per service, one connection pool for call setup
(Notify callback, push POST) and one for Call Events, so an app server that hangs holds only
its own pool. Every background task that fails is logged with its call's sid and counted.
"""

from .model import PlatformCall, State, User
from .server import Platform

__all__ = ["Platform", "PlatformCall", "State", "User"]
