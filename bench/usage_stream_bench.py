"""The fleet's usage hand-off: ``python bench/usage_stream_bench.py`` (from the repository root).

Starts a real Redis and a real PostgreSQL (as in ``tests/fleet``), then, in this process:

* **Hand-off**: ``--records`` usage records put in a :class:`StreamWriter`'s queue and XADDed
  (entries of 200 records): records/s and CPU µs per record of this process.
* **Consumers**: ``--consumers`` :class:`StreamConsumer` tasks of one group write them to
  PostgreSQL (one transaction per entry, ``ON CONFLICT DO NOTHING`` on allocation and sequence
  number) and ack them: records/s from the first read to the last ack, and this process's CPU
  µs per record (PostgreSQL's own work is not in it).
* **Again**: the same records handed on a second time (as after a consumer died between commit
  and ack): written as fast, and the table still holds each once.

What a fleet needs: one record per allocation per ``--usage-interval`` (60 s), so 100,000
concurrent allocations make about 1,700 records/s in all, shared by every relaying process's
consumer.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text
from tests.fleet.services import PostgresServer, RedisServer

from iceward.fleet.member import connect
from iceward.store import Store
from iceward.usage.record import UsageRecord
from iceward.usage.store import UsageStore
from iceward.usage.stream import StreamConsumer, StreamWriter


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def records(count: int) -> list[UsageRecord]:
    return [
        UsageRecord(
            allocation=f"bench/b/{i // 10}", node="bench", region="eu", user=f"u{i % 100}",
            username=f"1:u{i % 100}", transport="udp", family="ipv4", started_at=1.0,
            period_start=float(i), period_end=float(i + 60), bytes_to_peer=48_000,
            bytes_to_client=47_000, packets_to_peer=300, packets_to_client=295,
            peers=["198.51.100.7"], seq=i % 10,
        )
        for i in range(count)
    ]  # fmt: skip


async def run(redis_url: str, store: UsageStore, count: int, consumers: int) -> None:
    client = connect(redis_url)
    counts: Counter[str] = Counter()

    def count_event(name: str, n: int) -> None:
        counts[name] += n

    writer = StreamWriter(client, count_event)
    group = [StreamConsumer(client, f"c{i}", store, count_event, 60.0) for i in range(consumers)]
    await group[0].step()  # the group
    batch = records(count)
    for attempt in ("first", "again"):
        counts.clear()
        started, cpu0 = time.perf_counter(), cpu()
        writer.put(batch)
        while writer.queued:
            await writer.send_one()
        added, cpu1 = time.perf_counter(), cpu()
        print(
            f"{attempt}: hand-off {count / (added - started):,.0f} records/s, "
            f"{(cpu1 - cpu0) / count * 1e6:.1f} µs CPU per record"
        )

        async def drain(consumer: StreamConsumer) -> None:
            while counts["records_written"] < count:
                await consumer.step()

        await asyncio.gather(*(drain(c) for c in group))
        done, cpu2 = time.perf_counter(), cpu()
        print(
            f"{attempt}: {consumers} consumer(s) wrote {counts['records_written']:,} records "
            f"at {count / (done - added):,.0f} records/s, "
            f"{(cpu2 - cpu1) / count * 1e6:.1f} µs CPU per record in this process"
        )
    with store.store.engine.connect() as conn:
        stored = conn.execute(text("SELECT COUNT(*) FROM usage_records")).scalar()
    print(f"stored once each: {stored:,} rows for {count:,} records")
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--consumers", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="iceward-usage-bench-"))
    redis = RedisServer(root / "redis")
    postgres = PostgresServer()
    try:
        redis.start()
        postgres.init()
        postgres.start()
        store = UsageStore(Store(postgres.url))
        asyncio.run(run(redis.url, store, args.records, args.consumers))
        store.store.close()
    finally:
        redis.stop()
        postgres.remove()


if __name__ == "__main__":
    main()
