"""Bandwidth limits: ``--max-bps`` per allocation and ``--bps-capacity`` per node (coturn's:
bytes per second, each direction on its own), as token buckets filled lazily.

The forwarding paths keep no clock: each datagram of a limited allocation subtracts its size
from its budget (a :class:`~iceward.turn.allocation.TrafficCounters` field; an unlimited one has
no limiter and skips this) and only a budget gone negative calls
:meth:`AllocationLimit.refill`, which reads the clock, adds what the rate earned since the last
refill (at most a burst) and, under a node capacity, draws it from the node's own bucket. What
cannot be paid for is dropped and counted.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from iceward.turn.allocation import TrafficCounters

#: A bucket holds this many seconds of its rate (and at least a few full datagrams): a sender
#: that pauses (a scheduler hiccup, a congestion controller) is not held below the rate.
BURST_SECONDS = 0.25
MIN_BURST = 3 * 1500


def burst_of(rate: float) -> float:
    return max(rate * BURST_SECONDS, MIN_BURST)


class NodeCapacity:
    """The node's (or one worker's share of the node's) bytes per second, each direction."""

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst_of(rate)
        self._clock = clock
        now = clock()
        self._tokens = [self.burst, self.burst]  # to peer, to client
        self._last = [now, now]

    def take(self, to_peer: bool, wanted: float, now: float) -> float:
        """Up to ``wanted`` bytes from this direction's bucket."""
        i = 0 if to_peer else 1
        tokens = min(self.burst, self._tokens[i] + (now - self._last[i]) * self.rate)
        self._last[i] = now
        given = min(wanted, max(0.0, tokens))
        self._tokens[i] = tokens - given
        return given


class AllocationLimit:
    """One allocation's buckets (rate bytes/s, each direction), under the node's capacity."""

    __slots__ = ("_clock", "_last", "_node", "burst", "drops", "rate")

    def __init__(
        self,
        rate: float,
        node: NodeCapacity | None,
        drops: Counter[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst_of(rate)
        self._node = node
        self._clock = clock
        self.drops = drops
        now = clock()
        self._last = [now, now]

    def start(self, counters: TrafficCounters) -> None:
        """Give ``counters`` a full burst each way and make this their limiter."""
        counters.budget_to_peer = counters.budget_to_client = self.burst
        counters.limiter = self

    def earn(self, counters: TrafficCounters, to_peer: bool) -> float:
        """Add to one direction's budget what the rate earned since it was last topped up
        (within the node's capacity): the budget now."""
        now = self._clock()
        i = 0 if to_peer else 1
        budget = counters.budget_to_peer if to_peer else counters.budget_to_client
        earned = min(self.burst - budget, (now - self._last[i]) * self.rate)
        self._last[i] = now
        if self._node is not None and earned > 0:
            earned = self._node.take(to_peer, earned, now)
        budget += max(0.0, earned)
        if to_peer:
            counters.budget_to_peer = budget
        else:
            counters.budget_to_client = budget
        return budget

    def refill(self, counters: TrafficCounters, to_peer: bool, wanted: int) -> bool:
        """A datagram of ``wanted`` bytes, already spent from a budget that went negative: True
        when what was earned since covers it; else it is dropped (its bytes given back)."""
        budget = self.earn(counters, to_peer)
        if budget >= 0:
            return True
        self.drops["drop.bandwidth"] += 1  # dropped: its bytes are not spent
        if to_peer:
            counters.dropped_to_peer += 1
            counters.budget_to_peer = budget + wanted
        else:
            counters.dropped_to_client += 1
            counters.budget_to_client = budget + wanted
        return False
