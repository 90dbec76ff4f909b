"""YAML configuration -> typed, validated settings.

Every error names the file, the line and the key, and all errors are reported at once.
Secrets may be given inline (development), by environment or by file: for a secret key `X`, a
key `X_env: NAME` reads the environment variable NAME, which wins over the inline value when set;
`X_file: PATH` reads the file (systemd's LoadCredential=: `${CREDENTIALS_DIRECTORY}/name`).
File paths may name environment variables (`$NAME`, `${NAME}`) and are relative to the config
file's folder.
Where each secret came from is kept (`Config.secrets`) for the production checks of `production`.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
import re
import secrets
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import yaml

from . import iceservers, protocol, routing, tls
from .cluster import config as cluster_config
from .cluster.config import ClusterConfig
from .iceservers import IceServer
from .routing import AppRoute, Router, SipRoute

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


# --- YAML with line numbers -------------------------------------------------------------

class _Map(dict):
    """A mapping that remembers the line of itself and of each key."""

    line: int = 0
    lines: dict[Any, int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map()
    result.line = node.start_mark.line + 1
    result.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise yaml.MarkedYAMLError("while constructing a mapping", node.start_mark,
                                       f"duplicate key {key!r}", key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = key_node.start_mark.line + 1
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)


class _Reader:
    """Reads typed values out of _Maps, collecting errors with file, line and key."""

    def __init__(self, path: str, env: dict[str, str]) -> None:
        self.path = path
        self.env = env
        self.errors: list[str] = []
        self.secrets: list[SecretOrigin] = []

    def error(self, where: _Map, key: str, keypath: str, message: str) -> None:
        line = where.lines.get(key, where.line) if isinstance(where, _Map) else 0
        self.errors.append(f"{self.path}:{line}: {keypath}: {message}")

    def section(self, parent: _Map, key: str, keypath: str, known: set[str] | None,
                required: bool = False) -> _Map:
        """The mapping at `key` (empty if absent); `known` lists its keys (None: any)."""
        value = parent.get(key)
        if value is None or not isinstance(value, _Map):
            if value is not None:
                self.error(parent, key, keypath, "must be a mapping")
            elif required:
                self.error(parent, key, keypath, "missing section")
            empty = _Map()                  # (a list or a scalar given for a section: an empty one)
            empty.line = parent.lines.get(key, parent.line)
            empty.lines = {}
            return empty
        if known is not None:
            self.unknown(value, keypath, known)
        return value

    def unknown(self, where: _Map, keypath: str, known: set[str]) -> None:
        for key in where:
            if isinstance(key, str) and key.endswith("_file") and f"{key[:-5]}_env" in known:
                continue                    # every secret with an `_env` may come from a file
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                what = f"unknown key in {keypath}" if keypath else "unknown top-level key"
                self.error(where, key, f"{keypath}.{key}" if keypath else str(key),
                           f"{what} ({hint}expected one of: {', '.join(sorted(known))})")

    def get(self, where: _Map, key: str, keypath: str, convert: Callable[[Any], Any],
            default: Any = None, required: bool = False) -> Any:
        if key not in where or where[key] is None:
            if required:
                self.error(where, key, keypath, "is required")
            return default
        try:
            return convert(where[key])
        except (ValueError, TypeError) as exc:
            self.error(where, key, keypath, str(exc))
            return default

    def secret(self, where: _Map, key: str, keypath: str, required: bool = True,
               sensitive: bool = True) -> str | None:
        """The value of secret `key`: from `<key>_env`'s variable if set, else from the file
        `<key>_file` names (systemd's LoadCredential=), else inline.
        `sensitive` secrets are recorded in `secrets` (an API key is an id, not a secret)."""
        env_key, file_key = f"{key}_env", f"{key}_file"
        name = self.get(where, env_key, f"{keypath}_env", _env_name)
        lines = where.lines if isinstance(where, _Map) else {}
        if file_key in where:
            if name:
                self.error(where, file_key, f"{keypath}_file", f"give {env_key} or {file_key}, not both")
            value = self.get(where, file_key, f"{keypath}_file", self.secret_file)
            if value is not None and sensitive:
                self.secrets.append(SecretOrigin(keypath, lines.get(file_key, 0), "file", None, value))
            if value is None and where.get(file_key) is None and required:
                self.error(where, file_key, f"{keypath}_file", "secret is missing: name a file")
            return value
        if name and self.env.get(name):
            if sensitive:
                self.secrets.append(SecretOrigin(keypath, lines.get(env_key, 0), "env", name, self.env[name]))
            return self.env[name]
        value = self.get(where, key, keypath, _nonempty_str)
        if value is None and required:
            hint = f"set {key}, or the environment variable {name}" if name else f"set {key} or {env_key}"
            self.error(where, key if key in where else env_key, keypath, f"secret is missing: {hint}")
        if value is not None and sensitive:
            self.secrets.append(SecretOrigin(keypath, lines.get(key, 0), "inline", name, value))
        return value


    def file_path(self, value: Any) -> str:
        """A file path; `$NAME` / `${NAME}` are taken from the environment (e.g.
        `${CREDENTIALS_DIRECTORY}/sip-password` under systemd's LoadCredential=)."""
        if not isinstance(value, str) or not value:
            raise ValueError("must be a file path")

        def variable(match: re.Match) -> str:
            name = match.group(1) or match.group(2)
            if not self.env.get(name):
                raise ValueError(f"names ${name}, which is not set")
            return self.env[name]
        text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", variable, value)
        return str(Path(self.path_base) / text) if not os.path.isabs(text) else text

    @property
    def path_base(self) -> str:
        """Relative paths are relative to the config file's folder."""
        return str(Path(self.path).resolve().parent) if self.path != "<config>" else os.getcwd()

    def secret_file(self, value: Any) -> str:
        """The secret held in a file (one trailing newline dropped)."""
        path = self.file_path(value)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not UTF-8 text") from None
        text = text[:-1] if text.endswith("\n") else text
        if not text:
            raise ValueError(f"{path} is empty")
        return text

    def wav_file(self, value: Any) -> str:
        """A 16-bit PCM WAV file that holds audio (any rate, any channels), checked at load."""
        path = self.file_path(value)
        try:
            with wave.open(path, "rb") as w:
                if w.getsampwidth() != 2:
                    raise ValueError(f"{path} is {8 * w.getsampwidth()}-bit: give a 16-bit PCM WAV file")
                if w.getnframes() == 0:
                    raise ValueError(f"{path} holds no audio")
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
        except (wave.Error, EOFError) as exc:
            raise ValueError(f"{path} is not a PCM WAV file ({exc or 'truncated'})") from None
        return path

    def ringback(self, value: Any) -> str:
        """A national ringing tone (RINGBACK_TONES) or a WAV file."""
        if isinstance(value, str) and value.lower() in RINGBACK_TONES:
            return value.lower()
        if not isinstance(value, str) or not value.lower().endswith(".wav"):
            raise ValueError(f"must be {', '.join(RINGBACK_TONES)} or a .wav file")
        return self.wav_file(value)

    def record_file(self, value: Any) -> str | None:
        """A file that lines are appended to (`off`: none); its folder must exist."""
        if value is False or value == "off":
            return None
        path = self.file_path(value)
        if not os.path.isdir(os.path.dirname(path)):
            raise ValueError(f"the folder of {path} does not exist")
        if os.path.isdir(path):
            raise ValueError(f"{path} is a folder: name a file")
        return path


# --- value converters --------------------------------------------------------------------

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}


def duration(value: Any) -> float:
    """'500ms', '60s', '10m', '4h' or a number of seconds -> seconds (> 0)."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 60s, 10m or 4h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration like 60s, 10m or 4h")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


def hostport(value: Any) -> tuple[str, int]:
    text = str(value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


def http_url(value: Any) -> str:
    text = str(value)
    try:
        parts = urlsplit(text)
        parts.port                      # raises ValueError when out of range
    except ValueError:
        raise ValueError(f"{text!r} is not an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL")
    return text


def _http_urls(value: Any) -> tuple[str, ...]:
    """One http(s) URL, or a non-empty list of them (nodes of a cluster, tried in turn)."""
    if isinstance(value, list):
        if not value:
            raise ValueError("must be an http(s) URL or a non-empty list of them")
        return tuple(http_url(v) for v in value)
    return (http_url(value),)


def ip_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError("must be a list of IP addresses")
    try:
        return [str(ipaddress.ip_address(str(v))) for v in value]
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("must be a positive integer")
    return value


def count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _nonempty_str(value: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
        raise ValueError("must be a non-empty string")
    return str(value)


def _env_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError("must be an environment variable name")
    return value


_LOG_LEVELS = ("debug", "info", "warning", "error")


def _log_level(value: Any) -> str:
    if str(value).lower() not in _LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
    return str(value).lower()


# --- the schema --------------------------------------------------------------------------

def load(path: str | os.PathLike, env: dict[str, str] | None = None) -> Config:
    """Load and validate a config file; raise ConfigError listing every problem."""
    path = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    return loads(text, path, env)


def loads(text: str, path: str = "<config>", env: dict[str, str] | None = None) -> Config:
    try:
        root = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_error(path, exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: YAML: {exc}"]) from None
    if not isinstance(root, _Map):
        raise ConfigError([f"{path}:1: the file must be a YAML mapping"])
    r = _Reader(path, dict(os.environ) if env is None else env)
    r.unknown(root, "", {"log_level", "platform", "webrtc", "sip", "notifications", "bridge", "routes", "cluster"})
    log_level = r.get(root, "log_level", "log_level", _log_level, "info")
    platform = _platform(r, root)
    w = r.section(root, "webrtc", "webrtc", {"ice_addresses", "codecs", "receive_prefetch", "liveness_timeout",
                                             "ice_servers", "public_address"})
    prefetch = w.get("receive_prefetch", 1)
    webrtc = WebRtcConfig(ice_addresses=r.get(w, "ice_addresses", "webrtc.ice_addresses", ip_list, []),
                          codecs=r.get(w, "codecs", "webrtc.codecs", _webrtc_codecs, ("PCMU", "PCMA", "opus")),
                          receive_prefetch=None if prefetch == "aiortc" else
                          r.get(w, "receive_prefetch", "webrtc.receive_prefetch", _prefetch, 1),
                          liveness_timeout=r.get(w, "liveness_timeout", "webrtc.liveness_timeout",
                                                 _liveness_timeout, 8.0),
                          ice_servers=_ice_servers(r, w),
                          public_address=r.get(w, "public_address", "webrtc.public_address", _ipv4))
    sip = _sip(r, root) if root.get("sip") is not None else None
    notifications = _notifications(r, root) if root.get("notifications") is not None else None
    bridge = _bridge(r, root, platform) if root.get("bridge") is not None else None
    router = _routes(r, root, platform)
    cluster = cluster_config.read(r, root, sip.bind_port if sip is not None else None)
    if bridge is not None and (sip is None or notifications is None):
        r.error(root, "bridge", "bridge", "the bridge needs the sip and notifications sections")
    if bridge is not None and platform.embedded:
        _check_own_connections(r, root, platform, bridge)
    if r.errors:
        raise ConfigError(r.errors)
    return Config(path=path, log_level=log_level, platform=platform, webrtc=webrtc, sip=sip,
                  notifications=notifications, bridge=bridge, router=router, secrets=tuple(r.secrets),
                  cluster=cluster)


# PyYAML's wording -> what to fix; (problem fragment, message, report the context's line)
_YAML_PROBLEMS = (
    ("mapping values are not allowed", "a `key: value` where none can start: check this line's "
     "indentation, or quote a value that holds ': '", False),
    ("expected <block end>", "this line's indentation does not match the lines above it (keys of one "
     "section need the same number of spaces)", False),
    ("could not find expected ':'", "a line that is not `key: value` (a missing ':', or an indentation "
     "that does not match the lines above)", False),
    ("'\\t'", "a tab: YAML indents with spaces only", False),
    ("cannot start any token", "a character that cannot start a value here (a tab? indent with spaces; "
     "quote values that start with @ or `)", False),
    ("end of stream", "a quote, bracket or brace opened here is never closed", True),
    ("expected ',' or ']'", "a [list] opened here is not closed with ]", True),
    ("expected ',' or '}'", "a {mapping} opened here is not closed with }", True),
)


def _yaml_error(path: str, exc: yaml.MarkedYAMLError) -> str:
    """A YAML syntax error as `file:line: what to fix`, not in PyYAML's parser terms."""
    problem = f"{exc.problem or ''} {exc.context or ''}"
    for fragment, message, at_context in _YAML_PROBLEMS:
        if fragment in problem:
            mark = (exc.context_mark if at_context else None) or exc.problem_mark or exc.context_mark
            break
    else:
        message = f"{exc.problem or exc.context}"
        mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else 0
    return f"{path}:{line}: YAML syntax: {message}"


def _http(r: _Reader, parent: _Map, keypath: str) -> HttpLimits:
    """`<listener>.http`: timeouts and connection caps of one HTTP listener."""
    h = r.section(parent, "http", keypath, {"header_timeout", "body_timeout", "max_connections",
                                             "max_connections_per_client"})
    d = HttpLimits()
    limits = HttpLimits(
        header_timeout=r.get(h, "header_timeout", f"{keypath}.header_timeout", duration, d.header_timeout),
        body_timeout=r.get(h, "body_timeout", f"{keypath}.body_timeout", duration, d.body_timeout),
        max_connections=r.get(h, "max_connections", f"{keypath}.max_connections", positive_int,
                              d.max_connections),
        max_connections_per_client=r.get(h, "max_connections_per_client",
                                         f"{keypath}.max_connections_per_client", count,
                                         d.max_connections_per_client),
    )
    if limits.max_connections_per_client > limits.max_connections:
        r.error(h, "max_connections_per_client", f"{keypath}.max_connections_per_client",
                f"must be at most max_connections ({limits.max_connections})")
    return limits


def _tls(r: _Reader, parent: _Map, keypath: str) -> TlsFiles | None:
    """`<listener>.tls: {cert, key}`: serve HTTPS (and WSS) with these PEM files."""
    if parent.get("tls") is None:
        return None
    t = r.section(parent, "tls", keypath, {"cert", "key"})
    cert = r.get(t, "cert", f"{keypath}.cert", r.file_path, required=True)
    key = r.get(t, "key", f"{keypath}.key", r.file_path, required=True)
    if cert is None or key is None:
        return None
    try:
        tls.server_context(cert, key)
    except tls.TlsError as exc:
        r.error(t, "cert", keypath, str(exc))
        return None
    return TlsFiles(cert, key)


def _ca_file(r: _Reader, where: _Map, key: str, keypath: str) -> str | None:
    """A CA bundle (PEM) to verify servers with, checked at load."""
    path = r.get(where, key, keypath, r.file_path)
    if path is not None:
        try:
            tls.client_context(path)
        except tls.TlsError as exc:
            r.error(where, key, keypath, str(exc))
            return None
    return path


def _ice_servers(r: _Reader, w: _Map) -> tuple[IceServer, ...]:
    """`webrtc.ice_servers`: [{urls, username, credential[_env|_file]} or {urls, auth_secret[_env|_file], ttl}]."""
    items = w.get("ice_servers")
    if items is None:
        return ()
    if not isinstance(items, list):
        r.error(w, "ice_servers", "webrtc.ice_servers", "must be a list of {urls: [...], ...}")
        return ()
    servers = []
    for i, item in enumerate(items):
        keypath = f"webrtc.ice_servers[{i}]"
        if not isinstance(item, _Map):
            r.error(w, "ice_servers", keypath, "must be a mapping {urls: [...], ...}")
            continue
        r.unknown(item, keypath, {"urls", "username", "credential", "credential_env", "auth_secret",
                                  "auth_secret_env", "ttl"})
        urls = r.get(item, "urls", f"{keypath}.urls", _ice_urls, required=True)
        static = any(k in item for k in ("username", "credential", "credential_env", "credential_file"))
        rest = any(k in item for k in ("auth_secret", "auth_secret_env", "auth_secret_file"))
        if not urls:
            continue
        server = IceServer(urls=urls)
        turn = any(u.startswith("turn") for u in urls)
        if static and rest:
            r.error(item, "auth_secret" if "auth_secret" in item else "username", keypath,
                    "give username and credential (static) or auth_secret (TURN REST), not both")
        elif rest:
            server = IceServer(urls=urls, auth_secret=r.secret(item, "auth_secret", f"{keypath}.auth_secret"),
                               ttl=r.get(item, "ttl", f"{keypath}.ttl", duration, 3600.0))
        elif static:
            server = IceServer(urls=urls,
                               username=r.get(item, "username", f"{keypath}.username", _nonempty_str, required=True),
                               credential=r.secret(item, "credential", f"{keypath}.credential"))
        elif turn:
            r.error(item, "urls", keypath, "a turn: server needs credentials: username and credential, "
                    "or auth_secret (TURN REST, coturn's use-auth-secret)")
        if "ttl" in item and not rest:
            r.error(item, "ttl", f"{keypath}.ttl", "ttl is for credentials minted with auth_secret")
        if (static or rest) and not turn:
            r.error(item, "urls", keypath, "credentials are for turn: URLs only")
        servers.append(server)
    return tuple(servers)


def _ice_urls(value: Any) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise ValueError("must be a URL or a list of stun:/turn: URLs")
    return tuple(iceservers.check_url(v) for v in values)


def _ipv4(value: Any) -> str:
    address = ipaddress.ip_address(str(value))
    if address.version != 4:
        raise ValueError("must be an IPv4 address (the NAT's public address)")
    return str(address)


def _check_own_connections(r: _Reader, root: _Map, platform: PlatformConfig, bridge: BridgeConfig) -> None:
    """The bridge's app legs are WebSockets to the embedded platform, all from the bridge's own
    address: the platform listener's caps must leave room for `bridge.max_calls` of them."""
    need = bridge.max_calls + 16
    limits = platform.http
    p = root.get("platform")
    where = p.get("http") if isinstance(p, _Map) and isinstance(p.get("http"), _Map) else p
    for key, cap in (("max_connections", limits.max_connections),
                     ("max_connections_per_client", limits.max_connections_per_client)):
        if cap and cap < need:
            r.error(where, key, f"platform.http.{key}",
                    f"must be 0 or at least bridge.max_calls + 16 ({need}): every bridged call holds "
                    f"a WebSocket from the bridge's own address")


def _notifications(r: _Reader, root: _Map) -> NotificationsConfig:
    n = r.section(root, "notifications", "notifications",
                  {"listen", "secret", "secret_env", "replay_window", "admin_token", "admin_token_env", "http",
                   "tls"})
    host, port = r.get(n, "listen", "notifications.listen", hostport, ("127.0.0.1", 8081))
    secret = r.secret(n, "secret", "notifications.secret") or ""
    if secret and len(secret) < 32:
        r.error(n, "secret", "notifications.secret", "must be at least 32 characters (HMAC-SHA256 key)")
    token = r.secret(n, "admin_token", "notifications.admin_token", required=False)
    if token is None and not is_loopback_host(host):
        r.error(n, "listen", "notifications.admin_token",
                "set an admin_token when /healthz and /metrics listen beyond loopback")
    return NotificationsConfig(host, port, secret,
                               r.get(n, "replay_window", "notifications.replay_window", duration, 300.0), token,
                               http=_http(r, n, "notifications.http"), tls=_tls(r, n, "notifications.tls"))


def _bridge(r: _Reader, root: _Map, platform: PlatformConfig) -> BridgeConfig:
    b = r.section(root, "bridge", "bridge", {"desk_service", "trusted_platforms", "max_calls", "drain_timeout",
                                               "media", "platform_ca", "ringback", "music_on_hold",
                                               "call_records"})
    desk = r.get(b, "desk_service", "bridge.desk_service", _nonempty_str, required=True)
    if desk and desk not in platform.services:
        r.error(b, "desk_service", "bridge.desk_service",
                f"service {desk!r} is not in platform.services (the bridge needs its API key and secret)")
    trusted = r.get(b, "trusted_platforms", "bridge.trusted_platforms", _ws_urls, None)
    if trusted is None:
        trusted = (platform.ws_url,) if platform.embedded else ()
        if not trusted:
            r.error(b, "trusted_platforms", "bridge.trusted_platforms",
                    "list the platform URLs the bridge trusts (the platform is not embedded)")
    return BridgeConfig(desk_service=desk or "", trusted_platforms=tuple(trusted),
                        max_calls=r.get(b, "max_calls", "bridge.max_calls", positive_int, 200),
                        drain_timeout=r.get(b, "drain_timeout", "bridge.drain_timeout", duration, 30.0),
                        media=r.get(b, "media", "bridge.media", _media, "relay"),
                        platform_ca=_ca_file(r, b, "platform_ca", "bridge.platform_ca"),
                        ringback=r.get(b, "ringback", "bridge.ringback", r.ringback, "us"),
                        music_on_hold=r.get(b, "music_on_hold", "bridge.music_on_hold", r.wav_file),
                        call_records=r.get(b, "call_records", "bridge.call_records", r.record_file))


def _media(value: Any) -> str:
    if value not in ("relay", "transcode"):
        raise ValueError("must be relay or transcode")
    return value


def _ws_urls(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.startswith(("ws://", "wss://"))
                                              for v in value):
        raise ValueError("must be a list of ws:// or wss:// URLs")
    return [v.rstrip("/") for v in value]


def _routes(r: _Reader, root: _Map, platform: PlatformConfig) -> Router:
    node = r.section(root, "routes", "routes", {"to_sip", "to_app", "transfer"})
    router = Router()
    names: set[str] = set()
    for direction in ("to_sip", "to_app"):
        items = node.get(direction)
        if items is None:
            continue
        if not isinstance(items, list):
            r.error(node, direction, f"routes.{direction}", "must be a list of routes")
            continue
        for i, item in enumerate(items):
            keypath = f"routes.{direction}[{i}]"
            if not isinstance(item, _Map):
                r.error(node, direction, keypath, "each route must be a mapping")
                continue
            build = _sip_route if direction == "to_sip" else _app_route
            route = build(r, item, keypath, i, platform)
            if route is None:
                continue
            if route.name in names:
                r.error(item, "name", f"{keypath}.name", f"route name {route.name!r} is used twice")
            names.add(route.name)
            (router.to_sip if direction == "to_sip" else router.to_app).append(route)  # type: ignore[arg-type]
    items = node.get("transfer")
    if items is not None and not isinstance(items, list):
        r.error(node, "transfer", "routes.transfer", "must be a list of transfer routes")
        items = []
    for i, item in enumerate(items or []):
        keypath = f"routes.transfer[{i}]"
        if not isinstance(item, _Map):
            r.error(node, "transfer", keypath, "each transfer route must be a mapping")
            continue
        r.unknown(item, keypath, {"name", "match", "ring_timeout"})
        pats = _patterns(r, item, keypath, ("target", "by"))
        if pats and pats.get("target") is None:
            r.error(item, "match", f"{keypath}.match.target", "is required (the extensions calls may be transferred to)")
            continue
        if not pats:
            continue
        name = str(item.get("name") or f"transfer-{i + 1}")
        if name in names:
            r.error(item, "name", f"{keypath}.name", f"route name {name!r} is used twice")
        names.add(name)
        router.transfer.append(routing.TransferRoute(
            name, pats["target"], pats.get("by"),
            r.get(item, "ring_timeout", f"{keypath}.ring_timeout", duration)))
    return router


def _patterns(r: _Reader, item: _Map, keypath: str, keys: tuple[str, ...]) -> dict[str, Any]:
    match = item.get("match")
    if not isinstance(match, _Map) or not match:
        r.error(item, "match", f"{keypath}.match", f"must be a mapping with some of: {', '.join(keys)}")
        return {}
    r.unknown(match, f"{keypath}.match", set(keys))
    return {k: r.get(match, k, f"{keypath}.match.{k}", routing.compile_pattern) for k in keys}


def _sip_route(r: _Reader, item: _Map, keypath: str, i: int, platform: PlatformConfig) -> SipRoute | None:
    r.unknown(item, keypath, {"name", "match", "target", "fallback", "caller_id", "display_name",
                              "max_calls", "ring_timeout", "ringback"})
    pats = _patterns(r, item, keypath, ("service", "user", "caller_service", "caller_user"))
    allowed = routing.TO_SIP_FIELDS | routing.groups(*pats.values())

    def template(value: Any) -> str:
        return routing.check_template(value, allowed)

    target = r.get(item, "target", f"{keypath}.target", template, required=True)
    fallback = r.get(item, "fallback", f"{keypath}.fallback",
                            lambda v: tuple(template(x) for x in (v if isinstance(v, list) else [v])), ())
    if not target:
        return None
    return SipRoute(
        name=str(item.get("name") or f"to_sip-{i + 1}"),
        service=pats.get("service"), user=pats.get("user"), caller_service=pats.get("caller_service"),
        caller_user=pats.get("caller_user"), target=target, fallback=fallback,
        caller_id=r.get(item, "caller_id", f"{keypath}.caller_id", template, "{caller_user}"),
        display_name=r.get(item, "display_name", f"{keypath}.display_name", template),
        max_calls=r.get(item, "max_calls", f"{keypath}.max_calls", positive_int),
        ring_timeout=r.get(item, "ring_timeout", f"{keypath}.ring_timeout", duration),
        ringback=r.get(item, "ringback", f"{keypath}.ringback", r.ringback),
    )


def _app_route(r: _Reader, item: _Map, keypath: str, i: int, platform: PlatformConfig) -> AppRoute | None:
    r.unknown(item, keypath, {"name", "match", "target", "caller_id", "caller_service", "max_calls"})
    pats = _patterns(r, item, keypath, ("dialed", "caller"))
    allowed = routing.TO_APP_FIELDS | routing.groups(*pats.values())
    target = item.get("target")
    if not isinstance(target, _Map) or set(target) != {"service", "user"}:
        r.error(item, "target", f"{keypath}.target", "must be a mapping {service: ..., user: ...}")
        return None
    service = r.get(target, "service", f"{keypath}.target.service", _nonempty_str)
    if service and service not in platform.services:
        r.error(target, "service", f"{keypath}.target.service", f"unknown service {service!r}")
    user = r.get(target, "user", f"{keypath}.target.user",
                        lambda v: routing.check_template(v, allowed))
    caller_service = r.get(item, "caller_service", f"{keypath}.caller_service", _nonempty_str, required=True)
    if caller_service and caller_service not in platform.services:
        r.error(item, "caller_service", f"{keypath}.caller_service", f"unknown service {caller_service!r}")
    if not (service and user and caller_service):
        return None
    return AppRoute(
        name=str(item.get("name") or f"to_app-{i + 1}"),
        dialed=pats.get("dialed"), caller=pats.get("caller"), service=service, user=user,
        caller_service=caller_service,
        caller_id=r.get(item, "caller_id", f"{keypath}.caller_id",
                               lambda v: routing.check_template(v, allowed), "{caller}"),
        max_calls=r.get(item, "max_calls", f"{keypath}.max_calls", positive_int),
    )


def is_loopback_host(host: str | None) -> bool:
    """True for `localhost` and loopback IP literals; any other name may resolve anywhere."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def port_range(value: Any) -> tuple[int, int]:
    low, sep, high = str(value).partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"{value!r} is not a port range like 10000-10999")
    lo, hi = int(low), int(high)
    if not 1024 <= lo < hi < 65536 or hi - lo < 2:
        raise ValueError("range must lie in 1024-65535 and hold at least two ports")
    return lo, hi


def _codecs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of PCMU, PCMA, G722")
    names = tuple(str(v).upper() for v in value)
    if any(n not in ("PCMU", "PCMA", "G722") for n in names):
        raise ValueError("supported codecs are PCMU, PCMA and G722")
    return names


def _sip(r: _Reader, root: _Map) -> SipConfig:
    known = {"registrar", "domain", "username", "auth_username", "password", "password_env", "listen",
             "contact_host", "register", "register_expires", "keepalive", "rtp_ports", "rtp_host",
             "codecs", "ring_timeout", "transaction_timeout", "jitter_target", "trusted_peers", "untrusted",
             "media_networks", "media_timeout", "session_expires", "min_se", "timers", "dns_servers",
             "max_transactions", "journal", "trace", "dtmf", "reliable_provisionals", "transport", "tls",
             "connections", "srtp", "hep"}
    s = r.section(root, "sip", "sip", known)
    host, port = r.get(s, "registrar", "sip.registrar", _sip_host, ("127.0.0.1", 5060), required=True)
    bind_host, bind_port = r.get(s, "listen", "sip.listen", _hostport_any, ("127.0.0.1", 5080))
    contact = r.get(s, "contact_host", "sip.contact_host", _ip, None)
    if contact is None:
        if bind_host in ("0.0.0.0", "::"):
            r.error(s, "listen", "sip.contact_host", "set contact_host when listening on all addresses")
        contact = bind_host
    username = r.get(s, "username", "sip.username", _nonempty_str, "bridge")
    low, high = r.get(s, "rtp_ports", "sip.rtp_ports", port_range, (10000, 10999))
    t = r.section(s, "timers", "sip.timers", {"t1", "t2", "t4"})
    t1 = r.get(t, "t1", "sip.timers.t1", duration, 0.5)
    t2 = r.get(t, "t2", "sip.timers.t2", duration, 4.0)
    if t2 < t1:
        r.error(t, "t2", "sip.timers.t2", "must not be shorter than t1")
    min_se = r.get(s, "min_se", "sip.min_se", duration, 90)
    if min_se < 90:
        r.error(s, "min_se", "sip.min_se", "must be at least 90s (RFC 4028)")
    session_expires = r.get(s, "session_expires", "sip.session_expires", _duration_or_off, 1800)
    if session_expires and session_expires < min_se:
        r.error(s, "session_expires", "sip.session_expires", "must be at least sip.min_se (90s), or off")
    if s.get("tls") is not None and s.get("transport") != "tls":
        r.error(s, "tls", "sip.tls", "is for sip.transport: tls")
    return SipConfig(
        registrar_host=host, registrar_port=port,
        domain=r.get(s, "domain", "sip.domain", _nonempty_str, host),
        username=username,
        auth_username=r.get(s, "auth_username", "sip.auth_username", _nonempty_str, username),
        password=r.secret(s, "password", "sip.password") or "",
        bind_host=bind_host, bind_port=bind_port, contact_host=contact,
        register=r.get(s, "register", "sip.register", boolean, True),
        register_expires=int(r.get(s, "register_expires", "sip.register_expires", duration, 300)),
        keepalive=r.get(s, "keepalive", "sip.keepalive", duration, 10.0),
        transaction_timeout=r.get(s, "transaction_timeout", "sip.transaction_timeout", duration, 4.0),
        rtp_host=r.get(s, "rtp_host", "sip.rtp_host", _ip, contact),
        rtp_low=low, rtp_high=high,
        codecs=r.get(s, "codecs", "sip.codecs", _codecs, ("PCMU", "PCMA")),
        ring_timeout=r.get(s, "ring_timeout", "sip.ring_timeout", duration, 30.0),
        jitter_target=r.get(s, "jitter_target", "sip.jitter_target", _jitter_target, 0.040),
        trusted_peers=tuple(r.get(s, "trusted_peers", "sip.trusted_peers", _networks, [])),
        untrusted=r.get(s, "untrusted", "sip.untrusted", _untrusted, "reject"),
        media_networks=r.get(s, "media_networks", "sip.media_networks",
                             lambda v: tuple(_networks(v)), None),
        media_timeout=r.get(s, "media_timeout", "sip.media_timeout", _duration_or_off, 30.0),
        session_expires=int(session_expires), min_se=int(min_se),
        t1=t1, t2=t2, t4=r.get(t, "t4", "sip.timers.t4", duration, 5.0),
        dns_servers=r.get(s, "dns_servers", "sip.dns_servers", _dns_servers, None),
        max_transactions=r.get(s, "max_transactions", "sip.max_transactions", positive_int, 5000),
        journal=r.get(s, "journal", "sip.journal", _journal, _default_journal(r.path, r.env)),
        trace=r.get(s, "trace", "sip.trace", boolean, False),
        dtmf=r.get(s, "dtmf", "sip.dtmf", _one_of("rfc4733", "info", "auto"), "auto"),
        reliable_provisionals=r.get(s, "reliable_provisionals", "sip.reliable_provisionals",
                                    _one_of("supported", "required", "off"), "supported"),
        transport=r.get(s, "transport", "sip.transport", _one_of("udp", "tcp", "tls"), "udp"),
        tls=_sip_tls(r, s), connections=_sip_connections(r, s),
        srtp=r.get(s, "srtp", "sip.srtp", _one_of("off", "optional", "required"), "off"),
        hep=_hep(r, s),
    )


def _sip_tls(r: _Reader, s: _Map) -> SipTls:
    """`sip.tls: {ca, server_name, cert, key}`, files checked at load (cert and key go together)."""
    if s.get("tls") is None:
        return SipTls()
    t = r.section(s, "tls", "sip.tls", {"ca", "server_name", "cert", "key"})
    ca = _ca_file(r, t, "ca", "sip.tls.ca")
    name = r.get(t, "server_name", "sip.tls.server_name", _nonempty_str, None)
    cert = r.get(t, "cert", "sip.tls.cert", r.file_path, None)
    key = r.get(t, "key", "sip.tls.key", r.file_path, None)
    if (cert is None) != (key is None):
        r.error(t, "cert" if cert is None else "key", "sip.tls", "cert and key go together")
        return SipTls(ca, name)
    if cert is not None and key is not None:
        try:
            tls.server_context(cert, key)
        except tls.TlsError as exc:
            r.error(t, "cert", "sip.tls", str(exc))
            return SipTls(ca, name)
    return SipTls(ca, name, cert, key)


def _sip_connections(r: _Reader, s: _Map) -> SipConnections:
    c = r.section(s, "connections", "sip.connections",
                  {"max", "per_address", "message_timeout", "idle_timeout", "keepalive"})
    return SipConnections(
        max=r.get(c, "max", "sip.connections.max", positive_int, 256),
        per_address=r.get(c, "per_address", "sip.connections.per_address", positive_int, 16),
        message_timeout=r.get(c, "message_timeout", "sip.connections.message_timeout", duration, 10.0),
        idle_timeout=r.get(c, "idle_timeout", "sip.connections.idle_timeout", duration, 300.0),
        keepalive=r.get(c, "keepalive", "sip.connections.keepalive", _duration_or_off, 30.0))


def _one_of(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return convert


def _hep(r: _Reader, s: _Map) -> HepConfig | None:
    """`sip.hep: {address: host:port, id: N, password[_env|_file]}` (absent: no HEP export)."""
    if s.get("hep") is None:
        return None
    h = r.section(s, "hep", "sip.hep", {"address", "id", "password", "password_env"})
    host, port = r.get(h, "address", "sip.hep.address", hostport, ("", 0), required=True)
    agent_id = r.get(h, "id", "sip.hep.id", count, 0)
    if agent_id > 0xFFFFFFFF:
        r.error(h, "id", "sip.hep.id", "must fit in 32 bits (0-4294967295)")
    password = r.secret(h, "password", "sip.hep.password", required=False)
    return HepConfig(host, port, agent_id, password)


def _sip_host(value: Any) -> tuple[str, int | None]:
    """host:port, or a host name alone (DNS SRV decides the port)."""
    text = str(value).strip()
    bad = ValueError(f"{text!r} is not a host name, IP address or host:port")
    host, port = text, None
    if text.startswith("[") or text.count(":") == 1:
        host, port = hostport(text)
    elif ":" in text:                               # a bare IPv6 address
        try:
            return _ip(text), None
        except ValueError:
            raise bad from None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?", host):
            raise bad from None
    return host, port


def _networks(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError("must be a list of IP addresses or CIDR networks")
    for item in value:
        try:
            ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return [str(v) for v in value]


def _untrusted(value: Any) -> str:
    if value not in ("reject", "drop"):
        raise ValueError("must be reject (403) or drop")
    return value


def _duration_or_off(value: Any) -> float:
    if value is False or value in ("off", 0, "0"):
        return 0.0
    return duration(value)


def _dns_servers(value: Any) -> list[tuple[str, int]]:
    if not isinstance(value, list) or not value:
        raise ValueError("must be a list of IP addresses (optionally ip:port)")
    servers = []
    for item in value:
        text = str(item)
        try:
            servers.append((str(ipaddress.ip_address(text.strip("[]"))), 53))
        except ValueError:
            h, p = hostport(text)
            servers.append((_ip(h), p))
    if len({p for _, p in servers}) > 1:
        raise ValueError("all DNS servers must use the same port")
    return servers


def _journal(value: Any) -> str | None:
    if value is False or value == "off":
        return None
    if not isinstance(value, str) or not value:
        raise ValueError("must be a file path, or off")
    return value


def _default_journal(config_path: str, env: dict[str, str]) -> str:
    """Under systemd's StateDirectory, else ~/.local/state/bridge, one file per config file."""
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return str(Path(state) / "sip-dialogs.jsonl")
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    digest = hashlib.sha1(str(Path(config_path).resolve()).encode()).hexdigest()[:10]
    return str(Path(base) / "bridge" / f"sip-dialogs-{digest}.jsonl")


def _prefetch(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 8:
        raise ValueError("must be 0..7 packets, or 'aiortc' for aiortc's own buffer")
    return value


def _liveness_timeout(value: Any) -> float | None:
    if value is False:
        return None
    seconds = duration(value)
    if not 2 <= seconds <= 60:
        raise ValueError("must be 2s to 60s, or off")
    return seconds


def _webrtc_codecs(value: Any) -> tuple[str, ...]:
    names = {"pcmu": "PCMU", "pcma": "PCMA", "g722": "G722", "opus": "opus"}
    if not isinstance(value, list) or not value or any(str(v).lower() not in names for v in value):
        raise ValueError("must be a non-empty list of PCMU, PCMA, G722, opus")
    return tuple(names[str(v).lower()] for v in value)


def _jitter_target(value: Any) -> float:
    if value in (0, "0", "0ms"):
        return 0.0
    seconds = duration(value)
    if seconds > 0.18:
        raise ValueError("must be at most 180ms")
    return seconds


def _hostport_any(value: Any) -> tuple[str, int]:
    text = str(value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port (port 0: any free port)")
    return host.strip("[]"), int(port)


def _ip(value: Any) -> str:
    return str(ipaddress.ip_address(str(value)))


def _platform(r: _Reader, root: _Map) -> PlatformConfig:
    known = {"embedded", "listen", "public_url", "cc_param_secret", "cc_param_secret_env",
             "token_max_age", "answer_timeout", "max_call_time", "max_message_bytes",
             "callback_timeout", "services", "dev_tokens", "http", "tls", "callback_ca"}
    p = r.section(root, "platform", "platform", known, required=True)
    host, port = r.get(p, "listen", "platform.listen", hostport, ("127.0.0.1", 8080))
    tls_files = _tls(r, p, "platform.tls")
    scheme = "https" if tls_files else "http"
    public_url = r.get(p, "public_url", "platform.public_url", http_url, f"{scheme}://{host}:{port}")
    secret = r.secret(p, "cc_param_secret", "platform.cc_param_secret", required=False)
    services_node = r.section(p, "services", "platform.services", None, required=True)
    services: dict[str, Service] = {}
    for sid in services_node:
        keypath = f"platform.services.{sid}"
        if not isinstance(sid, str) or not protocol.SERVICE_ID.fullmatch(sid):
            r.error(services_node, sid, keypath, "service id must match [a-zA-Z0-9.-]{1,64}")
            continue
        s = services_node[sid]
        if not isinstance(s, _Map):
            r.error(services_node, sid, keypath, "must be a mapping")
            continue
        r.unknown(s, keypath, {"api_key", "api_key_env", "api_secret", "api_secret_env",
                               "notify_cb_url", "call_event_cb_url", "push_url", "push_secret",
                               "push_secret_env", "one_call_per_user"})
        api_key = r.secret(s, "api_key", f"{keypath}.api_key", sensitive=False)
        api_secret = r.secret(s, "api_secret", f"{keypath}.api_secret")
        if api_secret is not None and len(api_secret) < 32:
            r.error(s, "api_secret", f"{keypath}.api_secret", "must be at least 32 characters (HMAC-SHA256 key)")
        push_urls = r.get(s, "push_url", f"{keypath}.push_url", _http_urls, ())
        services[sid] = Service(
            id=sid, api_key=api_key or "", api_secret=api_secret or "",
            notify_cb_url=r.get(s, "notify_cb_url", f"{keypath}.notify_cb_url", http_url),
            call_event_cb_url=r.get(s, "call_event_cb_url", f"{keypath}.call_event_cb_url", http_url),
            push_urls=push_urls,
            push_secret=r.secret(s, "push_secret", f"{keypath}.push_secret", required=bool(push_urls)),
            one_call_per_user=r.get(s, "one_call_per_user", f"{keypath}.one_call_per_user", boolean, True),
        )
    seen: dict[str, str] = {}
    for service in services.values():
        if service.api_key and service.api_key in seen:
            r.error(services_node, service.id, f"platform.services.{service.id}.api_key",
                    f"API key already used by service {seen[service.api_key]}")
        seen[service.api_key] = service.id
    return PlatformConfig(
        embedded=r.get(p, "embedded", "platform.embedded", boolean, True),
        host=host, port=port, public_url=public_url.rstrip("/"),
        cc_param_secret=secret.encode() if secret else secrets.token_bytes(32),
        token_max_age=r.get(p, "token_max_age", "platform.token_max_age", duration, 600.0),
        answer_timeout=r.get(p, "answer_timeout", "platform.answer_timeout", duration, 60.0),
        max_call_time=r.get(p, "max_call_time", "platform.max_call_time", duration, 4 * 3600.0),
        max_message_bytes=r.get(p, "max_message_bytes", "platform.max_message_bytes",
                                positive_int, 64 * 1024),
        callback_timeout=r.get(p, "callback_timeout", "platform.callback_timeout", duration, 5.0),
        services=services,
        dev_tokens=r.get(p, "dev_tokens", "platform.dev_tokens", boolean, False),
        http=_http(r, p, "platform.http"),
        tls=tls_files,
        callback_ca=_ca_file(r, p, "callback_ca", "platform.callback_ca"),
    )
