"""What the credentials API asks of the fleet: which nodes a client gets (region by the
request, by its address, else this node's; least loaded; fallbacks) and what the fleet looks
like. Memory only: an issue never waits on Redis."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from iceward.fleet.choose import choose
from iceward.fleet.member import FleetMember
from iceward.fleet.node import NodeInfo
from iceward.fleet.regions import RegionResolver


@dataclass(frozen=True, slots=True)
class Placement:
    #: The region asked for (or found for the client's address).
    region: str
    #: How it was found: ``request``, ``region-map`` or ``geoip`` (the client's address), or
    #: ``node`` (this node's own region).
    source: str
    nodes: list[NodeInfo]


class FleetIssuer:
    def __init__(
        self,
        member: FleetMember,
        resolver: RegionResolver,
        fallback: Mapping[str, Sequence[str]],
    ) -> None:
        self.member = member
        self.resolver = resolver
        self.fallback = fallback

    def known(self, region: str) -> bool:
        return region in self.fallback or region in self.member.regions()

    def place(self, *, region: str | None, client_ip: str | None, count: int) -> Placement:
        """The nodes for one answer, best first; this node when no other is healthy."""
        source = "request"
        if region is None and client_ip is not None:
            region = self.resolver.region_of(client_ip, self.known)
            source = "client address"
        if region is None:
            region, source = self.member.region, "node"
        nodes = choose(self.member.nodes(), region, count, self.fallback, time.time())
        return Placement(region, source, nodes or [self.member.me()])

    def fleet(self) -> dict[str, Any]:
        """``GET /admin/v1/fleet``: every node as last read, with its heartbeat's age."""
        now = time.time()
        nodes = []
        for node in self.member.nodes():
            doc = node.to_json()
            del doc["instance"], doc["quota"]
            doc["age"] = round(node.age(now), 2)
            doc["fresh"] = node.fresh(now)
            doc["self"] = node.id == self.member.node_id
            nodes.append(doc)
        return {**self.member.status(), "nodes": nodes}

    def status(self) -> dict[str, Any]:
        return self.member.status()
