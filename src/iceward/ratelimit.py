"""Token buckets per key, and a log throttle: how iceward bounds what one source can make it do.

Both are sans-IO (time is a parameter) and bounded in memory: past ``max_keys`` keys the table
starts over, which can only make a limit more lenient for a moment, never grow without bound.
"""

from __future__ import annotations

from collections.abc import Hashable


class RateLimiter:
    """``rate`` events a second per key, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[Hashable, tuple[float, float]] = {}
        self._max_keys = max_keys

    def allow(self, key: Hashable, now: float) -> bool:
        tokens, stamp = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(self._buckets) >= self._max_keys and key not in self._buckets:
            self._buckets.clear()
        self._buckets[key] = (tokens, now)
        return allowed


class LogThrottle:
    """Lets one log line per key through per ``interval``, and at most ``budget`` lines in all.

    :meth:`admit` answers whether to write a line now and how many lines for that key were held
    back since the last one written, so the line can say "and N more".
    """

    def __init__(self, interval: float = 60.0, budget: int = 20, *, max_keys: int = 4096) -> None:
        self.interval = interval
        self.budget = budget
        self._last: dict[Hashable, tuple[float, int]] = {}
        self._window_start = float("-inf")
        self._written = 0
        self._max_keys = max_keys

    def admit(self, key: Hashable, now: float) -> tuple[bool, int]:
        if now - self._window_start >= self.interval:
            self._window_start = now
            self._written = 0
        last, held = self._last.get(key, (float("-inf"), 0))
        if now - last < self.interval or self._written >= self.budget:
            if len(self._last) >= self._max_keys and key not in self._last:
                self._last.clear()
            self._last[key] = (last, held + 1)
            return False, held + 1
        self._written += 1
        self._last[key] = (now, 0)
        return True, held
