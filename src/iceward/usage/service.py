"""Usage accounting of one relaying process, off the relay path.

Once an interval (``--usage-interval``) the :class:`UsageService` reads the counters the relay
paths keep (the native engine's are synced first), turns them into records, and writes the
batch, with the final records of allocations that ended meanwhile, to the store in a thread:
no packet waits on the database. Then it checks the byte quotas: a ``block`` quota over its
limit refuses its subject's new allocations (486) and ends the running ones; a ``notify`` quota
posts a signed webhook at 80% and 100%.

In a fleet (``--cluster``) the batch goes to a Redis stream instead, and this process is one of
the consumers that write the stream to the store (:mod:`iceward.usage.stream`); the quotas are
read from the store all nodes share, so a quota holds over the fleet.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from iceward.net.engine import RelayEngine
from iceward.snapshot import USAGE_QUEUED
from iceward.store import STORE_FAILURES, describe_failure
from iceward.turn.allocation import Allocation
from iceward.usage.enforce import Enforcer, evaluate
from iceward.usage.quotas import NOTICE_LEVELS, notice_body
from iceward.usage.record import Recorder, UsageRecord
from iceward.usage.store import Quota, UsageStore
from iceward.usage.webhook import deliver

if TYPE_CHECKING:
    from iceward.usage.stream import StreamConsumer, StreamWriter

log = logging.getLogger("iceward.usage")
T = TypeVar("T")

#: Records kept for the store while it fails; past this the oldest are dropped and counted.
PENDING_LIMIT = 100_000
#: Seconds between retention passes.
PRUNE_EVERY = 3600.0
#: Labels are kept as long as the longest credential lives, and a day more.
LABEL_KEEP = dt.timedelta(days=8)
#: Seconds a stopping process tries to hand its last records to Redis before it writes them
#: to the store itself.
STOP_HANDOFF = 2.0


@dataclass(frozen=True, slots=True)
class UsageParams:
    node: str
    region: str
    interval: float
    retention: float
    #: Bytes/s for running allocations of a blocked user or label; 0: they end.
    throttle: int = 0
    #: The fleet's Redis (``--cluster``): records go through its stream; None: to the store.
    cluster: str | None = None


class UsageService:
    def __init__(self, params: UsageParams, store: UsageStore, engine: RelayEngine) -> None:
        self.params = params
        self.store = store
        self.engine = engine
        self._loop: asyncio.AbstractEventLoop | None = None
        self.recorder: Recorder | None = None
        self._pending: list[UsageRecord] = []
        self._task: asyncio.Task[None] | None = None
        self._notices: set[asyncio.Task[bool]] = set()
        self._last_prune = 0.0
        #: Subjects of block quotas over their limit: user -> reason, label -> reason.
        self._blocked_users: dict[str, str] = {}
        self._blocked_labels: dict[str, str] = {}
        #: Issued usernames carrying a blocked label -> reason.
        self._blocked_usernames: dict[str, str] = {}
        self.enforcer = Enforcer(params.throttle)
        #: In a fleet: where records go, and this process's consumer of the stream.
        self.writer: StreamWriter | None = None
        self.consumer: StreamConsumer | None = None
        self._stream_tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Hook into the started engine and record from now on."""
        loop = self._loop = asyncio.get_running_loop()
        self.recorder = Recorder(
            self.params.node, self.params.region, os.urandom(4).hex(), self.engine.wall_time
        )
        self.engine.on_removed = self._ended
        assert self.engine.core is not None
        self.engine.core.admit = self.admit
        self._task = loop.create_task(self._run())
        if self.params.cluster is not None:
            # Imported here: a process outside a fleet (each relaying worker pays for what it
            # loads) never loads the Redis client.
            from iceward.fleet.member import connect
            from iceward.usage.stream import StreamConsumer, StreamWriter

            redis = connect(self.params.cluster)
            counted = self._stream_count
            self.writer = StreamWriter(redis, counted)
            name = f"{self.params.node}/{self.recorder.boot}"
            self.consumer = StreamConsumer(redis, name, self.store, counted, self.params.interval)
            self._stream_tasks = [
                loop.create_task(self.writer.run()),
                loop.create_task(self.consumer.run()),
            ]

    async def stop(self) -> None:
        """Call after the engine stopped (its allocations' final records are pending): write
        what is pending, once."""
        if self._task is not None:
            self._task.cancel()
        for task in list(self._notices):
            task.cancel()
        writer = self.writer
        if writer is None:
            await self._flush()
            return
        from redis.exceptions import RedisError  # loaded with the writer (see start)

        for stream_task in self._stream_tasks:
            stream_task.cancel()
        writer.put(self._pending)
        self._pending = []
        try:
            async with asyncio.timeout(STOP_HANDOFF):
                while writer.queued:
                    await writer.send_one()
        except (OSError, TimeoutError, RedisError) as exc:
            log.warning("usage stream: %d records written directly: %s", writer.queued, exc)
            self._pending = writer.take_all()
            await self._flush(direct=True)
        self._count(USAGE_QUEUED, -self._counters.get(USAGE_QUEUED, 0))
        assert self.consumer is not None
        await self.consumer.leave()
        await writer.redis.aclose()

    # -- hooks ---------------------------------------------------------------------------------
    def _ended(self, alloc: Allocation, reason: str) -> None:
        if self.recorder is not None:
            self._pending.append(self.recorder.final(alloc, reason, time.time()))

    def admit(self, account: str, username: str) -> str | None:
        """The reason phrase refusing a new allocation to a blocked user or label, else None."""
        if not (self._blocked_users or self._blocked_usernames):
            return None
        return self._blocked_users.get(account) or self._blocked_usernames.get(username)

    @property
    def _counters(self) -> dict[str, int]:
        core = self.engine.core
        return core.counters if core is not None else {}

    # -- the interval --------------------------------------------------------------------------
    async def _run(self) -> None:
        interval = self.params.interval
        next_at = time.monotonic() + interval
        #: In a fleet the quotas are checked half an interval after the hand-off, when the
        #: consumers have written this node's records too (one node checks right after writing).
        check_at: float | None = None
        while True:
            wake = next_at if check_at is None else min(next_at, check_at)
            await asyncio.sleep(min(1.0, max(0.0, wake - time.monotonic())))
            now = time.monotonic()
            if now >= next_at:
                next_at += interval
                if await self.interim() and self.writer is not None:
                    check_at = now + interval / 2
            elif check_at is not None and now >= check_at:
                check_at = None
                await self._check_quotas(time.time())
            elif self._blocked_labels:
                await self._refresh_blocked_usernames()

    async def interim(self) -> bool:
        """Record every live allocation and write the batch (or hand it to the stream); alone,
        apply the quotas. False when the store failed."""
        engine = self.engine
        if engine.core is not None and self.recorder is not None:
            engine.sync_traffic()
            self._pending.extend(self.recorder.interim(engine.core.allocations, time.time()))
        if not await self._flush():
            return False
        now = time.time()
        if now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            await self._guard(
                self.store.prune,
                now - self.params.retention,
                dt.datetime.now(dt.UTC) - LABEL_KEEP,
            )
        if self.writer is None:
            await self._check_quotas(now)
        return True

    async def _guard(self, func: Callable[..., T], *args: object) -> T | None:
        """``func(*args)`` in a thread; a failing store is counted, logged once, and None."""
        try:
            result = await asyncio.to_thread(func, *args)
        except STORE_FAILURES as exc:
            self._counters["usage.store_failed"] = self._counters.get("usage.store_failed", 0) + 1
            self.store.store.health.failed(exc)
            log.debug("usage store: %s", describe_failure(exc))
            return None
        self.store.store.health.ok()
        return result

    def _stream_count(self, name: str, n: int) -> None:
        self._count("usage." + name, n)
        if self.writer is not None:  # a gauge, beside the counters
            self._counters[USAGE_QUEUED] = self.writer.queued

    async def _flush(self, direct: bool = False) -> bool:
        """Write what is pending to the store, or in a fleet hand it to the stream (unless
        ``direct``); False when the store failed (it stays pending)."""
        batch, self._pending = self._pending, []
        if not batch:
            return True
        if self.writer is not None and not direct:
            self.writer.put(batch)
            self._stream_count("records_queued", len(batch))
            return True
        if await self._guard(self.store.write, batch) is None:
            self._pending = batch + self._pending
            overflow = len(self._pending) - PENDING_LIMIT
            if overflow > 0:
                del self._pending[:overflow]
                self._count("usage.records_dropped", overflow)
            return False
        self._count("usage.records_written", len(batch))
        return True

    def _count(self, name: str, n: int = 1) -> None:
        counters = self._counters
        counters[name] = counters.get(name, 0) + n

    # -- quotas --------------------------------------------------------------------------------
    async def _check_quotas(self, now: float) -> None:
        verdict = await self._guard(evaluate, self.store, now)
        if verdict is None:
            return
        for quota, used, key in verdict.notices:
            await self._notify(quota, used, key, now)
        self._blocked_users, self._blocked_labels = verdict.users, verdict.labels
        await self._refresh_blocked_usernames()
        self._apply_blocks()

    async def _refresh_blocked_usernames(self) -> None:
        labels = self._blocked_labels
        found = await self._guard(self.store.usernames_labelled, list(labels)) if labels else {}
        if found is not None:
            self._blocked_usernames = {name: labels[label] for name, label in found.items()}

    def _apply_blocks(self) -> None:
        core = self.engine.core
        if core is None:
            return
        actions = self.enforcer.decide(core.allocations, self.admit)
        for alloc in actions.end:
            log.info("ending allocation %d of %r: byte quota exceeded", alloc.id, alloc.account)
            self.engine.delete_local(alloc.id, "byte quota exceeded")
            self._count("usage.quota_ended")
        throttle = self.enforcer.throttle
        for alloc in actions.throttle:
            log.info(
                "throttling allocation %d of %r to %d bytes/s: byte quota exceeded",
                alloc.id, alloc.account, throttle,
            )  # fmt: skip
            self.engine.limit(alloc, throttle)
            self._count("usage.quota_throttled")
        for alloc in actions.release:
            log.info("allocation %d of %r no longer over its byte quota", alloc.id, alloc.account)
            self.engine.reset_limit(alloc)
            self._count("usage.quota_released")

    async def _notify(self, quota: Quota, used: int, key: str, now: float) -> None:
        if not quota.webhook or not quota.webhook_secret:
            return
        for level in NOTICE_LEVELS:
            if used * 100 < quota.limit_bytes * level:
                break
            if not await self._guard(self.store.claim_notice, quota.id, key, level):
                continue
            body = notice_body(quota, used, level, key, now)
            task = asyncio.get_running_loop().create_task(
                self._send(quota.webhook, quota.webhook_secret, body)
            )
            self._notices.add(task)
            task.add_done_callback(self._notices.discard)

    async def _send(self, url: str, secret: str, body: bytes) -> bool:
        delivered = await deliver(url, secret, body)
        self._count("usage.webhook_sent" if delivered else "usage.webhook_failed")
        return delivered
