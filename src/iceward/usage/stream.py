"""Usage records in a fleet (``--cluster``): handed to a Redis stream, written by a consumer.

No node writes its records to the database itself. Each relaying process queues its batches in
memory and a :class:`StreamWriter` task XADDs them to :data:`STREAM` (entries of at most
:data:`ENTRY_RECORDS` records; the stream capped at about :data:`STREAM_CAP` entries with
``MAXLEN ~``). While Redis is down the queue holds up to :data:`QUEUE_LIMIT` records (the
oldest dropped past that, and counted) and is sent when Redis answers again.

Every relaying process also runs a :class:`StreamConsumer` in the group :data:`GROUP`:
``XREADGROUP`` gives each entry to one consumer, which writes its records to the store and
``XACK``s it only after the commit. Entries a consumer left pending for four usage intervals
(1 to 10 s: it died, or its database writes failed) are taken over by a live one with
``XAUTOCLAIM``. A record written twice (a consumer killed between its commit and its ack) is
stored once: the store keys records by allocation and sequence number.

Nothing here is on the relay path: the usage service's interval only appends to a list.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from iceward.store import STORE_FAILURES, describe_failure
from iceward.usage.record import UsageRecord
from iceward.usage.store import UsageStore

log = logging.getLogger("iceward.usage")

STREAM = "iceward:usage"
GROUP = "writers"
#: Records per stream entry: one XADD carries a batch of at most this many.
ENTRY_RECORDS = 200
#: Entries the stream keeps at most (``MAXLEN ~``): with every consumer gone, the oldest
#: unwritten records go past this (20 million records at full entries).
STREAM_CAP = 100_000
#: Records a node keeps in memory while Redis is down; past this the oldest are dropped.
QUEUE_LIMIT = 100_000
#: Seconds an entry stays pending with its consumer before another takes it over: four usage
#: intervals, within these bounds.
CLAIM_IDLE = (1.0, 10.0)
#: Seconds a consumer with nothing pending may stay silent before it is forgotten.
CONSUMER_FORGET = 3600.0
#: Milliseconds one XREADGROUP waits for new entries (below the client's socket timeout).
BLOCK_MS = 500
#: Pauses between tries while Redis or the database fails: growing, at most a few seconds.
BACKOFF = (0.25, 0.5, 1.0, 2.0)

Count = Callable[[str, int], None]
_FIELDS = {f.name for f in dataclasses.fields(UsageRecord)}


def encode(records: Sequence[UsageRecord]) -> bytes:
    return json.dumps([dataclasses.asdict(r) for r in records], separators=(",", ":")).encode()


def decode(raw: bytes) -> list[UsageRecord]:
    """The records of one entry; ValueError when it is not what :func:`encode` makes."""
    try:
        docs = json.loads(raw)
        if not isinstance(docs, list):
            raise TypeError
        return [UsageRecord(**{k: v for k, v in d.items() if k in _FIELDS}) for d in docs]
    except (TypeError, AttributeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a usage entry: {exc}") from None


class _Backoff:
    """Growing pauses while something fails; the first failure is logged, then one line when
    it recovers."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0

    async def failed(self, problem: str) -> None:
        if self.failures == 0:
            log.warning("usage stream: %s: %s", self.what, problem)
        await asyncio.sleep(BACKOFF[min(self.failures, len(BACKOFF) - 1)])
        self.failures += 1

    def ok(self) -> None:
        if self.failures:
            log.info("usage stream: %s works again", self.what)
        self.failures = 0


class StreamWriter:
    """This process's records on their way to :data:`STREAM` (see the module doc)."""

    def __init__(self, redis: Redis, count: Count) -> None:
        self.redis = redis
        self.count = count
        self._queue: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._backoff = _Backoff("adding records to Redis")

    @property
    def queued(self) -> int:
        return len(self._queue)

    def put(self, records: Iterable[UsageRecord]) -> None:
        """Queue ``records`` (never waits); the oldest past :data:`QUEUE_LIMIT` are dropped."""
        self._queue.extend(records)
        overflow = len(self._queue) - QUEUE_LIMIT
        if overflow > 0:
            for _ in range(overflow):
                self._queue.popleft()
            self.count("records_dropped", overflow)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                try:
                    await self.send_one()
                except (RedisError, OSError) as exc:
                    self.count("stream_failed", 1)
                    await self._backoff.failed(str(exc) or type(exc).__name__)
                else:
                    self._backoff.ok()

    async def send_one(self) -> None:
        """XADD the oldest queued records (one entry); they go back to the queue's head when
        Redis fails."""
        batch = [self._queue.popleft() for _ in range(min(ENTRY_RECORDS, len(self._queue)))]
        try:
            await self.redis.xadd(STREAM, {"r": encode(batch)}, maxlen=STREAM_CAP, approximate=True)
        except BaseException:
            self._queue.extendleft(reversed(batch))
            self.put(())  # the limit, again
            raise
        self.count("stream_added", len(batch))

    def take_all(self) -> list[UsageRecord]:
        """Empty the queue (when stopping with Redis down: the caller writes them itself)."""
        records = list(self._queue)
        self._queue.clear()
        return records


class StreamConsumer:
    """One consumer of :data:`GROUP`: writes entries to the store, acks after the commit,
    takes over entries left pending by dead consumers (see the module doc)."""

    def __init__(
        self,
        redis: Redis,
        name: str,
        store: UsageStore,
        count: Count,
        interval: float,
    ) -> None:
        self.redis = redis
        self.name = name
        self.store = store
        self.count = count
        self.claim_idle = min(CLAIM_IDLE[1], max(CLAIM_IDLE[0], 4 * interval))
        self._group_made = False
        #: Own entries are read again (id 0) after a write failed; else only new ones.
        self._own_pending = True
        self._next_claim = 0.0
        self._backoff = _Backoff("consuming records")

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except (RedisError, OSError) as exc:
                self.count("stream_failed", 1)
                self._group_made = False  # a Redis restarted empty has no group
                await self._backoff.failed(str(exc) or type(exc).__name__)
            except STORE_FAILURES as exc:
                self.count("store_failed", 1)
                self.store.store.health.failed(exc)
                self._own_pending = True
                await self._backoff.failed(f"the store: {describe_failure(exc)}")
            else:
                self._backoff.ok()

    async def step(self) -> int:
        """One read (own pending, entries taken over, or new ones) written and acked; how
        many records were written."""
        if not self._group_made:
            with contextlib.suppress(ResponseError):  # BUSYGROUP: made by another node
                await self.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
            self._group_made = True
        entries: list[tuple[Any, Any]] = []
        if self._own_pending:
            entries = await self._read("0", block=None)
            self._own_pending = bool(entries)
        if not entries and time.monotonic() >= self._next_claim:
            entries = await self._claim()
        if not entries:
            entries = await self._read(">", block=BLOCK_MS)
        return await self._write(entries)

    async def _read(self, start: str, block: int | None) -> list[tuple[Any, Any]]:
        found: Any = await self.redis.xreadgroup(
            GROUP, self.name, {STREAM: start}, count=ENTRY_RECORDS, block=block
        )
        return list(found[0][1]) if found else []

    async def _claim(self) -> list[tuple[Any, Any]]:
        """Entries idle past ``claim_idle`` with another consumer; forgets long-silent
        consumers that hold nothing."""
        self._next_claim = time.monotonic() + self.claim_idle / 2
        idle_ms = int(self.claim_idle * 1000)
        answer = await self.redis.xautoclaim(
            STREAM, GROUP, self.name, idle_ms, start_id="0-0", count=ENTRY_RECORDS
        )
        claimed = list(answer[1])
        deleted = list(answer[2]) if len(answer) > 2 else []
        if deleted:  # trimmed away (MAXLEN) before anyone wrote them
            await self.redis.xack(STREAM, GROUP, *deleted)
            self.count("stream_lost", len(deleted))
        if claimed:
            self.count("stream_claimed", len(claimed))
            log.info("usage stream: took over %d entries a dead consumer left", len(claimed))
        for consumer in await self.redis.xinfo_consumers(STREAM, GROUP):
            name = consumer["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            silent = int(consumer.get("idle", 0)) / 1000
            if name != self.name and consumer["pending"] == 0 and silent > CONSUMER_FORGET:
                await self.redis.xgroup_delconsumer(STREAM, GROUP, name)
        return claimed

    async def _write(self, entries: list[tuple[Any, Any]]) -> int:
        if not entries:
            return 0
        records: list[UsageRecord] = []
        for entry_id, fields in entries:
            raw = (fields or {}).get(b"r")
            try:
                records += decode(raw) if raw is not None else []
            except ValueError as exc:
                log.error("usage stream: entry %s dropped: %s", entry_id, exc)
                self.count("stream_bad", 1)
        if records:
            await asyncio.to_thread(self.store.write, records)
            self.store.store.health.ok()
        await self.redis.xack(STREAM, GROUP, *[entry_id for entry_id, _ in entries])
        self.count("records_written", len(records))
        return len(records)

    async def leave(self) -> None:
        """Leave the group if nothing is pending with this consumer (else another takes it
        over after ``claim_idle``)."""
        with contextlib.suppress(RedisError, OSError):
            for consumer in await self.redis.xinfo_consumers(STREAM, GROUP):
                name = consumer["name"]
                name = name.decode() if isinstance(name, bytes) else str(name)
                if name == self.name and consumer["pending"] == 0:
                    await self.redis.xgroup_delconsumer(STREAM, GROUP, self.name)
