"""YAML configuration -> typed, validated settings.

Every error names the file, the line and the key, and all errors are reported at once.
Secrets may be given inline (development), by environment or by file: for a secret key `X`, a
key `X_env: NAME` reads the environment variable NAME, which wins over the inline value when set;
`X_file: PATH` reads the file (systemd's LoadCredential=: `${CREDENTIALS_DIRECTORY}/name`).
File paths may name environment variables (`$NAME`, `${NAME}`) and are relative to the config
file's folder.
Where each secret came from is kept (`Config.secrets`) for the production checks of `production`.

Modules: `model` (the typed settings), `reader` (YAML with positions, errors), `values` (scalar
values), one per group of sections: `sections` (platform, notifications, bridge, webrtc), `sip`,
`routes`; `cluster:` is read by `bridge.cluster.config`.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from ..cluster import config as cluster_config
from .model import (RINGBACK_TONES, BridgeConfig, Config, ConfigError, HepConfig, HttpLimits, NotificationsConfig,
                    PlatformConfig, SecretOrigin, Service, SipConfig, SipConnections, SipTls, TlsFiles, WebRtcConfig)
from .reader import Loader, Map, Reader, yaml_error
from .routes import read_routes
from .sections import check_own_connections, read_bridge, read_notifications, read_platform, read_webrtc
from .sip import read_sip
from .values import (boolean, count, duration, hostport, http_url, ip_list, is_loopback_host, log_level_name,
                     port_range, positive_int)

__all__ = ["RINGBACK_TONES", "BridgeConfig", "Config", "ConfigError", "HepConfig", "HttpLimits",
           "NotificationsConfig", "PlatformConfig", "SecretOrigin", "Service", "SipConfig", "SipConnections",
           "SipTls", "TlsFiles", "WebRtcConfig", "boolean", "count", "duration", "hostport", "http_url", "ip_list",
           "is_loopback_host", "load", "loads", "port_range", "positive_int"]


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
        root = yaml.load(text, Loader=Loader)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([yaml_error(path, exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: YAML: {exc}"]) from None
    if not isinstance(root, Map):
        raise ConfigError([f"{path}:1: the file must be a YAML mapping"])
    r = Reader(path, dict(os.environ) if env is None else env)
    r.unknown(root, "", {"log_level", "platform", "webrtc", "sip", "notifications", "bridge", "routes", "cluster"})
    log_level = r.get(root, "log_level", "log_level", log_level_name, "info")
    platform = read_platform(r, root)
    webrtc = read_webrtc(r, root)
    sip = read_sip(r, root) if root.get("sip") is not None else None
    notifications = read_notifications(r, root) if root.get("notifications") is not None else None
    bridge = read_bridge(r, root, platform) if root.get("bridge") is not None else None
    router = read_routes(r, root, platform)
    cluster = cluster_config.read(r, root, sip.bind_port if sip is not None else None)
    if bridge is not None and (sip is None or notifications is None):
        r.error(root, "bridge", "bridge", "the bridge needs the sip and notifications sections")
    if bridge is not None and platform.embedded:
        check_own_connections(r, root, platform, bridge)
    if r.errors:
        raise ConfigError(r.errors)
    return Config(path=path, log_level=log_level, platform=platform, webrtc=webrtc, sip=sip,
                  notifications=notifications, bridge=bridge, router=router, secrets=tuple(r.secrets),
                  cluster=cluster)
