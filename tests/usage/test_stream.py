"""The fleet's usage hand-off against a real ``redis-server`` and a SQLite store: entries a
consumer died holding are taken over and written once, a record written twice counts once, and
records queued while Redis is down reach the store when it is back."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from iceward.fleet.member import connect
from iceward.store import Store
from iceward.usage.record import UsageRecord
from iceward.usage.store import UsageStore
from iceward.usage.stream import GROUP, STREAM, StreamConsumer, StreamWriter
from tests.fleet.services import RedisServer

INTERVAL = 0.2  # the consumers take over entries idle for 1 s


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def records(allocation: str, count: int, size: int = 100) -> list[UsageRecord]:
    return [
        UsageRecord(
            allocation=allocation, node="n", region="eu", user="u", username="1:u",
            transport="udp", family="ipv4", started_at=0.0, period_start=float(i),
            period_end=float(i + 1), bytes_to_peer=size, seq=i,
        )
        for i in range(count)
    ]  # fmt: skip


def stored(db: Path) -> tuple[int, int]:
    """(records, bytes to peer) in the store."""
    with sqlite3.connect(db) as conn:
        count, total = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes_to_peer), 0) FROM usage_records"
        ).fetchone()
    return int(count), int(total)


async def until(check: object, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "not in time"
        await asyncio.sleep(0.05)


def test_a_dead_consumers_entries_are_taken_over_and_written_once(
    redis: RedisServer, tmp_path: Path
) -> None:
    db = tmp_path / "usage.db"
    store = UsageStore(Store(f"sqlite:///{db}"))
    counts: Counter[str] = Counter()

    def count(name: str, n: int) -> None:
        counts[name] += n

    async def scenario() -> None:
        client = connect(redis.url)
        writer = StreamWriter(client, count)
        live = StreamConsumer(client, "live", store, count, INTERVAL)
        await live.step()  # makes the group; nothing to read yet
        writer.put(records("a", 450))
        while writer.queued:
            await writer.send_one()  # three entries: 200, 200, 50 records
        # A consumer reads everything, then dies before writing or acking.
        taken = await client.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=10)
        assert len(taken[0][1]) == 3
        assert await live.step() == 0  # pending with "dead", not idle long enough yet
        await asyncio.sleep(1.1)
        assert await live.step() == 450  # taken over, all three entries
        # The same records handed on again (a consumer killed between commit and ack).
        writer.put(records("a", 450))
        while writer.queued:
            await writer.send_one()
        while await live.step():
            pass
        pending = await client.xpending(STREAM, GROUP)
        assert pending["pending"] == 0
        await client.aclose()

    asyncio.run(scenario())
    assert stored(db) == (450, 45_000)
    assert counts["stream_claimed"] == 3 and counts["records_written"] == 900
    store.store.close()


def test_records_queued_while_redis_is_down_reach_the_store(
    redis: RedisServer, tmp_path: Path
) -> None:
    db = tmp_path / "usage.db"
    store = UsageStore(Store(f"sqlite:///{db}"))
    counts: Counter[str] = Counter()

    def count(name: str, n: int) -> None:
        counts[name] += n

    async def scenario() -> None:
        client = connect(redis.url)
        writer = StreamWriter(client, count)
        consumer = StreamConsumer(client, "c", store, count, INTERVAL)
        tasks = [asyncio.create_task(writer.run()), asyncio.create_task(consumer.run())]
        writer.put(records("before", 10))
        await until(lambda: stored(db)[0] == 10, 5)
        redis.stop()
        writer.put(records("during", 30))
        await until(lambda: counts["stream_failed"] >= 2, 5)
        assert writer.queued == 30  # kept, in order, nothing dropped
        redis.start()  # empty: no stream, no group (no persistence)
        await until(lambda: stored(db)[0] == 40, 10)
        for task in tasks:
            task.cancel()
        await client.aclose()

    asyncio.run(scenario())
    assert stored(db) == (40, 4000)
    assert counts["records_dropped"] == 0 and counts["stream_added"] == 40
    store.store.close()
