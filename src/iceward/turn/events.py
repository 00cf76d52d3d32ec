"""What the TURN core asks its I/O adapter to do, and what it tells it changed."""

from __future__ import annotations

from dataclasses import dataclass

from iceward.turn.allocation import Address, Allocation, Channel, FiveTuple, Relay
from iceward.turn.tcprelay import PeerConnection


@dataclass(slots=True)
class ToClient:
    """Send ``data`` to the client on the transport of ``five_tuple``."""

    five_tuple: FiveTuple
    data: bytes


@dataclass(slots=True)
class ToPeer:
    """Send ``data`` from ``relay`` to ``peer``."""

    relay: Relay
    peer: Address
    data: bytes
    dont_fragment: bool = False


@dataclass(slots=True)
class AllocationCreated:
    allocation: Allocation


@dataclass(slots=True)
class AllocationRemoved:
    """The allocation ended (``reason``: refresh, expired, connection closed, admin)."""

    allocation: Allocation
    reason: str


@dataclass(slots=True)
class ChannelInstalled:
    """Forwarding entry (client, channel) <-> (relay, peer) may be served without the core."""

    channel: Channel


@dataclass(slots=True)
class ChannelRemoved:
    """Forwarding entry to drop: the channel expired or its allocation ended."""

    channel: Channel


@dataclass(slots=True)
class AuthRefused:
    """A request failed authentication (counted by reason in the core's counters; logged, with
    care for floods, by the adapter)."""

    five_tuple: FiveTuple
    username: str
    reason: str


@dataclass(frozen=True, slots=True)
class PeerRefused:
    """A request named a peer the policy refuses (logged with the reason by the adapter)."""

    five_tuple: FiveTuple
    username: str
    peer: str
    reason: str


@dataclass(slots=True)
class PeerConnect:
    """RFC 6062 Connect: open a TCP connection from the relayed address to ``connection.peer``
    and report the outcome with ``TurnServer.connect_result``."""

    connection: PeerConnection


@dataclass(slots=True)
class DataConnectionBound:
    """RFC 6062 ConnectionBind succeeded: after its response, the client connection
    ``five_tuple`` stops carrying STUN and carries ``connection``'s bytes both ways."""

    connection: PeerConnection
    five_tuple: FiveTuple


Output = (
    ToClient
    | ToPeer
    | AllocationCreated
    | AllocationRemoved
    | ChannelInstalled
    | ChannelRemoved
    | PeerRefused
    | AuthRefused
    | PeerConnect
    | DataConnectionBound
)
