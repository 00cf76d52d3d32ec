"""The pure parts of usage: sizes and durations, reports, quota periods and signatures, the
token buckets (on a fake clock), and the commands' one-line refusals."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from iceward.net.bandwidth import AllocationLimit, NodeCapacity
from iceward.turn.allocation import TrafficCounters
from iceward.units import parse_duration, parse_size
from iceward.usage.quotas import period_start, sign, verify
from iceward.usage.report import peak_concurrent, summarize, window


def test_sizes_and_durations() -> None:
    assert parse_size("10GB") == 10**10 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("500") == 500 and parse_size("1.5kB") == 1500
    assert parse_duration("90d") == 90 * 86400 and parse_duration("15m") == 900
    for bad in ("10XB", "-5GB", "GB", "1e9", "10 G B", "5i"):
        with pytest.raises(ValueError, match="not a size"):
            parse_size(bad)
    for bad in ("", "d", "5y", "-1d", "1e3s"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)


def test_window_bounds() -> None:
    now = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC).timestamp()
    assert window("1d", None, now) == (now - 86400, now)
    start, end = window("2026-11-01", "2026-11-02T00:00:00+01:00", now)
    assert end - start == 23 * 3600
    with pytest.raises(ValueError, match="not after"):
        window("1h", "2d", now)
    with pytest.raises(ValueError, match="neither a duration"):
        window("yesterday", None, now)


@dataclass
class Row:
    allocation: str
    period_start: float
    period_end: float
    bytes_to_peer: int = 100
    bytes_to_client: int = 100
    packets_to_peer: int = 1
    packets_to_client: int = 1
    node: str = "n"
    region: str = "eu"
    user: str = "u"
    label: str | None = None
    transport: str = "udp"


def test_report_adds_up_periods_and_finds_the_peak() -> None:
    assert peak_concurrent([(0, 10), (5, 15), (10, 20), (11, 12)]) == 3
    rows = [
        Row("a", 0, 60, label="x"), Row("a", 60, 90, label="x"),  # one allocation, two records
        Row("b", 30, 50, label="y", transport="tcp", region="us"),
        Row("c", 100, 160, label=None, bytes_to_peer=0, bytes_to_client=0),
    ]  # fmt: skip
    doc = summarize(rows, "label", 0, 200, 1.0, {"us": 10.0})  # type: ignore[arg-type]
    x = next(g for g in doc["groups"] if g["label"] == "x")
    assert x["bytesToPeer"] == 200 and x["allocations"] == 1 and x["peakConcurrent"] == 1
    assert x["allocationMinutes"] == 1.5 and x["cost"] == round(400 / 1e9, 4)
    total = doc["total"]
    assert total["allocations"] == 3 and total["peakConcurrent"] == 2
    assert total["transportShare"] == {"tcp": 0.3333, "udp": 0.6667}
    assert total["cost"] == round(400 / 1e9 + 200 / 1e9 * 10, 4)
    unpriced = summarize(rows, "region", 0, 200, None, {"us": 10.0})  # type: ignore[arg-type]
    assert [g["cost"] for g in unpriced["groups"]] == [None, round(200 / 1e9 * 10, 4)]


def test_quota_periods_and_signatures() -> None:
    now = dt.datetime(2026, 11, 30, 23, 59, tzinfo=dt.UTC).timestamp()
    day, key = period_start("day", now)
    assert key == "2026-11-30" and now - day == 23 * 3600 + 59 * 60
    month, key = period_start("month", now)
    assert key == "2026-11" and month == dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
    header = sign("s3cret", b'{"a":1}', int(now))
    assert verify("s3cret", b'{"a":1}', header, now + 10)
    assert not verify("s3cret", b'{"a":2}', header, now)
    assert not verify("other", b'{"a":1}', header, now)
    assert not verify("s3cret", b'{"a":1}', header, now + 3600)  # stale
    assert not verify("s3cret", b'{"a":1}', "garbage", now)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def send(counters: TrafficCounters, size: int) -> bool:
    """What a relay path does with one datagram to the peer."""
    limiter = counters.limiter
    if limiter is None:
        return True
    counters.budget_to_peer -= size
    return counters.budget_to_peer >= 0 or limiter.refill(counters, True, size)


def test_buckets_hold_the_rate_and_the_node_capacity() -> None:
    clock, drops = Clock(), Counter[str]()
    counters = TrafficCounters()
    assert send(counters, 10**9)  # no limit
    counters = TrafficCounters()
    AllocationLimit(100_000, None, drops, clock).start(counters)
    passed = 0
    for _ in range(1000):  # 1000 datagrams of 1000 bytes over 2 s: 500 kB/s offered
        clock.now += 0.002
        passed += 1000 * send(counters, 1000)
    assert 200_000 <= passed <= 200_000 + 25_000 + 1000  # 2 s at the rate, plus the burst
    assert counters.dropped_to_peer == 1000 - passed // 1000 == drops["drop.bandwidth"]
    node = NodeCapacity(50_000, clock)
    shared = [TrafficCounters(), TrafficCounters()]
    for c in shared:
        AllocationLimit(100_000, node, drops, clock).start(c)
    passed = 0
    for _ in range(1000):
        clock.now += 0.002
        passed += sum(1000 * send(c, 1000) for c in shared)
    assert passed <= 100_000 + 2 * 25_000 + 12_500  # the node's 50 kB/s, plus the bursts


def iceward(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iceward", *args], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("usage", "--by", "color"), "--by: 'color' is not one of"),
        (("quotas", "set", "--user", "u", "--bytes", "10XB"), "--bytes:"),
        (("quotas", "set", "--user", "u", "--bytes", "1GB", "--action", "notify"), "webhook"),
        (("quotas", "remove", "--user", "nobody"), "no quota on user 'nobody'"),
        (("cost", "--calls", "10"), "give --calls, --kbps and --relay-share"),
    ],
)
def test_commands_refuse_in_one_line(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    done = iceward(*args, *(() if args[0] == "cost" else ("--data-dir", str(tmp_path))))
    assert done.returncode == 2, done
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
