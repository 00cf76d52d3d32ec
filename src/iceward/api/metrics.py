"""Prometheus metrics, read from the live server at scrape time.

Relayed bytes and packets come from the per-allocation counters the forwarding path increments,
plus the totals of allocations that already ended: they move while a call is in progress, not
only when its allocation ends. No user names as labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from iceward.net.service import TurnService

_FAMILIES = {1: "ipv4", 2: "ipv6"}

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series are clutter


class ServerCollector(Collector):
    def __init__(self, service: TurnService) -> None:
        self.service = service

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        service = self.service
        core = service.core
        if core is None:
            return
        bytes_total = CounterMetricFamily(
            "iceward_relayed_bytes", "Payload bytes relayed", labels=["direction", "transport"]
        )
        packets_total = CounterMetricFamily(
            "iceward_relayed_packets", "Packets relayed", labels=["direction", "transport"]
        )
        traffic = service.traffic_totals()
        for (direction, transport), (packets, nbytes) in sorted(traffic.items()):
            bytes_total.add_metric([direction, transport], nbytes)
            packets_total.add_metric([direction, transport], packets)
        yield bytes_total
        yield packets_total

        active = GaugeMetricFamily(
            "iceward_allocations_active", "Allocations alive", labels=["transport", "family"]
        )
        counts: dict[tuple[str, str], int] = {}
        for alloc in core.allocations:
            for family in alloc.relays:
                key = (alloc.five_tuple.transport, _FAMILIES.get(family, str(family)))
                counts[key] = counts.get(key, 0) + 1
        for key, n in sorted(counts.items()):
            active.add_metric(list(key), n)
        yield active

        created = CounterMetricFamily(
            "iceward_allocations_created", "Allocations created", labels=["transport"]
        )
        for transport, n in sorted(service.created_by_transport.items()):
            created.add_metric([transport], n)
        yield created

        c = core.counters
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
        quota.add_metric(["user"], c.get("error.486", 0))
        quota.add_metric(["capacity"], c.get("error.508", 0))
        yield from (requests, errors, auth, refused, drops, binding, quota)

        ports = GaugeMetricFamily("iceward_relay_ports", "Relay port pool", labels=["state"])
        in_use, size = service.relay_port_usage()
        ports.add_metric(["in_use"], in_use)
        ports.add_metric(["free"], max(0, size - in_use))
        yield ports


def make_registry(service: TurnService) -> tuple[CollectorRegistry, Counter]:
    """A registry of the server's metrics and the API request counter the app updates."""
    registry = CollectorRegistry()
    registry.register(ServerCollector(service))
    api_requests = Counter(
        "iceward_api_requests",
        "HTTP API requests",
        ["route", "status"],
        registry=registry,
    )
    return registry, api_requests
