"""The relay cost model of the field guide, before deployment: calls, bitrate, relay share.

A relayed call sends ``kbps`` each way through the relay: 2 x kbps per call, the same bytes the
usage records count for an allocation (to the peer plus to the client).
"""

from __future__ import annotations

from dataclasses import dataclass

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
