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
class FleetFigures:
    #: Fresh nodes by (region, state).
    nodes: dict[tuple[str, str], int]
    redis_up: bool
    heartbeats: dict[str, int]
    placements: dict[str, int]


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
        #: Answers by where their first node is: in the region asked, elsewhere (a fallback),
        #: or this node alone while Redis is down.
        self.placements = {"region": 0, "elsewhere": 0, "local": 0}

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
        if not nodes:
            nodes = [self.member.me()]
        where = "region" if nodes[0].region == region else "elsewhere"
        if not self.member.connected:
            where = "local"
        self.placements[where] = self.placements.get(where, 0) + 1
        return Placement(region, source, nodes)

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

    def figures(self) -> FleetFigures:
        """What ``/metrics`` shows of the fleet."""
        now = time.time()
        nodes: dict[tuple[str, str], int] = {}
        for node in self.member.nodes():
            if node.fresh(now):
                key = (node.region, node.state)
                nodes[key] = nodes.get(key, 0) + 1
        return FleetFigures(
            nodes=nodes,
            redis_up=self.member.connected,
            heartbeats=dict(self.member.beats),
            placements=dict(self.placements),
        )
