"""The `bridge` command: run the daemon, check config, and be an app user from a terminal."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import time

from . import __version__, config, ice, protocol, token

DEFAULT_CONFIG = os.environ.get("BRIDGE_CONFIG", "config.yaml")
LOG_LEVELS = ("debug", "info", "warning", "error")


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def _user_at_service(text: str) -> tuple[str, str]:
    user, sep, service = text.partition("@")
    if not sep or not protocol.USER_ID.fullmatch(user) or not protocol.SERVICE_ID.fullmatch(service):
        raise argparse.ArgumentTypeError(f"{text!r} is not USER@SERVICE")
    return user, service


def _worker(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N")
    return int(k), int(n)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help)
        p.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                       help=f"config file (default: {DEFAULT_CONFIG}; env BRIDGE_CONFIG)")
        p.add_argument("--log-level", choices=LOG_LEVELS,
                       help="log this much (default: the config's log_level for run, platform and demo, "
                            "warning for the others)")
        return p

    def sip_trace(p: argparse.ArgumentParser) -> None:
        p.add_argument("--sip-trace", action="store_true",
                       help="log every SIP message sent and received (as the config key sip.trace: true)")

    p = command("run", "run the daemon (embedded platform and bridge) in the foreground")
    sip_trace(p)
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N nodes of the config's cluster, one process each (ports + 0 .. N-1; see "
                        "bridge/workers.py)")
    p.add_argument("--worker", type=_worker, help=argparse.SUPPRESS)    # K/N: one of them (set by --workers)
    command("platform", "run only the call platform")
    from . import demo, deskphone
    p = command("demo", "run a whole local system: a Kamailio PBX, a baresip desk phone 2001 and the daemon",
                "Run a whole local system: a Kamailio PBX, a baresip desk phone 2001 that answers by itself "
                "(it plays 700 Hz and records what it hears) and the daemon. Then, in another terminal: "
                "app -> desk phone: `bridge dial --from alice@demo-app --to desk-2001@demo-desk --tone 1000`; "
                "desk phone -> app: `bridge answer --as agent-001@demo-app` and `bridge phone 2001 dial 7001` "
                "(or type `dial 7001` on the demo's console). Ctrl-C drains the calls and stops everything; "
                "a second Ctrl-C ends the calls at once.")
    demo.add_arguments(p)
    p = command("phone", "have the running demo's desk phone dial a number (7001: app user agent-001) or hang up")
    deskphone.add_arguments(p)
    p = command("doctor", "check a setup: the config, the PBX (OPTIONS, registration), RTP ports, the platform "
                          "URL, ICE addresses; print what to fix (exit 1 on any failure)")
    sip_trace(p)
    command("check-config", "validate the config file and print every error with file, line and key")

    p = command("cluster", "the cluster in Redis (`cluster:` section): `status` lists the nodes, their leases "
                           "and calls, and the calls counted against each limit")
    p.add_argument("action", choices=["status"])

    p = command("route", "print the routing decision for a call, without calling")
    p.add_argument("--from", dest="caller", type=_user_at_service, metavar="USER@SERVICE",
                   help="app caller (with --to: app -> desk phone)")
    p.add_argument("--to", dest="callee", type=_user_at_service, metavar="USER@SERVICE")
    p.add_argument("--dialed", help="number a desk phone dialed (desk phone -> app)")
    p.add_argument("--caller", dest="caller_number", help="the desk phone's number (with --dialed)")

    p = command("token", "print a development access token from the config's API secret")
    p.add_argument("--service", required=True)
    p.add_argument("--user", required=True)

    def app_user(p: argparse.ArgumentParser) -> None:
        p.add_argument("--platform", help="platform URL (default: platform.public_url of the config)")
        p.add_argument("--ca", metavar="PEM", help="CA bundle for a wss:// platform (default: bridge.platform_ca)")
        p.add_argument("--relay", action="store_true", help="use TURN relay candidates only (checks TURN)")
        source = p.add_mutually_exclusive_group()
        source.add_argument("--play", metavar="WAV", help="send this 16-bit WAV file once answered")
        source.add_argument("--tone", metavar="HZ", type=float, help="send a sine tone of this frequency")
        p.add_argument("--record", metavar="WAV", help="write what the peer sends to this WAV file")
        p.add_argument("--seconds", type=float, default=10.0, help="hang up after this long connected")

    p = command("dial", "call as an app user: play, record, hang up, print how it ended")
    p.add_argument("--from", dest="caller", required=True, type=_user_at_service, metavar="USER@SERVICE")
    p.add_argument("--to", dest="callee", required=True, type=_user_at_service, metavar="USER@SERVICE")
    p.add_argument("--app-server-data", help="app_server_data for the callee (<= 4096 bytes)")
    p.add_argument("--dtmf", help="send these DTMF digits once connected")
    app_user(p)

    p = command("loadtest", "N concurrent app -> desk phone calls through a running bridge: a report")
    from . import loadtest
    loadtest.add_arguments(p)

    p = command("answer", "wait for calls as an app user (embedded push), accept, play, record")
    p.add_argument("--as", dest="me", required=True, type=_user_at_service, metavar="USER@SERVICE")
    p.add_argument("--calls", type=int, default=1, help="answer this many calls, then exit (default 1)")
    p.add_argument("--decline", action="store_true", help="decline instead of accepting")
    p.add_argument("--wait", type=float, default=None, help="give up after this many seconds without a call")
    app_user(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"bridge: configuration errors:\n{exc}", file=sys.stderr)
        return 2
    if getattr(args, "sip_trace", False) and cfg.sip is not None:
        cfg = dataclasses.replace(cfg, sip=dataclasses.replace(cfg.sip, trace=True))
    quiet = "critical" if args.command == "doctor" else "warning"     # doctor prints what the logs would say
    _logging(args.log_level or (cfg.log_level if args.command in ("run", "platform", "demo") else quiet),
             sip_trace=bool(cfg.sip and cfg.sip.trace))
    try:
        if args.command == "check-config":
            from . import production
            exposed = production.exposure(cfg)
            refused = production.problems(cfg) if exposed else []
            for line in production.unset_variables(cfg):
                print(f"warning: {line}", file=sys.stderr)
            if refused:
                print(f"{args.config}: `bridge run` would refuse it: reachable beyond loopback "
                      f"({', '.join(exposed)}) with development settings:\n  " + "\n  ".join(refused),
                      file=sys.stderr)
                return 1
            print(f"{args.config}: OK ({len(cfg.platform.services)} services, {len(cfg.router.to_sip)} "
                  f"app->SIP, {len(cfg.router.to_app)} SIP->app and {len(cfg.router.transfer)} transfer routes)")
            return 0
        if args.command == "run" and (args.workers != 1 or args.worker):
            from . import workers
            n = args.worker[1] if args.worker else args.workers
            refused = workers.problems(cfg, n) if n > 1 else ["--workers takes 2 or more"]
            if refused:
                print(f"bridge: {args.config}: cannot run {n} workers:\n  " + "\n  ".join(refused), file=sys.stderr)
                return 2
            if not args.worker:
                return workers.run(args.config, n, args.log_level, args.sip_trace)
            cfg = workers.worker_config(cfg, *args.worker)
        if args.command in ("run", "platform"):
            from . import daemon
            if args.command == "platform":
                cfg = dataclasses.replace(cfg, bridge=None, platform=dataclasses.replace(cfg.platform, embedded=True))
            daemon.run(cfg)
            return 0
        if args.command == "demo":
            from . import demo
            return demo.run(cfg, args)
        if args.command == "phone":
            return _phone(cfg, args)
        if args.command == "doctor":
            from . import doctor
            return asyncio.run(doctor.run(cfg))
        if args.command == "route":
            return _route(cfg, args)
        if args.command == "cluster":
            from .cluster import status
            return asyncio.run(status.run(cfg))
        if args.command == "token":
            print(_token(cfg, args.service, args.user))
            return 0
        ice.use_host_addresses(cfg.webrtc.ice_addresses)
        if args.command == "loadtest":
            import uvloop

            from . import loadtest
            return uvloop.run(loadtest.main(args, cfg))      # the same loop as the daemon's
        from . import softphone
        runner = softphone.dial if args.command == "dial" else softphone.answer
        return asyncio.run(runner(args, cfg, lambda s, u: _token(cfg, s, u)))
    except UsageError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _phone(cfg: config.Config, args: argparse.Namespace) -> int:
    from . import demo, deskphone
    state = demo.read_state(cfg.path)
    if state is None or "phone" not in state:
        raise UsageError(f"no `bridge demo -c {cfg.path}` is running: start it first (it runs the desk phone)")
    if args.ext != state["phone"]["ext"]:
        raise UsageError(f"the demo runs desk phone {state['phone']['ext']}, not {args.ext}")
    try:
        return asyncio.run(deskphone.run(args, tuple(state["phone"]["ctrl"]), tuple(state["pbx"])))
    except deskphone.PhoneError as exc:
        print(f"bridge phone: {exc}", file=sys.stderr)
        return 1


def _route(cfg: config.Config, args: argparse.Namespace) -> int:
    from .routing import Denied
    if (args.caller or args.callee) and (args.dialed or args.caller_number):
        raise UsageError("--from/--to (app -> desk phone) and --dialed/--caller (desk phone -> app) "
                         "ask about different directions: give one pair")
    if bool(args.caller) != bool(args.callee):
        raise UsageError("give both --from and --to (app -> desk phone)")
    if args.caller and args.callee:
        decision = cfg.router.route_to_sip(args.caller[1], args.caller[0], args.callee[1], args.callee[0])
    elif args.dialed:
        decision = cfg.router.route_to_app(args.dialed, args.caller_number)
    else:
        raise UsageError("give --from and --to (app -> desk phone) or --dialed [--caller] (desk phone -> app)")
    print(decision)
    return 1 if isinstance(decision, Denied) else 0


def _token(cfg: config.Config, service_id: str, user_id: str) -> str:
    service = cfg.platform.services.get(service_id)
    if service is None:
        raise UsageError(f"service {service_id!r} is not in {cfg.path} (known: "
                         f"{', '.join(cfg.platform.services)})")
    if not protocol.USER_ID.fullmatch(user_id):
        raise UsageError(f"user id {user_id!r} must match [a-zA-Z0-9_-]{{1,64}}")
    return token.issue(token.ServiceKey(service.id, service.api_key, service.api_secret), user_id)


def _logging(level: str, sip_trace: bool = False) -> None:
    journald = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s" if journald else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(stream=sys.stdout, level=level.upper(), format=fmt)
    logging.Formatter.converter = time.gmtime
    if level != "debug":
        for noisy in ("aioice", "aiortc", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if sip_trace:                                   # asked for: shown whatever the level
        logging.getLogger("bridge.sip.trace").setLevel(logging.INFO)
