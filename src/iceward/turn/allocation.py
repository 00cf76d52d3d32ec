"""An allocation and what hangs off it: relayed addresses, permissions, channels, counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class FiveTuple:
    """Client side of an allocation: transport ("udp", "tcp", "tls"), client and server address."""

    transport: str
    client: Address
    server: Address

    @property
    def is_stream(self) -> bool:
        return self.transport != "udp"

    def __str__(self) -> str:
        return f"{self.transport}:{self.client[0]}:{self.client[1]}"


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Relay:
    """A relay as the core sees it: an opaque id chosen by the I/O adapter (which alone knows the
    socket behind it), its family, and the address peers are told."""

    id: int
    family: int
    relayed_address: Address


#: What :meth:`TrafficCounters.as_dict` reports (the admin API's ``traffic``).
COUNTED = (
    "bytes_to_client",
    "bytes_to_peer",
    "packets_to_client",
    "packets_to_peer",
    "dropped_to_client",
    "dropped_to_peer",
)


class TrafficCounters:
    """Bytes and packets both ways; shared with the forwarding path, which increments them.

    With a bandwidth limit (``limiter``), ``budget_to_*`` are the bytes each direction may
    still relay before the limiter is asked for more: the forwarding path only subtracts and
    compares; the limiter refills them and counts what it drops in ``dropped_to_*``. Without
    one the forwarding path touches neither."""

    __slots__ = (*COUNTED, "budget_to_client", "budget_to_peer", "limiter")

    def __init__(self) -> None:
        self.packets_to_peer = 0
        self.bytes_to_peer = 0
        self.packets_to_client = 0
        self.bytes_to_client = 0
        self.dropped_to_peer = 0
        self.dropped_to_client = 0
        self.budget_to_peer = float("inf")
        self.budget_to_client = float("inf")
        self.limiter: BandwidthLimit | None = None

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTED}


class BandwidthLimit(Protocol):
    """Refills a direction's budget when the forwarding path has spent it."""

    #: Bytes per second each direction.
    rate: float

    def earn(self, counters: TrafficCounters, to_peer: bool) -> float:
        """Add what the rate earned since the last top-up; the direction's budget now (a
        stream, which cannot drop, waits while it is negative)."""
        ...

    def refill(self, counters: TrafficCounters, to_peer: bool, wanted: int) -> bool:
        """Add to the budget of a direction short of ``wanted`` bytes (already subtracted);
        False: the datagram is dropped (its bytes given back and the drop counted)."""
        ...


@dataclass(slots=True)
class Channel:
    number: int
    peer: Address
    expires: float
    #: Owned by the forwarding path once installed (see ``ChannelInstalled``).
    allocation: Allocation


@dataclass(slots=True)
class Allocation:
    #: Unique within the server process, for the admin API.
    id: int
    five_tuple: FiveTuple
    username: str
    account: str
    #: The key that authenticated the Allocate: later requests must verify with the same one.
    key: bytes
    algorithm: int
    relays: dict[int, Relay]
    expires: float
    created: float
    transaction_id: bytes
    allocate_response: bytes
    dont_fragment: bool = False
    #: RFC 6062: the relayed address is a TCP listener (no channels, no Send indications).
    tcp: bool = False
    permissions: dict[str, float] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    channels_by_peer: dict[Address, Channel] = field(default_factory=dict)
    counters: TrafficCounters = field(default_factory=TrafficCounters)
    #: Deadline the timer heap holds for this allocation (to avoid duplicate heap entries).
    scheduled: float = float("inf")
    alive: bool = True

    def next_deadline(self) -> float:
        deadline = self.expires
        for t in self.permissions.values():
            deadline = min(deadline, t)
        for ch in self.channels.values():
            deadline = min(deadline, ch.expires)
        return deadline

    def has_permission(self, host: str, now: float) -> bool:
        expires = self.permissions.get(host)
        return expires is not None and expires > now
