"""The `platform:`, `notifications:`, `bridge:` and `webrtc:` sections, and what every HTTP
listener shares (`http` limits, `tls` files, CA bundles)."""

from __future__ import annotations

import secrets
from typing import Any

from .. import iceservers, protocol, tls
from ..iceservers import IceServer
from .model import BridgeConfig, HttpLimits, NotificationsConfig, PlatformConfig, Service, TlsFiles, WebRtcConfig
from .reader import Map, Reader
from .values import (boolean, count, duration, hostport, http_url, http_urls, ip_list, ipv4, is_loopback_host,
                     nonempty_str, positive_int)


def _http(r: Reader, parent: Map, keypath: str) -> HttpLimits:
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


def _tls(r: Reader, parent: Map, keypath: str) -> TlsFiles | None:
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


def ca_file(r: Reader, where: Map, key: str, keypath: str) -> str | None:
    """A CA bundle (PEM) to verify servers with, checked at load."""
    path = r.get(where, key, keypath, r.file_path)
    if path is not None:
        try:
            tls.client_context(path)
        except tls.TlsError as exc:
            r.error(where, key, keypath, str(exc))
            return None
    return path
def read_platform(r: Reader, root: Map) -> PlatformConfig:
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
        if not isinstance(s, Map):
            r.error(services_node, sid, keypath, "must be a mapping")
            continue
        r.unknown(s, keypath, {"api_key", "api_key_env", "api_secret", "api_secret_env",
                               "notify_cb_url", "call_event_cb_url", "push_url", "push_secret",
                               "push_secret_env", "one_call_per_user"})
        api_key = r.secret(s, "api_key", f"{keypath}.api_key", sensitive=False)
        api_secret = r.secret(s, "api_secret", f"{keypath}.api_secret")
        if api_secret is not None and len(api_secret) < 32:
            r.error(s, "api_secret", f"{keypath}.api_secret", "must be at least 32 characters (HMAC-SHA256 key)")
        push_urls = r.get(s, "push_url", f"{keypath}.push_url", http_urls, ())
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
        callback_ca=ca_file(r, p, "callback_ca", "platform.callback_ca"),
    )


def read_notifications(r: Reader, root: Map) -> NotificationsConfig:
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


def check_own_connections(r: Reader, root: Map, platform: PlatformConfig, bridge: BridgeConfig) -> None:
    """The bridge's app legs are WebSockets to the embedded platform, all from the bridge's own
    address: the platform listener's caps must leave room for `bridge.max_calls` of them."""
    need = bridge.max_calls + 16
    limits = platform.http
    p = root.get("platform")
    where = p.get("http") if isinstance(p, Map) and isinstance(p.get("http"), Map) else p
    for key, cap in (("max_connections", limits.max_connections),
                     ("max_connections_per_client", limits.max_connections_per_client)):
        if cap and cap < need:
            r.error(where, key, f"platform.http.{key}",
                    f"must be 0 or at least bridge.max_calls + 16 ({need}): every bridged call holds "
                    f"a WebSocket from the bridge's own address")
def read_bridge(r: Reader, root: Map, platform: PlatformConfig) -> BridgeConfig:
    b = r.section(root, "bridge", "bridge", {"desk_service", "trusted_platforms", "max_calls", "drain_timeout",
                                               "media", "platform_ca", "ringback", "music_on_hold",
                                               "call_records"})
    desk = r.get(b, "desk_service", "bridge.desk_service", nonempty_str, required=True)
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
                        platform_ca=ca_file(r, b, "platform_ca", "bridge.platform_ca"),
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
def _ice_servers(r: Reader, w: Map) -> tuple[IceServer, ...]:
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
        if not isinstance(item, Map):
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
                               username=r.get(item, "username", f"{keypath}.username", nonempty_str, required=True),
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


def read_webrtc(r: Reader, root: Map) -> WebRtcConfig:
    """`webrtc:`: the bridge's app legs (ICE addresses and servers, codecs, receive buffer, liveness)."""
    w = r.section(root, "webrtc", "webrtc", {"ice_addresses", "codecs", "receive_prefetch", "liveness_timeout",
                                             "ice_servers", "public_address"})
    prefetch = w.get("receive_prefetch", 1)
    return WebRtcConfig(ice_addresses=r.get(w, "ice_addresses", "webrtc.ice_addresses", ip_list, []),
                        codecs=r.get(w, "codecs", "webrtc.codecs", _webrtc_codecs, ("PCMU", "PCMA", "opus")),
                        receive_prefetch=None if prefetch == "aiortc" else
                        r.get(w, "receive_prefetch", "webrtc.receive_prefetch", _prefetch, 1),
                        liveness_timeout=r.get(w, "liveness_timeout", "webrtc.liveness_timeout",
                                               _liveness_timeout, 8.0),
                        ice_servers=_ice_servers(r, w),
                        public_address=r.get(w, "public_address", "webrtc.public_address", ipv4))
