"""The token bucket and the log throttle every per-source limit is built on."""

from __future__ import annotations

from iceward.ratelimit import LogThrottle, RateLimiter


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", 0.0)  # another key has its own bucket
    assert limiter.allow("a", 0.5) and not limiter.allow("a", 0.5)  # 2 a second


def test_log_throttle_writes_one_line_per_key_a_minute_and_counts_the_rest() -> None:
    throttle = LogThrottle(interval=60.0, budget=2)
    assert throttle.admit("10.0.0.1", 0.0) == (True, 0)
    assert [throttle.admit("10.0.0.1", t)[0] for t in (1.0, 2.0, 3.0)] == [False] * 3
    assert throttle.admit("10.0.0.2", 4.0) == (True, 0)
    assert throttle.admit("10.0.0.3", 5.0)[0] is False  # over the budget of lines per minute
    assert throttle.admit("10.0.0.1", 61.0) == (True, 3)  # and 3 were held back
