"""RFC 6062 TCP relaying: the core's table of peer connections, sans-IO.

A TCP allocation's relayed address is a listening TCP socket. Each peer connection (opened by a
Connect, or accepted from a peer with a permission) gets a CONNECTION-ID here; the client binds
it to a new data connection with ConnectionBind, after which the I/O adapter splices the two and
the core only counts. The adapter owns the sockets and the clocks of both waits the RFC sets
(:data:`CONNECT_TIMEOUT`, :data:`BIND_TIMEOUT`) and reports their outcomes back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from iceward.stun import constants as C
from iceward.stun.message import Message, StunError, parse_message
from iceward.turn.allocation import Address, Allocation, Relay

#: Seconds an outgoing connection to a peer may take before 447 (RFC 6062 5.2: at least 30).
CONNECT_TIMEOUT = 30.0
#: Seconds a peer connection waits for its ConnectionBind before it is closed (RFC 6062 5.2/5.3).
BIND_TIMEOUT = 30.0

CONNECTING = "connecting"
PENDING = "pending"
BOUND = "bound"


@dataclass(slots=True, eq=False)
class PeerConnection:
    """One TCP connection between a relayed address and a peer."""

    id: int
    allocation: Allocation
    relay: Relay
    peer: Address
    #: CONNECTING (a Connect in progress), PENDING (waiting for ConnectionBind) or BOUND.
    state: str
    #: The Connect request to answer once the outcome is known, with what signed it.
    request: tuple[Message, object] | None = None


class ConnectionRefused(Exception):
    """A new peer connection is not admitted (``code``: 446 duplicate, 508 over the cap)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class PeerConnections:
    """Every peer connection of one server (or worker), by CONNECTION-ID and by allocation."""

    def __init__(self, max_per_allocation: int, index: int = 0, count: int = 1) -> None:
        """Worker ``index`` of ``count`` makes ids equal to its index modulo the count, so a
        ConnectionBind reaching another worker tells it whose id it is (net/databind.py)."""
        self.max_per_allocation = max_per_allocation
        self._index = index
        self._count = count
        self._by_id: dict[int, PeerConnection] = {}
        self._by_allocation: dict[int, dict[Address, PeerConnection]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, connection_id: int) -> PeerConnection | None:
        return self._by_id.get(connection_id)

    def of(self, allocation_id: int) -> list[PeerConnection]:
        return list(self._by_allocation.get(allocation_id, {}).values())

    def open(
        self,
        alloc: Allocation,
        relay: Relay,
        peer: Address,
        state: str,
        request: tuple[Message, object] | None = None,
    ) -> PeerConnection:
        """A new entry; :class:`ConnectionRefused` when that peer already has one (446, RFC
        6062 5.2) or the allocation is at its cap (508)."""
        mine = self._by_allocation.setdefault(alloc.id, {})
        if peer in mine:
            raise ConnectionRefused(446, "Connection Already Exists")
        if len(mine) >= self.max_per_allocation:
            raise ConnectionRefused(508, "Too many TCP connections for this allocation")
        connection_id = 0
        while connection_id == 0 or connection_id in self._by_id:  # ids are not guessable
            drawn = int.from_bytes(os.urandom(4), "big") % ((1 << 32) // self._count)
            connection_id = drawn * self._count + self._index  # below 2**32, owner's residue
        conn = PeerConnection(connection_id, alloc, relay, peer, state, request)
        mine[peer] = conn
        self._by_id[connection_id] = conn
        return conn

    def remove(self, connection_id: int) -> PeerConnection | None:
        conn = self._by_id.pop(connection_id, None)
        if conn is not None:
            mine = self._by_allocation.get(conn.allocation.id)
            if mine is not None:
                mine.pop(conn.peer, None)
                if not mine:
                    del self._by_allocation[conn.allocation.id]
        return conn

    def drop_allocation(self, allocation_id: int) -> list[PeerConnection]:
        """The allocation ended: forget its connections (the adapter closes their sockets)."""
        gone = list(self._by_allocation.pop(allocation_id, {}).values())
        for conn in gone:
            self._by_id.pop(conn.id, None)
        return gone


_CONNECTION_BIND_REQUEST = C.CONNECTION_BIND.to_bytes(2, "big")  # the class bits of a request: 0


def bound_connection_id(data: bytes) -> int | None:
    """The CONNECTION-ID a ConnectionBind request in ``data`` names, else None."""
    if data[:2] != _CONNECTION_BIND_REQUEST:
        return None
    try:
        value = parse_message(data).get(C.CONNECTION_ID)
    except StunError:
        return None
    return int.from_bytes(value, "big") if value is not None and len(value) == 4 else None
