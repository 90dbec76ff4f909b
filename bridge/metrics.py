"""Prometheus metrics of the daemon (served at /metrics)."""

from __future__ import annotations

from collections import Counter as Tally
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


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
        self.media = Counter("bridge_media", "Bridged calls by media path: relay (packets passed on as "
                             "they are) or transcode (decoded and encoded again: Opus, G.711 <-> G.722, "
                             "or bridge.media transcode)", ["mode"], registry=r)
        self.loop_lag = Histogram(
            "bridge_loop_lag_seconds", "How late the event loop ran a 50 ms timer: every packet and "
            "SIP message waited as long", buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r)
        self.gc_pause = Histogram(
            "bridge_gc_pause_seconds", "Python's cyclic garbage collector: how long each collection stopped "
            "the process", ["generation"], buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.5, 1),
            registry=r)
        self.notifications = Counter("bridge_notifications", "Notifications received by outcome",
                                     ["outcome"], registry=r)
        self.sip_registered = Gauge("bridge_sip_registered", "1 while the SIP account is registered", registry=r)
        self.platform_calls = Gauge("bridge_platform_active_calls", "Calls on the embedded platform", registry=r)
        # what every failure path must give back (the hostile-input tests read these)
        self.rtp_ports = Gauge("bridge_rtp_ports_in_use", "RTP ports (and sockets) held by SIP calls", registry=r)
        self.sip_calls = Gauge("bridge_sip_calls", "SIP calls (dialogs and calls being set up) held", registry=r)
        self.sip_transactions = Gauge("bridge_sip_transactions", "SIP transactions held", ["side"], registry=r)
        self.sip_connections = Gauge("bridge_sip_connections", "Open SIP TCP/TLS connections (0 over UDP)",
                                     registry=r)
        self.tasks = Gauge("bridge_asyncio_tasks", "asyncio tasks alive in the daemon", registry=r)
        ProcessCollector(registry=r)     # process_open_fds, process_resident_memory_bytes, ...
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
        self._cluster: tuple[Gauge, ...] | None = None      # registered only on a node of a cluster

    def cluster(self, member) -> None:
        """The cluster gauges, from this node's last heartbeat (`bridge.cluster.membership`)."""
        if self._cluster is None:
            r = self.registry
            self._cluster = (
                Gauge("bridge_cluster_up", "1 while this node holds its lease in Redis", registry=r),
                Gauge("bridge_cluster_nodes", "Live nodes of the cluster (leases held)", registry=r),
                Gauge("bridge_cluster_calls", "Bridged calls across the cluster (the bridge.max_calls count)",
                      registry=r),
                Gauge("bridge_cluster_reaped_nodes", "Dead nodes whose calls this node ended", registry=r),
                Gauge("bridge_cluster_reaped_calls", "SIP calls of dead nodes this node ended", registry=r))
        up, nodes, calls, reaped, ended = self._cluster
        health = member.health()
        up.set(1 if member.node.healthy else 0)
        nodes.set(len(health["live_nodes"]))
        calls.set(member.cluster_calls)
        reaped.set(health["reaped_nodes"])
        ended.set(health["dead_node_calls_ended"])

    def watch_sip(self, counters: Tally[str]) -> None:
        """Export the SIP user agent's own tallies (refused, malformed, media timeouts...)."""
        self.registry.register(_SipCollector(counters))

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _SipCollector(Collector):
    """bridge_sip_events_total{event}: what the SIP leg refused or noticed, read at scrape time."""

    def __init__(self, counters: Tally[str]) -> None:
        self.counters = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "bridge_sip_events", "SIP leg events: untrusted (out-of-dialog request from a source that is not "
            "the PBX or a trusted peer), foreign_source (in-dialog request or ACK from elsewhere), malformed, "
            "media_policy (SDP address refused), refused_invites, transaction_limit, media_timeouts, "
            "stray_responses, rtp_foreign (RTP packets from unlatched sources), srtp_auth_failed (SRTP packets that "
            "did not authenticate), and over TCP/TLS: stream_malformed, message_timeout, connections_refused, "
            "tls_handshake, idle_closed, connect_failed, flow_failed", labels=["event"])
        for event, count in sorted(self.counters.items()):
            family.add_metric([event], count)
        yield family
