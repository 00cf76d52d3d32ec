"""Prometheus metrics, read from the live server at scrape time.

Relayed bytes and packets come from the per-allocation counters the forwarding path increments,
plus the totals of allocations that already ended: they move while a call is in progress, not
only when its allocation ends. With several workers the figures are their sum. No user names
as labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from iceward.diagnose.findings import CODES
from iceward.fleet.issuer import FleetFigures
from iceward.snapshot import LEVELS, USAGE_QUEUED, Snapshot

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series are clutter


class ServerCollector(Collector):
    """Yields the metrics of the snapshot the endpoint took just before (see :func:`scrape`)."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        snap = self.snapshot
        if snap is None:
            return
        bytes_total = CounterMetricFamily(
            "iceward_relayed_bytes", "Payload bytes relayed", labels=["direction", "transport"]
        )
        packets_total = CounterMetricFamily(
            "iceward_relayed_packets", "Packets relayed", labels=["direction", "transport"]
        )
        for (direction, transport), (packets, nbytes) in sorted(snap.traffic.items()):
            bytes_total.add_metric([direction, transport], nbytes)
            packets_total.add_metric([direction, transport], packets)
        yield bytes_total
        yield packets_total

        active = GaugeMetricFamily(
            "iceward_allocations_active", "Allocations alive", labels=["transport", "family"]
        )
        for key, n in sorted(snap.active.items()):
            active.add_metric(list(key), n)
        yield active

        created = CounterMetricFamily(
            "iceward_allocations_created", "Allocations created", labels=["transport"]
        )
        for transport, n in sorted(snap.created.items()):
            created.add_metric([transport], n)
        yield created

        c = snap.counters
        requests = CounterMetricFamily(
            "iceward_stun_requests", "STUN/TURN requests", labels=["method"]
        )
        errors = CounterMetricFamily("iceward_stun_errors", "Error responses", labels=["code"])
        auth = CounterMetricFamily(
            "iceward_auth_failures", "Authentication failures", labels=["reason"]
        )
        refused = CounterMetricFamily(
            "iceward_peer_refusals", "Peers refused by the policy", labels=["reason"]
        )
        drops = CounterMetricFamily("iceward_dropped", "Messages dropped", labels=["reason"])
        for name, n in sorted(c.items()):
            kind, _, rest = name.partition(".")
            if kind == "request":
                requests.add_metric([rest], n)
            elif kind == "error":
                errors.add_metric([rest], n)
            elif kind == "auth":
                auth.add_metric([rest], n)
            elif kind == "peer" and rest.startswith("refused."):
                refused.add_metric([rest[len("refused.") :]], n)
            elif kind == "drop":
                drops.add_metric([rest], n)
        binding = CounterMetricFamily("iceward_binding_requests", "STUN Binding requests")
        binding.add_metric([], c.get("request.Binding", 0))
        quota = CounterMetricFamily(
            "iceward_quota_refusals", "Requests refused by a quota", labels=["quota"]
        )
        quota.add_metric(["user"], c.get("error.486", 0) - c.get("quota.bytes", 0))
        quota.add_metric(["bytes"], c.get("quota.bytes", 0))
        # A draining node's 508 (no alternate known) is no capacity limit: counted below.
        quota.add_metric(["capacity"], c.get("error.508", 0) - c.get("drain.refused", 0))
        drain = CounterMetricFamily(
            "iceward_drain_answers",
            "New allocations a draining node sent to an alternate (redirected) or refused",
            labels=["answer"],
        )
        drain.add_metric(["redirected"], c.get("drain.redirected", 0))
        drain.add_metric(["refused"], c.get("drain.refused", 0))
        usage = CounterMetricFamily(
            "iceward_usage_events",
            "Usage accounting: records written or dropped, store failures, quota actions",
            labels=["event"],
        )
        for name, n in sorted(c.items()):
            if name.startswith("usage.") and name not in LEVELS:
                usage.add_metric([name[len("usage.") :]], n)
        tcp = CounterMetricFamily(
            "iceward_tcp_relay_connections",
            "RFC 6062 peer connections, by event (connected, attempts, bound, refused_*, ...)",
            labels=["event"],
        )
        for name, n in sorted(c.items()):
            if name.startswith("tcp."):
                tcp.add_metric([name[len("tcp.") :]], n)
        yield from (requests, errors, auth, refused, drops, binding, quota, drain, usage, tcp)
        queued = GaugeMetricFamily(
            "iceward_usage_records_queued",
            "Usage records waiting in memory for the fleet's Redis stream",
        )
        queued.add_metric([], c.get(USAGE_QUEUED, 0))
        yield queued

        ports = GaugeMetricFamily("iceward_relay_ports", "Relay port pool", labels=["state"])
        ports.add_metric(["in_use"], snap.ports_in_use)
        ports.add_metric(["free"], max(0, snap.ports_total - snap.ports_in_use))
        yield ports

        not_after = GaugeMetricFamily(
            "iceward_tls_certificate_not_after_seconds",
            "Expiry (Unix time) of the TLS certificate served for a name",
            labels=["domain"],
        )
        for name, when in sorted(snap.certificates.items()):
            not_after.add_metric([name], when)
        yield not_after
        renewals = CounterMetricFamily(
            "iceward_acme_renewals", "ACME certificate orders, by outcome", labels=["outcome"]
        )
        for name, n in sorted(c.items()):
            if name.startswith("acme."):
                renewals.add_metric([name[len("acme.") :]], n)
        yield renewals


class FleetCollector(Collector):
    """The fleet as this node sees it (``serve --cluster``)."""

    def __init__(self, figures: Callable[[], FleetFigures]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        f = self.figures()
        nodes = GaugeMetricFamily(
            "iceward_fleet_nodes", "Nodes with a fresh heartbeat", labels=["region", "state"]
        )
        for (region, state), n in sorted(f.nodes.items()):
            nodes.add_metric([region, state], n)
        redis = GaugeMetricFamily("iceward_fleet_redis_up", "Redis answered the last heartbeat")
        redis.add_metric([], int(f.redis_up))
        beats = CounterMetricFamily(
            "iceward_fleet_heartbeats", "Heartbeats sent to Redis", labels=["result"]
        )
        for result, n in sorted(f.heartbeats.items()):
            beats.add_metric([result], n)
        placed = CounterMetricFamily(
            "iceward_fleet_placements",
            "Credential answers by where their first node is",
            labels=["where"],
        )
        for where, n in sorted(f.placements.items()):
            placed.add_metric([where], n)
        yield from (nodes, redis, beats, placed)


#: Why the HTTP API refused a request before reading its body (``iceward_http_refused_total``).
REFUSAL_REASONS = ("body_too_large", "unauthorized", "forbidden")
#: Why ``POST /api/v1/telemetry`` refused a record (``iceward_telemetry_refused_total``).
TELEMETRY_REFUSALS = (
    "rate_limited", "malformed", "credentials", "bad_token", "token_used_up", "store_busy",
)  # fmt: skip
#: Seconds buckets of ``iceward_call_time_to_connected_seconds``.
CONNECT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 40.0)


@dataclass(frozen=True, slots=True)
class ApiMetrics:
    registry: CollectorRegistry
    collector: ServerCollector
    api_requests: Counter
    http_refused: Counter
    draining: Gauge
    #: Calls reported by browsers, by outcome, path, relay protocol and cause (no ids).
    calls: Counter
    time_to_connected: Histogram
    telemetry_refused: Counter


def make_registry() -> ApiMetrics:
    """A registry of the server's metrics, its collector, and the API's own counters."""
    registry = CollectorRegistry()
    collector = ServerCollector()
    registry.register(collector)
    api_requests = Counter(
        "iceward_api_requests",
        "HTTP API requests",
        ["route", "status"],
        registry=registry,
    )
    http_refused = Counter(
        "iceward_http_refused",
        "HTTP requests refused before their body was read",
        ["reason"],
        registry=registry,
    )
    for reason in REFUSAL_REASONS:
        http_refused.labels(reason)
    draining = Gauge(
        "iceward_draining", "1 while the node drains (see POST /admin/v1/drain)", registry=registry
    )
    calls = Counter(
        "iceward_calls",
        "Calls reported by the browser SDK, judged by the analyzer's rules",
        ["outcome", "path", "relay_protocol", "cause"],
        registry=registry,
    )
    # Series at 0 from the start, so a rate sees the first failure of each cause (a series born
    # at 1 has no increase to show).
    for kind in ("connected-direct", "connected-relay"):
        calls.labels(kind, "", "", "")
    for spec in CODES.values():
        if spec.severity == "error":
            calls.labels("failed", "", "", spec.code)
    time_to_connected = Histogram(
        "iceward_call_time_to_connected_seconds",
        "From the PeerConnection's creation to ICE connected, as the browser reported it",
        ["outcome", "path", "relay_protocol"],
        buckets=CONNECT_BUCKETS,
        registry=registry,
    )
    telemetry_refused = Counter(
        "iceward_telemetry_refused",
        "Call records refused, nothing stored",
        ["reason"],
        registry=registry,
    )
    for reason in TELEMETRY_REFUSALS:
        telemetry_refused.labels(reason)
    return ApiMetrics(
        registry, collector, api_requests, http_refused, draining, calls, time_to_connected,
        telemetry_refused,
    )  # fmt: skip
