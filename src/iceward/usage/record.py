"""Usage records made from live allocations: what each relayed since its last record.

Nothing here touches a socket or a packet: the forwarding paths count into each allocation's
:class:`~iceward.turn.allocation.TrafficCounters`, and the :class:`Recorder` reads them once an
interval (and once more when the allocation ends), keeping only the last values it saw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from iceward.turn.allocation import Allocation

#: Peer hosts kept per record: enough to answer "who did this call talk to".
PEERS_KEPT = 16

_FAMILIES = {1: "ipv4", 2: "ipv6"}


@dataclass(slots=True)
class UsageRecord:
    """One allocation over one period (Unix times); counters are the period's own."""

    allocation: str
    node: str
    region: str
    user: str
    username: str
    transport: str
    family: str
    started_at: float
    period_start: float
    period_end: float
    bytes_to_peer: int = 0
    bytes_to_client: int = 0
    packets_to_peer: int = 0
    packets_to_client: int = 0
    peers: list[str] = field(default_factory=list)
    final: bool = False
    reason: str = ""
    #: The record's number within its allocation (0, 1, ...): with ``allocation`` its key, so
    #: a record written twice (a stream entry handed on after a consumer died) counts once.
    seq: int = 0


@dataclass(slots=True)
class _Seen:
    started_at: float
    recorded_at: float
    seq: int = 0
    counts: tuple[int, int, int, int] = (0, 0, 0, 0)
    peers: list[str] = field(default_factory=list)


def _counts(alloc: Allocation) -> tuple[int, int, int, int]:
    c = alloc.counters
    return c.bytes_to_peer, c.bytes_to_client, c.packets_to_peer, c.packets_to_client


class Recorder:
    """Turns allocations into records of what they relayed since their previous record."""

    def __init__(self, node: str, region: str, boot: str, wall_of: Callable[[float], float]):
        """``boot`` tells this process's allocation ids from a previous run's; ``wall_of``
        turns the core's monotonic times into Unix times."""
        self.node = node
        self.region = region
        self.boot = boot
        self.wall_of = wall_of
        self._seen: dict[int, _Seen] = {}

    def interim(self, allocations: Iterable[Allocation], now: float) -> list[UsageRecord]:
        """A record per live allocation, for the period since its last one (``now``: Unix)."""
        return [self._record(alloc, now, final=False) for alloc in allocations]

    def final(self, alloc: Allocation, reason: str, now: float) -> UsageRecord:
        """The allocation's last record; the recorder forgets it."""
        record = self._record(alloc, now, final=True, reason=reason)
        self._seen.pop(alloc.id, None)
        return record

    def _record(
        self, alloc: Allocation, now: float, *, final: bool, reason: str = ""
    ) -> UsageRecord:
        seen = self._seen.get(alloc.id)
        if seen is None:
            started = self.wall_of(alloc.created)
            seen = self._seen[alloc.id] = _Seen(started, started)
        peers = seen.peers
        for host in alloc.permissions:
            if host not in peers and len(peers) < PEERS_KEPT:
                peers.append(host)
        counts = _counts(alloc)
        delta = [now_ - was for now_, was in zip(counts, seen.counts, strict=True)]
        record = UsageRecord(
            allocation=f"{self.node}/{self.boot}/{alloc.id}",
            node=self.node,
            region=self.region,
            user=alloc.account,
            username=alloc.username,
            transport=alloc.five_tuple.transport,
            family="+".join(_FAMILIES.get(f, str(f)) for f in sorted(alloc.relays)),
            started_at=seen.started_at,
            period_start=seen.recorded_at,
            period_end=max(now, seen.recorded_at),
            bytes_to_peer=delta[0],
            bytes_to_client=delta[1],
            packets_to_peer=delta[2],
            packets_to_client=delta[3],
            peers=list(peers),
            final=final,
            reason=reason,
            seq=seen.seq,
        )
        seen.seq += 1
        seen.counts = counts
        seen.recorded_at = record.period_end
        return record
