"""What the metrics endpoint reads from a server: one process's figures, or several summed.

A worker builds its snapshot from live state, sends it to the supervisor as JSON, and the
supervisor adds the workers' snapshots together, so ``/metrics`` shows the whole server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The usage records a process holds in memory for the fleet's stream (a level, not a total).
USAGE_QUEUED = "usage.queued"
#: Counters that are levels: what a process holds now, gone with it when it ends.
LEVELS = frozenset({USAGE_QUEUED})


@dataclass(slots=True)
class Snapshot:
    #: (direction, transport) -> (packets, bytes), ended allocations included.
    traffic: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    #: (transport, family name) -> allocations alive.
    active: dict[tuple[str, str], int] = field(default_factory=dict)
    #: transport -> allocations created.
    created: dict[str, int] = field(default_factory=dict)
    #: The core's event counters: request.*, error.*, auth.*, peer.refused.*, drop.*.
    counters: dict[str, int] = field(default_factory=dict)
    ports_in_use: int = 0
    ports_total: int = 0
    #: DNS name -> not-after (Unix time) of the TLS certificate served for it.
    certificates: dict[str, float] = field(default_factory=dict)

    def add(self, other: Snapshot) -> None:
        for key, (packets, nbytes) in other.traffic.items():
            p, b = self.traffic.get(key, (0, 0))
            self.traffic[key] = (p + packets, b + nbytes)
        for k2, n in other.active.items():
            self.active[k2] = self.active.get(k2, 0) + n
        for k1, n in other.created.items():
            self.created[k1] = self.created.get(k1, 0) + n
        for k1, n in other.counters.items():
            self.counters[k1] = self.counters.get(k1, 0) + n
        self.ports_in_use += other.ports_in_use
        self.ports_total += other.ports_total
        self.certificates.update(other.certificates)

    def totals(self) -> Snapshot:
        """What a process that ended leaves to the sums: its totals (traffic, allocations
        created, event counters) so they never go backwards; not its levels."""
        counters = {k: n for k, n in self.counters.items() if k not in LEVELS}
        return Snapshot(traffic=dict(self.traffic), created=dict(self.created), counters=counters)

    def to_json(self) -> dict[str, Any]:
        return {
            "traffic": [[d, t, p, b] for (d, t), (p, b) in self.traffic.items()],
            "active": [[t, f, n] for (t, f), n in self.active.items()],
            "created": self.created,
            "counters": self.counters,
            "ports": [self.ports_in_use, self.ports_total],
            "certificates": self.certificates,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        return cls(
            traffic={(str(d), str(t)): (int(p), int(b)) for d, t, p, b in data["traffic"]},
            active={(str(t), str(f)): int(n) for t, f, n in data["active"]},
            created={str(k): int(v) for k, v in data["created"].items()},
            counters={str(k): int(v) for k, v in data["counters"].items()},
            ports_in_use=int(data["ports"][0]),
            ports_total=int(data["ports"][1]),
            certificates={str(k): float(v) for k, v in data.get("certificates", {}).items()},
        )
