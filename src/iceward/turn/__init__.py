"""Sans-IO TURN server core (RFC 8656): allocations, permissions, channels, auth, peer policy."""

from iceward.turn.allocation import Allocation, Channel, FiveTuple, TrafficCounters
from iceward.turn.auth import CredentialStore, NonceManager
from iceward.turn.policy import PeerPolicy
from iceward.turn.server import RelayAllocator, RelayUnavailable, TurnConfig, TurnServer

__all__ = [
    "Allocation",
    "Channel",
    "CredentialStore",
    "FiveTuple",
    "NonceManager",
    "PeerPolicy",
    "RelayAllocator",
    "RelayUnavailable",
    "TrafficCounters",
    "TurnConfig",
    "TurnServer",
]
