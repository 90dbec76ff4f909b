"""Scalar values of the config: durations, addresses, URLs, counts. Each raises ValueError with
what is expected; `Reader.get` adds the file, line and key."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable
from urllib.parse import urlsplit


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


def http_urls(value: Any) -> tuple[str, ...]:
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


def nonempty_str(value: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
        raise ValueError("must be a non-empty string")
    return str(value)


def env_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError("must be an environment variable name")
    return value


_LOG_LEVELS = ("debug", "info", "warning", "error")


def log_level_name(value: Any) -> str:
    if str(value).lower() not in _LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
    return str(value).lower()


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


def one_of(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return convert


def ipv4(value: Any) -> str:
    address = ipaddress.ip_address(str(value))
    if address.version != 4:
        raise ValueError("must be an IPv4 address (the NAT's public address)")
    return str(address)


def ip_address(value: Any) -> str:
    return str(ipaddress.ip_address(str(value)))


def hostport_any(value: Any) -> tuple[str, int]:
    text = str(value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port (port 0: any free port)")
    return host.strip("[]"), int(port)


def duration_or_off(value: Any) -> float:
    if value is False or value in ("off", 0, "0"):
        return 0.0
    return duration(value)
