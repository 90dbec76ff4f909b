"""Prometheus metrics of the daemon (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """One registry per daemon, so tests and reloads never share state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_calls = Gauge("bridge_active_calls", "Bridged calls in progress", ["direction"], registry=r)
        self.calls = Counter("bridge_calls", "Bridged calls by how they ended", ["direction", "result"], registry=r)
        self.setup_seconds = Histogram(
            "bridge_setup_seconds", "Setup steps: notification->INVITE, INVITE->answer, answer->connected",
            ["step"], buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.frames = Counter("bridge_frames", "Frames per direction and outcome (relayed: packets passed "
                              "on; late: dropped as older than one already sent)", ["direction", "outcome"],
                              registry=r)
        self.media = Counter("bridge_media", "Bridged calls by media path: relay (G.711 packets passed on) "
                             "or transcode (decoded and re-clocked)", ["mode"], registry=r)
        self.loop_lag = Histogram(
            "bridge_loop_lag_seconds", "How late the event loop ran a 50 ms timer: every packet and "
            "SIP message waited as long", buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r)
        self.gc_pause = Histogram(
            "bridge_gc_pause_seconds", "Python's cyclic garbage collector: how long each collection stopped "
            "the process", ["generation"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=r)
        self.notifications = Counter("bridge_notifications", "Notifications received by outcome",
                                     ["outcome"], registry=r)
        self.sip_registered = Gauge("bridge_sip_registered", "1 while the SIP account is registered", registry=r)
        self.platform_calls = Gauge("bridge_platform_active_calls", "Calls on the embedded platform", registry=r)
        self.http_refused = Counter(
            "bridge_http_refused", "HTTP requests and connections refused before a handler took them, by "
            "listener and reason (connection caps, header/body timeouts, malformed HTTP, too large, "
            "unexpected errors)", ["listener", "reason"], registry=r)
        self.platform_task_errors = Counter(
            "bridge_platform_task_errors", "Platform background tasks that failed unexpectedly (each is logged "
            "with its call's sid)", ["task"], registry=r)
        self.platform_callback_failures = Counter(
            "bridge_platform_callback_failures", "Callbacks given up on: push (the call ends PUSH_ERROR), "
            "call_event (lost after its retries)", ["kind"], registry=r)
        self.http_connections = Gauge("bridge_http_connections", "Open HTTP connections per listener",
                                      ["listener"], registry=r)

    def text(self) -> bytes:
        return generate_latest(self.registry)
