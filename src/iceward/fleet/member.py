"""This node's membership of the fleet: it claims its node id, publishes a heartbeat every
:data:`~iceward.fleet.node.BEAT` seconds with its load, and keeps the fleet as last read in
memory, where issuers and the drain's alternates read it without any I/O.

Redis is touched by the heartbeat only (one script call a beat, which also reads the others),
never on the relay path. When Redis is unreachable the node goes on relaying and
authenticating (nothing there needs Redis), issues from itself alone, says so once in the log
and in ``/readyz``, and tries again with a growing pause (never a busy loop); when Redis
answers again its next beat rejoins and the fleet reforms by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from iceward.fleet.alternates import Alternate, family_number
from iceward.fleet.choose import healthy
from iceward.fleet.node import (
    BEAT,
    FRESH_FOR,
    Listener,
    Load,
    NodeInfo,
    State,
    listeners_of,
    urls_by_transport,
)
from iceward.snapshot import Snapshot

log = logging.getLogger("iceward.fleet")

PREFIX = "iceward:"
NODE_KEY = PREFIX + "node:"
INDEX_KEY = PREFIX + "nodes"
#: Published after users, secrets or API keys change through a node's admin API: every other
#: node reads the store again at once, not at its next once-a-second revision check.
STORE_CHANNEL = PREFIX + "store"
#: Seconds a Redis call may take before the node treats Redis as down.
REDIS_TIMEOUT = 1.0
#: Pauses between tries while Redis is down: growing, never above one beat.
BACKOFF = (0.25, 0.5, 1.0, BEAT)
#: Seconds between two looks at a held node id while claiming it.
CLAIM_POLL = 0.5
#: The window relayed bit/s are measured over.
RATE_WINDOW = 10.0

# One call a beat: claim or refresh this node's key (unless another process holds the id),
# list the fleet, forget nodes whose key expired. Returns {1, heartbeats} or {0, the holder's}.
_BEAT_SCRIPT = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if ok and type(doc) == 'table' and doc['instance'] ~= ARGV[2] then
    return {0, cur}
  end
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local value = redis.call('GET', ARGV[5] .. id)
  if value then table.insert(out, value) else redis.call('SREM', KEYS[2], id) end
end
return {1, out}
"""

# Leaving: the key goes only if it is still this process's.
_LEAVE_SCRIPT = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if ok and type(doc) == 'table' and doc['instance'] == ARGV[2] then
    redis.call('DEL', KEYS[1])
    redis.call('SREM', KEYS[2], ARGV[1])
  end
end
return 1
"""


class QuotaShare(Protocol):
    """Per-user allocation counts kept for ``--user-quota`` (by bucket of user names)."""

    def local_buckets(self) -> dict[int, int]:
        """What this node holds."""
        ...

    def set_remote(self, counts: dict[int, int]) -> None:
        """What the other nodes hold, as their heartbeats say."""
        ...


class NodeIdTaken(Exception):
    """Another live node has this node id; the message names it."""


def redacted(url: str) -> str:
    """A Redis URL without its password."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


def connect(url: str) -> Redis:
    """A client that fails fast (no retries of its own: the heartbeat has its backoff)."""
    return Redis.from_url(
        url,
        socket_connect_timeout=REDIS_TIMEOUT,
        socket_timeout=REDIS_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


class CpuMeter:
    """The host's busy CPU share between two readings of ``/proc/stat`` (0 where there is
    none)."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    def busy(self) -> float:
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[0] <= last[0]:
            return 0.0
        total, idle = now[0] - last[0], now[1] - last[1]
        return max(0.0, min(1.0, 1.0 - idle / total))


class LoadMeter:
    """A node's :class:`Load` from its metrics snapshots: relayed bit/s over the last
    :data:`RATE_WINDOW` seconds from the byte counters' growth."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int, int]] = deque()
        self._cpu = CpuMeter()

    def measure(self, snap: Snapshot, now: float) -> Load:
        to_peer = sum(b for (d, _), (_, b) in snap.traffic.items() if d == "to_peer")
        to_client = sum(b for (d, _), (_, b) in snap.traffic.items() if d == "to_client")
        samples = self._samples
        samples.append((now, to_peer, to_client))
        while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW:
            samples.popleft()
        first = samples[0]
        span = now - first[0]
        rate = (lambda a, b: max(0.0, (a - b) * 8 / span)) if span > 0 else (lambda a, b: 0.0)
        return Load(
            allocations=sum(snap.active.values()),
            to_peer_bps=rate(to_peer, first[1]),
            to_client_bps=rate(to_client, first[2]),
            free_ports=max(0, snap.ports_total - snap.ports_in_use),
            cpu=self._cpu.busy(),
        )


class FleetMember:
    """One node's place in the fleet (see the module doc); also the drain's
    :class:`~iceward.server.drain.AlternateSource`."""

    def __init__(
        self,
        *,
        url: str,
        node_id: str,
        region: str,
        version: str,
        public_uris: Callable[[], list[str]],
        own_ips: list[str],
        snapshot: Callable[[], Awaitable[Snapshot]],
        store_changed: Callable[[], Awaitable[None]] | None = None,
        quota: QuotaShare | None = None,
    ) -> None:
        """``store_changed`` runs when another node says the store changed; ``quota``, when
        given, is published with each beat and given the other nodes' counts back."""
        self.url = url
        self._quota = quota
        self._quota_local: dict[int, int] = {}
        self._addressed: (
            tuple[list[str], dict[str, list[str]], tuple[Listener, ...], str | None] | None
        ) = None
        self._store_changed = store_changed
        self.node_id = node_id
        self.region = region
        self.version = version
        self.instance = os.urandom(8).hex()
        self.started = time.time()
        self.state: State = "serving"
        self._public_uris = public_uris
        self._own_ips = own_ips
        self._snapshot = snapshot
        self._meter = LoadMeter()
        self._load = Load()
        self._redis = connect(url)
        self._beat = self._redis.register_script(_BEAT_SCRIPT)
        self._others: dict[str, NodeInfo] = {}
        #: Why Redis cannot be used now; None while it answers.
        self.failure: str | None = None
        self._conflict: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        #: Heartbeats that reached Redis, and that did not (``/metrics``).
        self.beats = {"ok": 0, "failed": 0}

    # -- lifecycle -----------------------------------------------------------------------------
    async def join(self) -> None:
        """Claim the node id and read the fleet; :class:`NodeIdTaken` when a live node has it.
        A holder whose heartbeat does not move is a node that died (a restart after SIGKILL):
        its key is waited out (at most :data:`FRESH_FOR` seconds) and the id taken over.
        Redis down: the node starts alone (said once) and joins when Redis answers."""
        await self._update_load()
        try:
            holder = await self._claim()
        except (RedisError, OSError) as exc:
            self._down(exc)
        else:
            if holder is not None:
                await self._redis.aclose()
                raise NodeIdTaken(self._taken_message(holder))
            self._up()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        if self._store_changed is not None:
            self._listener = loop.create_task(self._listen())

    async def leave(self) -> None:
        """Stop beating and remove this node's heartbeat (so issuers stop at once)."""
        for task in (self._task, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            leave = self._redis.register_script(_LEAVE_SCRIPT)
            keys = [NODE_KEY + self.node_id, INDEX_KEY]
            await asyncio.wait_for(leave(keys=keys, args=[self.node_id, self.instance]), 1.0)
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    def set_draining(self) -> None:
        """From now on this node is published as draining: no issuer chooses it after their
        next read of the fleet (within one beat). Its heartbeat goes out now."""
        if self.state != "draining":
            self.state = "draining"
            log.info("fleet: node %s is draining", self.node_id)
            self._wake.set()

    async def announce_store_change(self) -> None:
        """Tell the other nodes the store changed (one PUBLISH; lost while Redis is down, when
        their revision check still finds it within a second)."""
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self._redis.publish(STORE_CHANNEL, self.instance), REDIS_TIMEOUT)

    async def _listen(self) -> None:
        """Store changes the other nodes announce; resubscribes with a growing pause after
        Redis went away."""
        assert self._store_changed is not None
        tries = 0
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(STORE_CHANNEL)
                tries = 0
                while True:
                    message = await pubsub.get_message(timeout=BEAT)
                    if message is not None and message.get("data") != self.instance.encode():
                        await self._store_changed()
            except (RedisError, OSError, TimeoutError):
                await asyncio.sleep(BACKOFF[min(tries, len(BACKOFF) - 1)])
                tries += 1
            except Exception as exc:  # a store hiccup must not end the listening
                log.error("fleet: store change not applied: %s", exc)
                await asyncio.sleep(BEAT)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    # -- what issuers, the drain and the admin API read (memory only) -------------------------
    @property
    def connected(self) -> bool:
        return self.failure is None

    def _addresses(self) -> tuple[dict[str, list[str]], tuple[Listener, ...], str | None]:
        """URLs by transport, listeners and TLS name, read again when the URLs change."""
        uris = self._public_uris()
        if self._addressed is None or self._addressed[0] != uris:
            listeners, tls_name = listeners_of(uris, self._own_ips)
            self._addressed = (uris, urls_by_transport(uris), listeners, tls_name)
        _, urls, listeners, tls_name = self._addressed
        return urls, listeners, tls_name

    def me(self) -> NodeInfo:
        """This node as it stands now."""
        urls, listeners, tls_name = self._addresses()
        return NodeInfo(
            id=self.node_id,
            region=self.region,
            instance=self.instance,
            version=self.version,
            state=self.state,
            at=time.time(),
            started=self.started,
            urls=urls,
            listeners=listeners,
            tls_name=tls_name,
            load=self._load,
            quota=self._quota_local,
        )

    def nodes(self) -> list[NodeInfo]:
        """The fleet as last read, this node as it is now; while Redis is down, this node
        alone."""
        others = [] if self.failure else [n for n in self._others.values() if n.id != self.node_id]
        return sorted([self.me(), *others], key=lambda n: (n.region, n.id))

    def regions(self) -> set[str]:
        return {n.region for n in self.nodes()}

    def alternate(self, family: int, transport: str) -> Alternate | None:
        """A healthy serving node of this region with a ``transport`` listener of ``family``:
        the least loaded one (see :class:`~iceward.server.drain.AlternateSource`)."""
        version = family_number(family)
        now = time.time()
        best: tuple[tuple[int, float, float], Listener, NodeInfo] | None = None
        for node in healthy(self.nodes(), now):
            if node.id == self.node_id or node.region != self.region:
                continue
            for listener in node.listeners:
                if listener.transport == transport and listener.version == version:
                    if best is None or node.load.rank() < best[0]:
                        best = (node.load.rank(), listener, node)
                    break
        if best is None:
            return None
        _, listener, node = best
        domain = node.tls_name if transport == "tls" else None
        return Alternate((listener.ip, listener.port), domain)

    def status(self) -> dict[str, Any]:
        """For ``/readyz`` and ``GET /admin/v1/fleet``."""
        doc: dict[str, Any] = {
            "cluster": redacted(self.url),
            "nodeId": self.node_id,
            "region": self.region,
            "state": self.state,
            "redis": "connected" if self.failure is None else "unreachable",
        }
        if self.failure is not None:
            doc["reason"] = f"Redis unreachable ({self.failure}): issuing from this node only"
        elif self._conflict is not None:
            doc["reason"] = self._conflict
        return doc

    # -- the heartbeat -------------------------------------------------------------------------
    async def _run(self) -> None:
        tries = 0
        while True:
            delay = BEAT
            try:
                await self._update_load()
                holder = await self._publish()
                self._up()
                tries = 0
                if holder is not None:
                    self._conflicted(holder)
            except (RedisError, OSError, TimeoutError) as exc:
                self._down(exc)
                delay = BACKOFF[min(tries, len(BACKOFF) - 1)]
                tries += 1
            except Exception as exc:  # a heartbeat must never end the server
                log.error("fleet: heartbeat failed: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _update_load(self) -> None:
        try:
            snap = await self._snapshot()
        except Exception as exc:  # the last load stands
            log.debug("fleet: no load reading: %s", exc)
            return
        self._load = self._meter.measure(snap, time.monotonic())
        if self._quota is not None:
            self._quota_local = self._quota.local_buckets()

    async def _claim(self) -> NodeInfo | None:
        """The first beat; the live node holding this id, if one does."""
        holder = await self._publish()
        if holder is None:
            return None
        first = holder.at
        deadline = time.monotonic() + FRESH_FOR + BEAT
        log.info("fleet: node id %s is held; waiting whether its holder still beats", self.node_id)
        while holder is not None and holder.at == first and time.monotonic() < deadline:
            await asyncio.sleep(CLAIM_POLL)
            holder = await self._publish()
        return holder

    async def _publish(self) -> NodeInfo | None:
        """One beat; the node that holds this id when it is not this process, else None."""
        me = self.me()
        ok, docs = await asyncio.wait_for(
            self._beat(
                keys=[NODE_KEY + self.node_id, INDEX_KEY],
                args=[self.node_id, self.instance, me.encode(), int(FRESH_FOR * 1000), NODE_KEY],
            ),
            REDIS_TIMEOUT * 2,
        )
        if not ok:
            return NodeInfo.decode(docs) or me
        nodes = (NodeInfo.decode(d) for d in docs)
        self._others = {n.id: n for n in nodes if n is not None}
        self._conflict = None
        self._share_quota()
        return None

    def _share_quota(self) -> None:
        """The other nodes' per-user counts (fresh heartbeats only) to the local ledger."""
        if self._quota is None:
            return
        remote: dict[int, int] = {}
        now = time.time()
        for node in self._others.values() if self.failure is None else ():
            if node.id != self.node_id and node.fresh(now):
                for bucket, n in node.quota.items():
                    remote[bucket] = remote.get(bucket, 0) + n
        self._quota.set_remote(remote)

    def _taken_message(self, holder: NodeInfo) -> str:
        return (
            f"node id {self.node_id!r} is already in the fleet at {redacted(self.url)} "
            f"(a live node in region {holder.region}, heartbeat {holder.age(time.time()):.1f} s "
            "ago): give each node its own --node-id"
        )

    def _conflicted(self, holder: NodeInfo) -> None:
        message = "another process took node id " + repr(self.node_id) + ": not published"
        if self._conflict is None:
            log.error("fleet: %s (%s)", message, self._taken_message(holder))
        self._conflict = message

    def _up(self) -> None:
        self.beats["ok"] += 1
        if self.failure is not None:
            log.warning(
                "fleet: Redis at %s answers again: node %s is back in the fleet",
                redacted(self.url),
                self.node_id,
            )
        self.failure = None

    def _down(self, exc: BaseException) -> None:
        reason = str(exc) or type(exc).__name__
        self.beats["failed"] += 1
        if self.failure is None:
            log.error(
                "fleet: Redis at %s unreachable (%s): relaying goes on; issuing from this node "
                "only until it answers",
                redacted(self.url),
                reason,
            )
        self.failure = reason
        self._others = {}
        self._share_quota()  # the others unknown: this node's own counts alone
