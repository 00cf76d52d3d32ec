"""The relay cost model of the field guide, before deployment: calls, bitrate, relay share.

A relayed call sends ``kbps`` each way through the relay: 2 x kbps per call, the same bytes the
usage records count for an allocation (to the peer plus to the client).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from iceward.units import GB

#: Seconds in the average month (365.25 / 12 days).
MONTH_SECONDS = 30.4375 * 86400


@dataclass(frozen=True, slots=True)
class CostEstimate:
    relayed_calls: float
    mbps_peak: float
    gb_per_month: float
    cost_per_month: float | None


def estimate(
    calls: int,
    kbps: float,
    relay_share: float,
    price_per_gb: float | None = None,
    busy_fraction: float = 1.0,
) -> CostEstimate:
    """``calls`` concurrent at peak, ``kbps`` per direction per call, ``relay_share`` of calls
    relayed (0..1), ``busy_fraction`` of the month at that peak (1: a ceiling)."""
    relayed = calls * relay_share
    mbps = relayed * kbps * 2 / 1000
    gb = mbps * 1e6 / 8 * MONTH_SECONDS * busy_fraction / GB
    cost = gb * price_per_gb if price_per_gb is not None else None
    return CostEstimate(relayed, mbps, gb, cost)


class Span(Protocol):
    period_start: float
    period_end: float
    bytes_to_peer: int
    bytes_to_client: int


@dataclass(frozen=True, slots=True)
class Measured:
    """The same figures from usage records over a window."""

    seconds: float
    gb: float
    mbps_average: float
    #: The highest sum of the records' average rates at one instant (a per-interval peak).
    mbps_peak: float
    gb_per_month: float
    cost_per_month: float | None


def measured(
    rows: list[Span], since: float, until: float, price_per_gb: float | None = None
) -> Measured:
    """Relayed GB in [since, until), its average and peak Mbps, and the month it projects to."""
    seconds = max(1.0, until - since)
    total = sum(r.bytes_to_peer + r.bytes_to_client for r in rows)
    events: list[tuple[float, float]] = []
    for r in rows:
        length = r.period_end - r.period_start
        if length > 0:
            rate = (r.bytes_to_peer + r.bytes_to_client) * 8 / length / 1e6
            events += [(r.period_start, rate), (r.period_end, -rate)]
    peak = running = 0.0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        running += step
        peak = max(peak, running)
    gb_month = total / GB * MONTH_SECONDS / seconds
    cost = gb_month * price_per_gb if price_per_gb is not None else None
    return Measured(seconds, total / GB, total * 8 / seconds / 1e6, peak, gb_month, cost)
