"""TLS contexts of the HTTP side: listeners serving HTTPS/WSS, clients verifying a private CA.

Servers speak TLS 1.2 and 1.3 only, with the `ssl` module's default ciphers (forward-secret
AEAD suites) and no compression or renegotiation; the certificate file holds the server
certificate first, then its intermediates (PEM), as certbot's `fullchain.pem` does.
Clients verify the server's certificate and name against the system's CAs, or against one
CA bundle (a company's private CA) when given.
"""

from __future__ import annotations

import ssl


class TlsError(Exception):
    """A certificate, key or CA file that cannot be used; the message says which and why."""


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for `cert` (PEM chain) and `key` (PEM, unencrypted)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    for path in (cert, key):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TlsError(f"cannot read {path}: {exc.strerror}") from None
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TlsError(f"certificate {cert} and key {key} do not make a usable pair "
                       f"(PEM, key unencrypted and matching): {exc.reason or exc}") from None
    return ctx


def client_context(ca: str | None = None) -> ssl.SSLContext:
    """A client context that verifies servers against `ca` (a PEM bundle) or the system's CAs."""
    try:
        ctx = ssl.create_default_context(cafile=ca)       # a private CA alone, not beside the system's
    except FileNotFoundError:
        raise TlsError(f"cannot read CA file {ca}: no such file") from None
    except PermissionError:
        raise TlsError(f"cannot read CA file {ca}: permission denied") from None
    except ssl.SSLError as exc:
        raise TlsError(f"CA file {ca} holds no usable PEM certificate: {exc.reason or exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
