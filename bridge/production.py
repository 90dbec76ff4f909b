"""Production mode: what `bridge run` refuses to serve beyond loopback.

The daemon is *exposed* when an HTTP listener it serves is on an address other than loopback
(`platform.listen` when the platform is embedded, `notifications.listen` when the bridge runs),
or when `platform.public_url` names a host other than loopback (a reverse proxy publishes the
platform, whatever it listens on). An exposed daemon refuses to start, naming each key, when:

- `platform.dev_tokens` is true;
- a secret is written in the config file (it must come from its `<key>_env` variable), which
  includes a `<key>_env` variable that is named but unset, so that the inline value would be used;
- a secret has a value shipped in the demo `config.yaml`, wherever it came from.

A daemon on loopback only (the demo) starts as before. Either way, each `<key>_env` variable that
is named but unset while an inline value stands in is a WARNING at start (key and variable,
never a value).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from .config import Config, is_loopback_host

log = logging.getLogger("bridge.production")

# The secrets of the shipped demo config.yaml (tests/test_production.py keeps this list exact).
DEMO_SECRETS = frozenset({
    "demo-app-development-secret-change-me",
    "demo-desk-development-secret-change-me",
    "demo-notification-development-secret-change-me",
    "bridge-development-password",
})


def exposure(cfg: Config) -> list[str]:
    """What makes the daemon reachable beyond loopback, as `key value` (empty: loopback only)."""
    found = []
    p = cfg.platform
    if p.embedded:
        if not is_loopback_host(p.host):
            found.append(f"platform.listen {p.host}:{p.port}")
        if not is_loopback_host(urlsplit(p.public_url).hostname):
            found.append(f"platform.public_url {p.public_url}")
    n = cfg.notifications
    if cfg.bridge is not None and n is not None and not is_loopback_host(n.host):
        found.append(f"notifications.listen {n.host}:{n.port}")
    return found


def unset_variables(cfg: Config) -> list[str]:
    """One line per `*_env` variable that is named but unset while an inline value is used."""
    return [f"{cfg.path}:{s.line}: {s.keypath}: environment variable {s.env_name} is not set: "
            f"using the inline value of the config file" for s in cfg.secrets
            if s.env_name and s.source == "inline"]


def problems(cfg: Config) -> list[str]:
    """Why this config may not be served beyond loopback (empty: nothing)."""
    found = []
    if cfg.platform.embedded and cfg.platform.dev_tokens:
        found.append(f"{cfg.path}: platform.dev_tokens: must be false: anyone who reaches the platform "
                     "could get an access token for any user")
    for s in cfg.secrets:
        where = f"{cfg.path}:{s.line}: {s.keypath}"
        if s.source == "inline" and s.env_name:
            found.append(f"{where}: the environment variable {s.env_name} is not set, so the inline "
                         "(development) value would be used")
        elif s.value in DEMO_SECRETS:
            found.append(f"{where}: is the development value shipped in config.yaml: set a secret of your own")
        elif s.source == "inline":
            found.append(f"{where}: a secret written in the config file: give it as {s.keypath.rsplit('.', 1)[-1]}_env")
    return found


def check(cfg: Config) -> None:
    """At start: warn about unset variables; refuse (SystemExit, exit 1) an exposed daemon that
    would serve development secrets or tokens."""
    for line in unset_variables(cfg):
        log.warning("%s", line)
    exposed = exposure(cfg)
    found = problems(cfg) if exposed else []
    if found:
        raise SystemExit("bridge: refusing to start: reachable beyond loopback ("
                         + ", ".join(exposed) + ") with development settings:\n  " + "\n  ".join(found))
