"""Which nodes an issuer hands out: the least-loaded serving nodes with a fresh heartbeat in
the client's region, then along the region's fallbacks, then anywhere. Pure: the fleet as last
read and the time come in, a list of nodes goes out."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence

from iceward.fleet.node import NodeInfo

#: The most nodes one answer may name (``count``).
MAX_COUNT = 4


def healthy(nodes: Iterable[NodeInfo], now: float) -> list[NodeInfo]:
    """Nodes that may be handed out: serving, heartbeat fresh."""
    return [n for n in nodes if n.state == "serving" and n.fresh(now)]


def region_order(region: str, fallback: Mapping[str, Sequence[str]]) -> list[str]:
    """``region``, then its fallbacks in order (each once)."""
    order = [region]
    for other in fallback.get(region, ()):
        if other not in order:
            order.append(other)
    return order


def choose(
    nodes: Iterable[NodeInfo],
    region: str,
    count: int,
    fallback: Mapping[str, Sequence[str]],
    now: float,
) -> list[NodeInfo]:
    """Up to ``count`` healthy nodes, best first: the region's least loaded, then its
    fallbacks', then any region's. Equally loaded nodes are taken in random order, so issuers
    spread new clients over them between two heartbeats."""
    pool = healthy(nodes, now)
    ranked = sorted(pool, key=lambda n: (n.load.rank(), random.random()))
    chosen: list[NodeInfo] = []
    for wanted in [*region_order(region, fallback), None]:
        for node in ranked:
            if len(chosen) >= count:
                return chosen
            if (wanted is None or node.region == wanted) and node not in chosen:
                chosen.append(node)
    return chosen
