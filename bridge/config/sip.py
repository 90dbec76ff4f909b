"""The `sip:` section: the PBX, the listener, transports and TLS, RTP, trust, timers, journal."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from pathlib import Path
from typing import Any

from .. import tls
from .model import HepConfig, SipConfig, SipConnections, SipTls
from .reader import Map, Reader
from .sections import ca_file
from .values import (boolean, count, duration, duration_or_off, hostport, hostport_any, ip_address, nonempty_str,
                     one_of, port_range, positive_int)


def read_sip(r: Reader, root: Map) -> SipConfig:
    known = {"registrar", "domain", "username", "auth_username", "password", "password_env", "listen",
             "contact_host", "register", "register_expires", "keepalive", "rtp_ports", "rtp_host",
             "codecs", "ring_timeout", "transaction_timeout", "jitter_target", "trusted_peers", "untrusted",
             "media_networks", "media_timeout", "session_expires", "min_se", "timers", "dns_servers",
             "max_transactions", "journal", "trace", "dtmf", "reliable_provisionals", "transport", "tls",
             "connections", "srtp", "hep"}
    s = r.section(root, "sip", "sip", known)
    host, port = r.get(s, "registrar", "sip.registrar", _sip_host, ("127.0.0.1", 5060), required=True)
    bind_host, bind_port = r.get(s, "listen", "sip.listen", hostport_any, ("127.0.0.1", 5080))
    contact = r.get(s, "contact_host", "sip.contact_host", ip_address, None)
    if contact is None:
        if bind_host in ("0.0.0.0", "::"):
            r.error(s, "listen", "sip.contact_host", "set contact_host when listening on all addresses")
        contact = bind_host
    username = r.get(s, "username", "sip.username", nonempty_str, "bridge")
    low, high = r.get(s, "rtp_ports", "sip.rtp_ports", port_range, (10000, 10999))
    t = r.section(s, "timers", "sip.timers", {"t1", "t2", "t4"})
    t1 = r.get(t, "t1", "sip.timers.t1", duration, 0.5)
    t2 = r.get(t, "t2", "sip.timers.t2", duration, 4.0)
    if t2 < t1:
        r.error(t, "t2", "sip.timers.t2", "must not be shorter than t1")
    min_se = r.get(s, "min_se", "sip.min_se", duration, 90)
    if min_se < 90:
        r.error(s, "min_se", "sip.min_se", "must be at least 90s (RFC 4028)")
    session_expires = r.get(s, "session_expires", "sip.session_expires", duration_or_off, 1800)
    if session_expires and session_expires < min_se:
        r.error(s, "session_expires", "sip.session_expires", "must be at least sip.min_se (90s), or off")
    if s.get("tls") is not None and s.get("transport") != "tls":
        r.error(s, "tls", "sip.tls", "is for sip.transport: tls")
    return SipConfig(
        registrar_host=host, registrar_port=port,
        domain=r.get(s, "domain", "sip.domain", nonempty_str, host),
        username=username,
        auth_username=r.get(s, "auth_username", "sip.auth_username", nonempty_str, username),
        password=r.secret(s, "password", "sip.password") or "",
        bind_host=bind_host, bind_port=bind_port, contact_host=contact,
        register=r.get(s, "register", "sip.register", boolean, True),
        register_expires=int(r.get(s, "register_expires", "sip.register_expires", duration, 300)),
        keepalive=r.get(s, "keepalive", "sip.keepalive", duration, 10.0),
        transaction_timeout=r.get(s, "transaction_timeout", "sip.transaction_timeout", duration, 4.0),
        rtp_host=r.get(s, "rtp_host", "sip.rtp_host", ip_address, contact),
        rtp_low=low, rtp_high=high,
        codecs=r.get(s, "codecs", "sip.codecs", _codecs, ("PCMU", "PCMA")),
        ring_timeout=r.get(s, "ring_timeout", "sip.ring_timeout", duration, 30.0),
        jitter_target=r.get(s, "jitter_target", "sip.jitter_target", _jitter_target, 0.040),
        trusted_peers=tuple(r.get(s, "trusted_peers", "sip.trusted_peers", _networks, [])),
        untrusted=r.get(s, "untrusted", "sip.untrusted", _untrusted, "reject"),
        media_networks=r.get(s, "media_networks", "sip.media_networks",
                             lambda v: tuple(_networks(v)), None),
        media_timeout=r.get(s, "media_timeout", "sip.media_timeout", duration_or_off, 30.0),
        session_expires=int(session_expires), min_se=int(min_se),
        t1=t1, t2=t2, t4=r.get(t, "t4", "sip.timers.t4", duration, 5.0),
        dns_servers=r.get(s, "dns_servers", "sip.dns_servers", _dns_servers, None),
        max_transactions=r.get(s, "max_transactions", "sip.max_transactions", positive_int, 5000),
        journal=r.get(s, "journal", "sip.journal", _journal, _default_journal(r.path, r.env)),
        trace=r.get(s, "trace", "sip.trace", boolean, False),
        dtmf=r.get(s, "dtmf", "sip.dtmf", one_of("rfc4733", "info", "auto"), "auto"),
        reliable_provisionals=r.get(s, "reliable_provisionals", "sip.reliable_provisionals",
                                    one_of("supported", "required", "off"), "supported"),
        transport=r.get(s, "transport", "sip.transport", one_of("udp", "tcp", "tls"), "udp"),
        tls=_sip_tls(r, s), connections=_sip_connections(r, s),
        srtp=r.get(s, "srtp", "sip.srtp", one_of("off", "optional", "required"), "off"),
        hep=_hep(r, s),
    )


def _sip_tls(r: Reader, s: Map) -> SipTls:
    """`sip.tls: {ca, server_name, cert, key}`, files checked at load (cert and key go together)."""
    if s.get("tls") is None:
        return SipTls()
    t = r.section(s, "tls", "sip.tls", {"ca", "server_name", "cert", "key"})
    ca = ca_file(r, t, "ca", "sip.tls.ca")
    name = r.get(t, "server_name", "sip.tls.server_name", nonempty_str, None)
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


def _sip_connections(r: Reader, s: Map) -> SipConnections:
    c = r.section(s, "connections", "sip.connections",
                  {"max", "per_address", "message_timeout", "idle_timeout", "keepalive"})
    return SipConnections(
        max=r.get(c, "max", "sip.connections.max", positive_int, 256),
        per_address=r.get(c, "per_address", "sip.connections.per_address", positive_int, 16),
        message_timeout=r.get(c, "message_timeout", "sip.connections.message_timeout", duration, 10.0),
        idle_timeout=r.get(c, "idle_timeout", "sip.connections.idle_timeout", duration, 300.0),
        keepalive=r.get(c, "keepalive", "sip.connections.keepalive", duration_or_off, 30.0))


def _hep(r: Reader, s: Map) -> HepConfig | None:
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
            return ip_address(text), None
        except ValueError:
            raise bad from None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?", host):
            raise bad from None
    return host, port


def _codecs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of PCMU, PCMA, G722")
    names = tuple(str(v).upper() for v in value)
    if any(n not in ("PCMU", "PCMA", "G722") for n in names):
        raise ValueError("supported codecs are PCMU, PCMA and G722")
    return names


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
            servers.append((ip_address(h), p))
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


def _jitter_target(value: Any) -> float:
    if value in (0, "0", "0ms"):
        return 0.0
    seconds = duration(value)
    if seconds > 0.18:
        raise ValueError("must be at most 180ms")
    return seconds
