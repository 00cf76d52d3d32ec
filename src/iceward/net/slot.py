"""What one worker process is given: its place among the workers and its sockets."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

#: Allocation ids of successive launches of one worker stay apart by this many ids per worker.
ID_SPAN = 1_000_000


@dataclass(slots=True)
class WorkerSlot:
    #: This worker's index, 0..count-1: its socket in every listening group.
    index: int
    count: int
    #: How many times this slot was started before (allocation ids differ after a restart).
    generation: int
    #: The key every worker signs nonces with, so a nonce from one verifies in any other.
    nonce_key: bytes
    #: This worker's own slice of the relay port range.
    relay_ports: tuple[int, int]
    udp: list[socket.socket] = field(default_factory=list)
    tcp: list[socket.socket] = field(default_factory=list)
    tls: list[socket.socket] = field(default_factory=list)
    tls_files: tuple[Path, Path] | None = None
    #: Shared quota memory (see :mod:`iceward.net.sharedquota`); None: counts are local.
    quota_fd: int | None = None
    #: Prefix of the workers' Unix socket names for EVEN-PORT reservations (see handoff.py).
    handoff_name: str | None = None

    @property
    def first_id(self) -> int:
        return 1 + self.index + self.count * ID_SPAN * self.generation


def relay_slice(port_range: tuple[int, int], count: int, index: int) -> tuple[int, int]:
    """Worker ``index``'s disjoint share of ``port_range`` (whole even/odd pairs each)."""
    lo, hi = port_range
    pairs = (hi - lo + 1) // 2
    if pairs < count:
        raise ValueError(
            f"relay port range {lo}-{hi} is too small for {count} workers (2 ports each at least)"
        )
    start = lo + 2 * (pairs * index // count)
    end = lo + 2 * (pairs * (index + 1) // count) - 1
    if index == count - 1:
        end = hi
    return start, end
