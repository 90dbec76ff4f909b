"""The settings, typed: what `bridge.config.load` returns (frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from ..cluster.config import ClusterConfig
from ..iceservers import IceServer
from ..routing import Router


RINGBACK_TONES = ("us", "uk", "eu", "jp")        # the national tones of `bridge.ringback`


class ConfigError(Exception):
    """One or more configuration errors, each as 'file:line: key: message'."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Service:
    id: str
    api_key: str
    api_secret: str = field(repr=False)
    notify_cb_url: str | None = None
    call_event_cb_url: str | None = None
    push_urls: tuple[str, ...] = ()     # embedded push as a signed POST (to a bridge, or to each node in turn)
    push_secret: str | None = field(default=None, repr=False)
    one_call_per_user: bool = True      # a user in a call is BUSY (off for desk phones: the PBX decides)

    @property
    def push_url(self) -> str | None:
        return self.push_urls[0] if self.push_urls else None


@dataclass(frozen=True)
class HttpLimits:
    """What one HTTP listener allows a client (see `httpguard`)."""

    header_timeout: float = 10.0        # request head complete within this of connect or of the last answer
    body_timeout: float = 10.0          # request body complete within this of its head
    max_connections: int = 4096         # open connections at once
    max_connections_per_client: int = 512   # from one client address; 0: no per-client cap


@dataclass(frozen=True)
class TlsFiles:
    """A listener's certificate chain and private key (PEM files), checked at load."""

    cert: str
    key: str


@dataclass(frozen=True)
class SecretOrigin:
    """Where a secret of the config came from: its key, line, `*_env` variable and source."""

    keypath: str
    line: int
    source: str                         # "env", "file" or "inline"
    env_name: str | None                # the variable the config names (None: no `*_env` key)
    value: str = field(repr=False)


@dataclass(frozen=True)
class PlatformConfig:
    embedded: bool
    host: str
    port: int
    public_url: str
    cc_param_secret: bytes = field(repr=False)
    token_max_age: float
    answer_timeout: float
    max_call_time: float
    max_message_bytes: int
    callback_timeout: float
    services: dict[str, Service]
    dev_tokens: bool = False            # POST /v1/dev/token issues tokens to loopback clients
    http: HttpLimits = field(default_factory=HttpLimits)
    tls: TlsFiles | None = None         # serve https/wss
    callback_ca: str | None = None      # CA bundle for https callbacks and pushes (None: the system's)

    @property
    def ws_url(self) -> str:
        return self.public_url.replace("http", "ws", 1).rstrip("/") + "/v1/ws"


@dataclass(frozen=True)
class HepConfig:
    """`sip.hep`: a Homer capture server that gets a HEPv3 copy of every SIP message."""

    host: str
    port: int
    agent_id: int = 0
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SipTls:
    """`sip.tls`: how the PBX is verified over TLS, and the bridge's own certificate (optional)."""

    ca: str | None = None               # PEM bundle that signs the PBX's certificate (None: the system's)
    server_name: str | None = None      # the name the PBX's certificate must hold (None: the registrar's host)
    cert: str | None = None             # the bridge's certificate chain: presented as a client, and served
    key: str | None = None              # (with it the bridge also accepts TLS connections)


@dataclass(frozen=True)
class SipConnections:
    """`sip.connections`: what TCP and TLS connections may hold (bridge/sip/stream.py)."""

    max: int = 256                      # open at once from sources that are not the PBX or trusted peers
    per_address: int = 16               # ... from one such address
    message_timeout: float = 10.0       # a message (and a new connection's first) must arrive within this
    idle_timeout: float = 300.0         # an accepted connection that carries no message this long is closed
    keepalive: float = 30.0             # CRLF ping on connections the bridge opened (RFC 5626); 0: off


@dataclass(frozen=True)
class SipConfig:
    registrar_host: str
    registrar_port: int | None          # None: RFC 3263 SRV lookup, then 5060
    domain: str
    username: str
    auth_username: str
    password: str = field(repr=False)
    bind_host: str = "127.0.0.1"
    bind_port: int = 5080
    contact_host: str = "127.0.0.1"
    register: bool = True
    register_expires: int = 300
    keepalive: float = 10.0
    transaction_timeout: float = 4.0
    max_backoff: float = 30.0
    rtp_host: str = "127.0.0.1"
    rtp_low: int = 10000
    rtp_high: int = 10999
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    ring_timeout: float = 30.0
    jitter_target: float = 0.040        # playout delay of the RTP jitter buffer
    trusted_peers: tuple[str, ...] = ()           # besides the registrar: who may send out-of-dialog requests
    untrusted: str = "reject"                     # reject (403) or drop requests from others
    media_networks: tuple[str, ...] | None = None  # where RTP may go; None: the trusted peers and the PBX
    media_timeout: float = 30.0                   # no RTP for this long ends an answered call (0: off)
    session_expires: int = 1800                   # RFC 4028 session interval offered (0: no session timers)
    min_se: int = 90
    t1: float = 0.5                               # RFC 3261 timers
    t2: float = 4.0
    t4: float = 5.0
    dns_servers: list[tuple[str, int]] | None = None   # None: the system's resolver
    max_transactions: int = 5000                  # server transactions kept at once
    journal: str | None = None                    # crash journal file (None: none)
    dtmf: str = "auto"                            # rfc4733, info, or auto (RFC 4733 if negotiated, else INFO)
    reliable_provisionals: str = "supported"      # 100rel: supported (when the peer requires it), required, off
    trace: bool = False                           # log every SIP message sent and received
    transport: str = "udp"                        # udp, tcp or tls (RFC 3261 18)
    tls: SipTls = field(default_factory=SipTls)
    connections: SipConnections = field(default_factory=SipConnections)
    srtp: str = "off"                             # SDES-SRTP on the SIP leg: off, optional, required
    hep: HepConfig | None = None                  # HEPv3 copies of every SIP message (None: none)


@dataclass(frozen=True)
class NotificationsConfig:
    host: str
    port: int
    secret: str = field(repr=False)
    replay_window: float = 300.0
    admin_token: str | None = field(default=None, repr=False)
    http: HttpLimits = field(default_factory=HttpLimits)
    tls: TlsFiles | None = None


@dataclass(frozen=True)
class BridgeConfig:
    desk_service: str
    trusted_platforms: tuple[str, ...]
    max_calls: int = 200
    drain_timeout: float = 30.0
    media: str = "relay"     # relay: G.711 packets pass as they arrive; transcode: decode, re-clock
    platform_ca: str | None = None   # CA bundle that verifies a wss:// platform (None: the system's)
    ringback: str = "us"             # a tone of RINGBACK_TONES or a WAV file (absolute path)
    music_on_hold: str | None = None   # WAV file played to the phone while the app user holds
    call_records: str | None = None    # JSON-lines call-record file (None: none)


@dataclass(frozen=True)
class WebRtcConfig:
    ice_addresses: list[str]
    codecs: tuple[str, ...] = ("PCMU", "PCMA", "opus")   # the bridge's app legs, preferred first
    receive_prefetch: int | None = 1    # packets aiortc's audio receivers hold back (None: aiortc's own, 4)
    liveness_timeout: float | None = 8.0   # an app leg silent this long (media, consent) ends (None: off)
    ice_servers: tuple[IceServer, ...] = ()   # STUN/TURN handed to every app leg with each call
    public_address: str | None = None   # 1:1 NAT: the public IPv4 of the bridge's host candidates


@dataclass(frozen=True)
class Config:
    path: str
    log_level: str
    platform: PlatformConfig
    webrtc: WebRtcConfig
    sip: SipConfig | None = None
    notifications: NotificationsConfig | None = None
    bridge: BridgeConfig | None = None
    router: Router = field(default_factory=Router)
    secrets: tuple[SecretOrigin, ...] = ()
    cluster: ClusterConfig | None = None     # None: one node alone, state in memory
