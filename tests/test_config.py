"""Config validation names file, line and key; the shipped sample is valid."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import config

ROOT = Path(__file__).resolve().parent.parent


def test_sample_config_is_valid():
    cfg = config.load(ROOT / "config.yaml", env={})
    assert set(cfg.platform.services) == {"demo-app", "demo-desk"}
    assert cfg.platform.answer_timeout == 60 and cfg.platform.max_call_time == 4 * 3600
    assert cfg.platform.services["demo-app"].notify_cb_url is None   # embedded push


def test_secrets_from_environment_win():
    cfg = config.load(ROOT / "config.yaml", env={"DEMO_APP_API_SECRET": "s" * 40, "DEMO_APP_API_KEY": "k1"})
    assert cfg.platform.services["demo-app"].api_secret == "s" * 40
    assert cfg.platform.services["demo-app"].api_key == "k1"
    assert "s" * 40 not in repr(cfg)             # secrets never reach logs via repr


BROKEN = """\
log_level: loud
platform:
  listen: 127.0.0.1:99999
  answer_timeout: soon
  max_call_tme: 4h
  services:
    demo-app:
      api_key: k
      api_secret: short
      notify_cb_url: ftp://example/notify
    "bad service!":
      api_key: k2
    other:
      api_secret_env: NOT_SET_ANYWHERE
webrtc:
  ice_addresses: [not-an-ip]
"""


def test_every_error_has_file_line_and_key():
    with pytest.raises(config.ConfigError) as exc:
        config.loads(BROKEN, "broken.yaml", env={})
    errors = exc.value.errors
    expected = [
        ("broken.yaml:1:", "log_level"), ("broken.yaml:3:", "platform.listen"),
        ("broken.yaml:4:", "platform.answer_timeout"), ("broken.yaml:5:", "platform.max_call_tme"),
        ("broken.yaml:9:", "platform.services.demo-app.api_secret"),
        ("broken.yaml:10:", "platform.services.demo-app.notify_cb_url"),
        ("broken.yaml:11:", "platform.services.bad service!"),
        ("broken.yaml:14:", "platform.services.other.api_key"),
        ("broken.yaml:14:", "platform.services.other.api_secret"),
        ("broken.yaml:16:", "webrtc.ice_addresses"),
    ]
    for prefix, key in expected:
        assert any(e.startswith(prefix) and f" {key}:" in e for e in errors), (prefix, key, errors)
    assert len(errors) == len(expected), errors


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(config.ConfigError) as exc:
        config.loads("platform:\n  listen: [oops\n", "x.yaml")
    assert exc.value.errors[0].startswith("x.yaml:")


def test_check_config_command(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN)
    run = subprocess.run([sys.executable, "-m", "bridge", "check-config", "-c", str(bad)],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 2
    assert f"{bad}:3: platform.listen:" in run.stderr and "Traceback" not in run.stderr
    good = subprocess.run([sys.executable, "-m", "bridge", "check-config", "-c", str(ROOT / "config.yaml")],
                          capture_output=True, text=True)
    assert good.returncode == 0 and "OK" in good.stdout


BROKEN_ROUTES = """\
platform:
  services:
    demo-app: {api_key: k, api_secret: "0123456789abcdef0123456789abcdef"}
routes:
  to_sip:
    - name: a
      match: {service: demo-desk, user: "desk-(?P<ext>\\\\d{4}"}
      target: "{ext}"
    - name: b
      match: {user: "x-(?P<n>\\\\d+)"}
      target: "{m}"
    - match: {usr: "x"}
      target: "1"
  to_app:
    - match: {dialed: "7(?P<n>\\\\d{3})"}
      target: {service: nope, user: "agent-{n}"}
      caller_service: demo-app
"""


def test_route_errors_name_line_and_key():
    with pytest.raises(config.ConfigError) as exc:
        config.loads(BROKEN_ROUTES, "routes.yaml", env={})
    errors = exc.value.errors
    expected = [("routes.yaml:7:", "routes.to_sip[0].match.user", "bad regular expression"),
                ("routes.yaml:11:", "routes.to_sip[1].target", "unknown template field(s) m"),
                ("routes.yaml:12:", "routes.to_sip[2].match.usr", "unknown key"),
                ("routes.yaml:16:", "routes.to_app[0].target.service", "unknown service 'nope'")]
    for prefix, key, text in expected:
        assert any(e.startswith(prefix) and f" {key}:" in e and text in e for e in errors), (prefix, key, errors)


@pytest.mark.parametrize("text,line,message", [
    ("platform:\n  listen: 127.0.0.1:8080\n   services: {}\n", 3, "check this line's indentation"),
    ("platform:\n  listen: 127.0.0.1:8080\n services: {}\n", 3, "indentation does not match the lines above"),
    ("platform:\n\tlisten: 1\n", 2, "a tab: YAML indents with spaces only"),
    ("platform:\n  listen: \"127.0.0.1:8080\n", 2, "a quote, bracket or brace opened here is never closed"),
    ("a: 1\nb\nc: 3\n", 3, "a line that is not `key: value`"),
])
def test_yaml_syntax_errors_say_what_to_fix(text, line, message):
    with pytest.raises(config.ConfigError) as exc:
        config.loads(text, "x.yaml")
    assert exc.value.errors == [f"x.yaml:{line}: YAML syntax: {exc.value.errors[0].split(': ', 2)[2]}"]
    assert message in exc.value.errors[0], exc.value.errors
    assert "<block" not in exc.value.errors[0] and "token" not in exc.value.errors[0]


def test_a_stray_top_level_key_is_named_plainly():
    text = (ROOT / "config.yaml").read_text() + "routez: {}\n"
    line = text.count("\n")
    with pytest.raises(config.ConfigError) as exc:
        config.loads(text, "c.yaml", env={})
    assert exc.value.errors == [f"c.yaml:{line}: routez: unknown top-level key (did you mean routes? expected one "
                                "of: bridge, cluster, log_level, notifications, platform, routes, sip, webrtc)"], exc.value.errors


def test_route_command_prints_the_decision():
    def route(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bridge", "route", "-c", str(ROOT / "config.yaml"), *args],
                              capture_output=True, text=True)
    ok = route("--from", "alice@demo-app", "--to", "desk-2001@demo-desk")
    assert ok.returncode == 0 and "route desk-phones: ring 2001, caller id 'alice'" in ok.stdout
    back = route("--dialed", "7042", "--caller", "2002")
    assert back.returncode == 0 and "call agent-042@demo-app as desk-2002@demo-desk" in back.stdout
    for args in (("--from", "alice@demo-app", "--to", "desk-123@demo-desk"),       # 3 digits: no route
                 ("--from", "mallory@evil", "--to", "desk-2001@demo-desk"),         # wrong caller service
                 ("--dialed", "9011442079460000")):                                 # toll fraud attempt
        denied = route(*args)
        assert denied.returncode == 1 and denied.stdout.startswith("denied:"), (args, denied.stdout)
    mixed = route("--from", "alice@demo-app", "--to", "desk-2001@demo-desk", "--dialed", "7001")
    assert mixed.returncode == 2 and mixed.stdout == "" and "Traceback" not in mixed.stderr
    assert "ask about different directions: give one pair" in mixed.stderr, mixed.stderr
    half = route("--from", "alice@demo-app")
    assert half.returncode == 2 and "give both --from and --to" in half.stderr, half.stderr


def test_bridge_media_must_be_relay_or_transcode(tmp_path):
    text = (ROOT / "config.yaml").read_text()
    line = next(i for i, x in enumerate(text.splitlines(), 1) if x.strip().startswith("media: relay"))
    with pytest.raises(config.ConfigError) as exc:
        config.loads(text.replace("media: relay", "media: passthrough"), "c.yaml", env={})
    assert exc.value.errors == [f"c.yaml:{line}: bridge.media: must be relay or transcode"], exc.value.errors
    assert config.loads(text.replace("media: relay", "media: transcode"), "c.yaml", env={}).bridge.media == "transcode"


def test_callback_urls_must_parse_as_the_platform_sends_them():
    text = (ROOT / "config.yaml").read_text().replace("call_event_cb_url: null", "call_event_cb_url: http://127.0.0.1:99999/e", 1)
    with pytest.raises(config.ConfigError) as exc:
        config.loads(text, "c.yaml", env={})
    assert any("platform.services.demo-app.call_event_cb_url: 'http://127.0.0.1:99999/e' is not an http(s) URL" in e
               for e in exc.value.errors), exc.value.errors


def test_a_host_name_for_the_notification_listener_is_checked_not_raised(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text((ROOT / "config.yaml").read_text().replace("listen: 127.0.0.1:8081", "listen: bridge.lan:8081"))
    run = subprocess.run([sys.executable, "-m", "bridge", "check-config", "-c", str(cfg)], capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "notifications.admin_token: set an admin_token when /healthz and /metrics listen beyond loopback" in run.stderr


def test_sip_security_and_protocol_keys():
    text = (ROOT / "config.yaml").read_text().replace("  ring_timeout: 30s\n", """  ring_timeout: 30s
  registrar: pbx.example.com
  trusted_peers: [192.0.2.7, 10.0.0.0/8]
  untrusted: drop
  media_networks: [10.0.20.0/24]
  media_timeout: off
  session_expires: 30m
  min_se: 120s
  timers: {t1: 250ms, t2: 2s, t4: 3s}
  dns_servers: [192.0.2.53]
""").replace("  registrar: 127.0.0.1:5060         # registrar and outbound proxy\n", "")
    sip = config.loads(text, "c.yaml", env={"STATE_DIRECTORY": "/var/lib/bridge"}).sip
    assert (sip.registrar_host, sip.registrar_port) == ("pbx.example.com", None)     # SRV decides the port
    assert sip.trusted_peers == ("192.0.2.7", "10.0.0.0/8") and sip.untrusted == "drop"
    assert sip.media_networks == ("10.0.20.0/24",) and sip.media_timeout == 0
    assert (sip.session_expires, sip.min_se, sip.t1, sip.t2, sip.t4) == (1800, 120, 0.25, 2.0, 3.0)
    assert sip.dns_servers == [("192.0.2.53", 53)] and sip.journal == "/var/lib/bridge/sip-dialogs.jsonl"


@pytest.mark.parametrize("key,value,message", [
    ("trusted_peers", "[10.0.0.300]", "is not an IP address or CIDR network"),
    ("untrusted", "ignore", "must be reject (403) or drop"),
    ("media_networks", "10.0.0.0/8", "must be a list"),
    ("session_expires", "30s", "must be at least sip.min_se"),
    ("min_se", "30s", "must be at least 90s"),
    ("timers", "{t1: 2s, t2: 1s}", "must not be shorter than t1"),
    ("timers", "[1s, 2s]", "must be a mapping"),          # a list for a section: an error, not a traceback
    ("registrar", "pbx_example:5060:1", "is not"),
    ("dns_servers", "[dns.example.com]", "is not host:port"),
])
def test_sip_key_errors_name_the_key(key, value, message):
    text = (ROOT / "config.yaml").read_text().replace("  ring_timeout: 30s\n", f"  ring_timeout: 30s\n  {key}: {value}\n")
    if key == "registrar":
        text = text.replace("  registrar: 127.0.0.1:5060         # registrar and outbound proxy\n", "")
    with pytest.raises(config.ConfigError) as err:
        config.loads(text, "c.yaml", env={})
    assert any(f"sip.{key}" in e and message in e for e in err.value.errors), err.value.errors


@pytest.mark.parametrize("transfer,message", [
    ("[{name: t, match: {by: '2001'}}]", "routes.transfer[0].match.target: is required"),
    ("[{name: t, match: {target: '('}}]", "routes.transfer[0].match.target: bad regular expression"),
    ("[{name: t, match: {target: '2.*'}, via: pbx}]", "routes.transfer[0].via: unknown key"),
    ("{name: t}", "routes.transfer: must be a list of transfer routes"),
])
def test_transfer_route_errors_name_the_key(transfer, message):
    text = (ROOT / "config.yaml").read_text()
    start = text.index("  transfer:")
    end = text.index("\n\n", start)
    text = text[:start] + f"  transfer: {transfer}" + text[end:]
    with pytest.raises(config.ConfigError) as err:
        config.loads(text, "c.yaml", env={})
    assert any(message in e for e in err.value.errors), err.value.errors


def test_transfer_routes_deny_by_default_and_match_target_and_transferor():
    router = config.load(ROOT / "config.yaml", env={}).router
    assert str(router.route_transfer("2002", "2001")) == "transfer route desk-to-desk: call 2002"
    assert "denied" in str(router.route_transfer("9011", "2001"))          # an outside line: no
    assert "denied" in str(router.route_transfer("2002", "7001"))          # not a desk phone transferring
    router.transfer.clear()
    assert "denied" in str(router.route_transfer("2002", "2001"))


@pytest.mark.parametrize("page", sorted((ROOT / "docs" / "pbx").glob("*.md")), ids=lambda p: p.stem)
def test_the_pbx_pages_sip_sections_are_valid_config(page):
    import yaml
    blocks = re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S)
    if page.stem == "README":
        assert blocks == []
        return
    assert blocks, page
    sample = yaml.safe_load((ROOT / "config.yaml").read_text())
    for block in blocks:
        sample["sip"] = yaml.safe_load(block)["sip"]
        sample["sip"].pop("password_env")
        sample["sip"]["password"] = "x"
        config.loads(yaml.safe_dump(sample), page.name, env={})      # raises ConfigError on any bad key


# --- the network keys: ICE servers, public address, TLS, CAs, secrets in files ----------------------

NETWORK = """\
platform:
  listen: 127.0.0.1:8443
  tls: {{cert: {cert}, key: {key}}}
  callback_ca: {ca}
  services:
    demo-app: {{api_key: k, api_secret_file: "${{CREDENTIALS_DIRECTORY}}/app-secret"}}
webrtc:
  public_address: 203.0.113.7
  ice_servers:
    - urls: stun:stun.example.com:3478
    - urls: ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349?transport=tcp"]
      auth_secret_env: TURN_SECRET
      ttl: 30m
    - urls: [turn:backup.example.com]
      username: office
      credential_file: turn-password
"""


def test_network_keys(tmp_path):
    from testbed.certs import make_ca_and_server
    pki = make_ca_and_server(tmp_path / "pki", ["bridge.test"], ["127.0.0.1"])
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "app-secret").write_text("a" * 40 + "\n")
    (tmp_path / "turn-password").write_text("static-turn-password\n")
    path = tmp_path / "bridge.yaml"
    path.write_text(NETWORK.format(cert=pki.cert, key=pki.key, ca=pki.ca))
    cfg = config.load(path, env={"CREDENTIALS_DIRECTORY": str(creds), "TURN_SECRET": "t" * 32})
    assert cfg.platform.public_url == "https://127.0.0.1:8443"            # tls: https by default
    assert cfg.platform.ws_url == "wss://127.0.0.1:8443/v1/ws"
    assert cfg.platform.tls == config.TlsFiles(str(pki.cert), str(pki.key))
    assert cfg.platform.services["demo-app"].api_secret == "a" * 40       # one trailing newline dropped
    assert cfg.webrtc.public_address == "203.0.113.7"
    stun, rest, static = cfg.webrtc.ice_servers
    assert stun.urls == ("stun:stun.example.com:3478",) and stun.for_user("alice@app") == {
        "urls": ["stun:stun.example.com:3478"]}
    minted = rest.for_user("alice@app", now=1000)
    assert minted["username"] == f"{1000 + 1800}:alice@app" and rest.ttl == 1800
    assert static.for_user("bob@app") == {"urls": ["turn:backup.example.com"], "username": "office",
                                          "credential": "static-turn-password"}   # relative: the config's folder
    assert {(s.keypath, s.source) for s in cfg.secrets} >= {
        ("platform.services.demo-app.api_secret", "file"), ("webrtc.ice_servers[1].auth_secret", "env"),
        ("webrtc.ice_servers[2].credential", "file")}
    assert "t" * 32 not in repr(cfg) and "static-turn-password" not in repr(cfg)


BAD_NETWORK = """\
platform:
  tls: {cert: /nonexistent/cert.pem, key: /nonexistent/key.pem}
  callback_ca: /nonexistent/ca.pem
  services:
    demo-app: {api_key: k, api_secret_file: "${CREDENTIALS_DIRECTORY}/app-secret"}
    other-app: {api_key: k2, api_secret_file: missing-secret, api_secret_env: X}
webrtc:
  public_address: "2001:db8::1"
  ice_servers:
    - urls: http://turn.example.com
    - urls: [turn:turn.example.com]
    - urls: [stun:stun.example.com]
      username: u
      credential: c
    - urls: [turn:turn.example.com]
      auth_secret: s
      username: u
    - urls: "stun:stun.example.com?transport=udp"
"""


def test_network_key_errors_name_file_line_and_key():
    with pytest.raises(config.ConfigError) as exc:
        config.loads(BAD_NETWORK, "net.yaml", env={})
    text = "\n".join(exc.value.errors)
    for line, key, words in [
        (2, "platform.tls", "cannot read /nonexistent/cert.pem: No such file or directory"),
        (3, "platform.callback_ca", "cannot read CA file /nonexistent/ca.pem"),
        (5, "platform.services.demo-app.api_secret_file", "names $CREDENTIALS_DIRECTORY, which is not set"),
        (6, "platform.services.other-app.api_secret_file", "give api_secret_env or api_secret_file, not both"),
        (8, "webrtc.public_address", "must be an IPv4 address"),
        (10, "webrtc.ice_servers[0].urls", "is not a stun:, stuns:, turn: or turns: URL"),
        (11, "webrtc.ice_servers[1]", "a turn: server needs credentials"),
        (12, "webrtc.ice_servers[2]", "credentials are for turn: URLs only"),
        (16, "webrtc.ice_servers[3]", "not both"),
        (18, "webrtc.ice_servers[4].urls", "a STUN URL takes no transport"),
    ]:
        assert any(e.startswith(f"net.yaml:{line}: {key}: ") and words in e for e in exc.value.errors), \
            (line, key, text)


def test_tls_key_that_does_not_match_its_certificate(tmp_path):
    from testbed.certs import make_ca_and_server
    one = make_ca_and_server(tmp_path / "one", ["a.test"], [])
    two = make_ca_and_server(tmp_path / "two", ["b.test"], [])
    text = f"platform:\n  tls:\n    cert: {one.cert}\n    key: {two.key}\n  services: {{}}\n"
    with pytest.raises(config.ConfigError) as exc:
        config.loads(text, "t.yaml", env={})
    assert any(e.startswith("t.yaml:3: platform.tls: certificate ") and "do not make a usable pair" in e
               for e in exc.value.errors), exc.value.errors
