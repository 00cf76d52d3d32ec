"""Usage reports: records grouped by user, label, region, node, transport or day.

Each group gives what relaying costs: bytes each way (and GB), allocation-minutes, the peak of
concurrent allocations, each client transport's share of the bytes, and the money at a price
per GB (relayed bytes both ways, as transit is billed).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from iceward.units import GB, parse_duration

By = Literal["user", "label", "region", "node", "transport", "day"]
BY_CHOICES: tuple[str, ...] = ("user", "label", "region", "node", "transport", "day")


class Row(Protocol):
    allocation: str
    node: str
    region: str
    user: str
    label: str | None
    transport: str
    period_start: float
    period_end: float
    bytes_to_peer: int
    bytes_to_client: int
    packets_to_peer: int
    packets_to_client: int


def _key(row: Row, by: str) -> str:
    if by == "day":
        return dt.datetime.fromtimestamp(row.period_end, dt.UTC).date().isoformat()
    value = getattr(row, by)
    return str(value) if value else ""


@dataclass(slots=True)
class _Group:
    bytes_to_peer: int = 0
    bytes_to_client: int = 0
    packets_to_peer: int = 0
    packets_to_client: int = 0
    seconds: float = 0.0
    #: Money at the prices given; None when some bytes have no price.
    cost: float | None = 0.0
    by_transport: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: allocation -> (first period start, last period end) within the group.
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)


def peak_concurrent(spans: list[tuple[float, float]]) -> int:
    """Most spans open at one instant (a span ending as another starts does not overlap it)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = open_now = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak


def summarize(
    rows: list[Row],
    by: str,
    since: float,
    until: float,
    price_per_gb: float | None = None,
    region_prices: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The report over ``rows`` (records overlapping [since, until), Unix times). Bytes are
    priced at their region's price, else ``price_per_gb``."""
    groups: dict[str, _Group] = defaultdict(_Group)
    prices = region_prices or {}
    for row in rows:
        g = groups[_key(row, by)]
        price = prices.get(row.region, price_per_gb)
        if price is None or g.cost is None:
            g.cost = None
        else:
            g.cost += (row.bytes_to_peer + row.bytes_to_client) / GB * price
        g.bytes_to_peer += row.bytes_to_peer
        g.bytes_to_client += row.bytes_to_client
        g.packets_to_peer += row.packets_to_peer
        g.packets_to_client += row.packets_to_client
        g.seconds += max(0.0, min(row.period_end, until) - max(row.period_start, since))
        g.by_transport[row.transport] += row.bytes_to_peer + row.bytes_to_client
        start, end = g.spans.get(row.allocation, (row.period_start, row.period_end))
        g.spans[row.allocation] = (min(start, row.period_start), max(end, row.period_end))
    priced = price_per_gb is not None or bool(prices)
    out = [_group_doc(by, key, g, priced) for key, g in sorted(groups.items())]
    total = _Group()
    for g in groups.values():
        total.bytes_to_peer += g.bytes_to_peer
        total.bytes_to_client += g.bytes_to_client
        total.packets_to_peer += g.packets_to_peer
        total.packets_to_client += g.packets_to_client
        total.seconds += g.seconds
        total.cost = None if total.cost is None or g.cost is None else total.cost + g.cost
        for t, n in g.by_transport.items():
            total.by_transport[t] += n
        total.spans.update(g.spans)
    return {
        "since": dt.datetime.fromtimestamp(since, dt.UTC).isoformat(),
        "until": dt.datetime.fromtimestamp(until, dt.UTC).isoformat(),
        "by": by,
        "pricePerGb": price_per_gb,
        "regionPrices": prices or None,
        "groups": out,
        "total": _group_doc(by, "", total, priced),
    }


def _group_doc(by: str, key: str, g: _Group, priced: bool) -> dict[str, Any]:
    both = g.bytes_to_peer + g.bytes_to_client
    return {
        by: key or None,
        "bytesToPeer": g.bytes_to_peer,
        "bytesToClient": g.bytes_to_client,
        "packetsToPeer": g.packets_to_peer,
        "packetsToClient": g.packets_to_client,
        "gbToPeer": round(g.bytes_to_peer / GB, 6),
        "gbToClient": round(g.bytes_to_client / GB, 6),
        "allocations": len(g.spans),
        "allocationMinutes": round(g.seconds / 60, 3),
        "peakConcurrent": peak_concurrent(list(g.spans.values())),
        "transportShare": {
            t: round(n / both, 4) if both else 0.0 for t, n in sorted(g.by_transport.items())
        },
        "cost": round(g.cost, 4) if priced and g.cost is not None else None,
    }


def parse_when(text: str, now: float) -> float:
    """A Unix time from ``30d`` (that long before ``now``), ``2026-11-01`` or an ISO date and
    time (UTC unless it says otherwise); ValueError naming the text."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration ago (30d, 12h) nor a date (2026-11-01)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def window(since: str, until: str | None, now: float) -> tuple[float, float]:
    """[since, until) as Unix times; ValueError when a bound is unreadable or they are crossed."""
    start = parse_when(since, now)
    end = parse_when(until, now) if until else now
    if end <= start:
        raise ValueError(f"until ({until}) is not after since ({since})")
    return start, end
