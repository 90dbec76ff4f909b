"""The browser side, served by the platform's HTTP server: the JavaScript SDK and the dialer.

    GET  /sdk/planetkit.js    the browser SDK (global `PlanetKit`, the seed's Web API)
    GET  /dialer              the web dialer (and its assets under /dialer/)
    GET  /dialer/config.json  what the dialer may offer ({"dev_tokens": bool})
    POST /v1/dev/token        {"service", "user"} -> {"token"}: development only
                              (`platform.dev_tokens: true`), loopback clients only, never
                              through a proxy (any of PROXY_HEADERS: X-Forwarded-*,
                              Forwarded, X-Real-IP, Via, ...), else 403; bodies over 4 KiB: 413

Static files come from a fixed list (no directory listing, no paths from the request) with
explicit content types.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from . import protocol, token
from .config import PlatformConfig
from .logsafe import safe

log = logging.getLogger("bridge.webapp")

WEB_DIR = Path(__file__).resolve().parent / "web"

# URL path -> (file in bridge/web/, content type)
STATIC: dict[str, tuple[str, str]] = {
    "/sdk/planetkit.js": ("planetkit.js", "application/javascript; charset=utf-8"),
    "/dialer": ("dialer.html", "text/html; charset=utf-8"),
    "/dialer/dialer.js": ("dialer.js", "application/javascript; charset=utf-8"),
    "/dialer/dialer.css": ("dialer.css", "text/css; charset=utf-8"),
    "/dialer/icon.svg": ("icon.svg", "image/svg+xml"),
}

# Everything the pages load is served from here; signalling may go to any ws(s) platform URL.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "media-src 'self' blob: mediastream:; connect-src 'self' ws: wss:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

MAX_BODY = 4096            # the largest request body of the platform's HTTP server (a dev token request)

# Headers a reverse proxy adds: a request carrying one came through a proxy, whatever its address.
PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP", "Via", "X-Forwarded-Host",
                 "X-Forwarded-Proto", "X-Client-IP", "True-Client-IP")


def add_routes(app: web.Application, cfg: PlatformConfig) -> None:
    """Mount the SDK, the dialer and the dev-token endpoint on the platform's app."""
    for path, (name, content_type) in STATIC.items():
        app.router.add_get(path, _static(WEB_DIR / name, content_type))
    app.router.add_get("/dialer/", _redirect("/dialer"))
    app.router.add_get("/dialer/config.json", _dialer_config(cfg))
    app.router.add_post("/v1/dev/token", _dev_token(cfg))


def _static(path: Path, content_type: str):
    async def handler(request: web.Request) -> web.Response:
        try:
            body = path.read_bytes()       # read per request: small files, edits show at once
        except OSError:
            raise web.HTTPNotFound() from None
        return web.Response(body=body, headers={
            "Content-Type": content_type, "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff", "Content-Security-Policy": CSP,
            "Referrer-Policy": "no-referrer",
        })
    return handler


def _redirect(location: str):
    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPFound(location)
    return handler


def _dialer_config(cfg: PlatformConfig):
    async def handler(request: web.Request) -> web.Response:
        offered = bool(cfg.dev_tokens) and is_loopback(request.remote) and proxied(request) is None
        return web.json_response({"dev_tokens": offered}, headers={"Cache-Control": "no-store"})
    return handler


def is_loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address((address or "").split("%")[0]).is_loopback
    except ValueError:
        return False


def proxied(request: web.Request) -> str | None:
    """The first proxy header of `request`, if it came through a reverse proxy."""
    return next((name for name in PROXY_HEADERS if name in request.headers), None)


def _forbidden(message: str) -> web.HTTPException:
    return web.HTTPForbidden(text=json.dumps({"error": "forbidden", "message": message}),
                             content_type="application/json")


def _bad_request(message: str) -> web.HTTPException:
    return web.HTTPBadRequest(text=json.dumps({"error": "bad_request", "message": message}),
                              content_type="application/json")


def _same_origin(request: web.Request) -> bool:
    """A browser's cross-site POST carries a foreign Origin; refuse it (CSRF, DNS rebinding)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True                        # not a browser (curl, a test): loopback is enough
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc == request.host


def _loopback_host(request: web.Request) -> bool:
    """The Host header must name this machine (a rebinding name resolving to 127.0.0.1 does not)."""
    try:
        host = urlsplit(f"//{request.host}").hostname or ""
    except ValueError:                     # e.g. "[::1"
        return False
    return host == "localhost" or is_loopback(host)


def _dev_token(cfg: PlatformConfig):
    async def handler(request: web.Request) -> web.Response:
        if not cfg.dev_tokens:
            raise _forbidden("development tokens are off (platform.dev_tokens: false); "
                             "use `bridge token --service S --user U`")
        if not is_loopback(request.remote):
            raise _forbidden("development tokens are for loopback clients only")
        proxy = proxied(request)
        if proxy is not None:
            log.info("development token refused: the request came through a proxy (%s: %s)",
                     proxy, safe(request.headers[proxy], 100))
            raise _forbidden(f"development tokens are not given through a proxy ({proxy} is set)")
        if not _loopback_host(request) or not _same_origin(request):
            raise _forbidden("development tokens are for pages served by this daemon on a loopback address")
        try:
            body = json.loads(await request.read())
        except (ValueError, RecursionError):
            raise _bad_request("body must be JSON {\"service\": ..., \"user\": ...}") from None
        if not isinstance(body, dict):
            raise _bad_request("body must be a JSON object")
        service, user = body.get("service"), body.get("user")
        if not isinstance(user, str) or not protocol.USER_ID.fullmatch(user):
            raise _bad_request("user must match [a-zA-Z0-9_-]{1,64}")
        if not isinstance(service, str) or service not in cfg.services:
            raise _bad_request(f"unknown service {safe(service, 70)!r}")
        s = cfg.services[service]
        log.info("issued a development token for %s@%s to %s", user, service, request.remote)
        issued = token.issue(token.ServiceKey(s.id, s.api_key, s.api_secret), user)
        return web.json_response({"token": issued, "service": service, "user": user,
                                  "max_age": cfg.token_max_age}, headers={"Cache-Control": "no-store"})
    return handler
