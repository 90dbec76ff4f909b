"""IP addresses of the bridge's sockets (SIP and RTP), IPv4 and IPv6 alike.

What it promises:
- A host with a colon is IPv6, anything else IPv4 (hosts here are IP literals, never names).
- `::` is dual-stack: `udp_socket("::", port)` and `stream_socket` clear IPV6_V6ONLY, so one
  socket serves IPv4 and IPv6 peers (Linux). What such a socket receives from an IPv4 peer comes
  as `::ffff:a.b.c.d`; `peer()` gives it back as `a.b.c.d`, and `sockaddr()` maps an IPv4
  destination to that form again, so the rest of the bridge sees one spelling of each address
  whichever socket it came through.
- `0.0.0.0` is every IPv4 address only; a specific address is that address only.
"""

from __future__ import annotations

import ipaddress
import socket

Addr = tuple[str, int]
ANY = ("0.0.0.0", "::")


def family(host: str) -> int:
    """AF_INET6 for an IPv6 literal, AF_INET otherwise."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def dual_stack(host: str) -> bool:
    """Does a socket bound to `host` take both IPv4 and IPv6 peers?"""
    return host == "::"


def peer(addr: tuple) -> Addr:
    """(host, port) of a socket address, an IPv4-mapped IPv6 address written as IPv4."""
    host, port = str(addr[0]), int(addr[1])
    if host.startswith("::ffff:") and "." in host:
        try:
            mapped = ipaddress.IPv6Address(host).ipv4_mapped
        except ValueError:
            mapped = None
        if mapped is not None:
            host = str(mapped)
    return host, port


def sockaddr(addr: Addr, sock_family: int) -> Addr:
    """`addr` as a socket of `sock_family` takes it (an IPv4 address through an IPv6 socket: mapped)."""
    host, port = addr
    if sock_family == socket.AF_INET6 and ":" not in host:
        return f"::ffff:{host}", port
    return host, port


def reachable(host: str, bound: str) -> bool:
    """Can a socket bound to `bound` send to `host`?"""
    return dual_stack(bound) or family(host) == family(bound)


def _bound(kind: int, host: str, port: int, reuse_port: bool = False) -> socket.socket:
    sock = socket.socket(family(host), kind)
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack(host) else 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def udp_socket(host: str, port: int) -> socket.socket:
    """A bound, non-blocking UDP socket (dual-stack on `::`); raises OSError."""
    return _bound(socket.SOCK_DGRAM, host, port)


def stream_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound, non-blocking TCP socket (dual-stack on `::`); `reuse_port` lets a listener and the
    connections the bridge opens share one local port (SO_REUSEPORT). Raises OSError."""
    return _bound(socket.SOCK_STREAM, host, port, reuse_port)
