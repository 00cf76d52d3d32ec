"""Where a draining node sends a new Allocate: ALTERNATE-SERVER (and ALTERNATE-DOMAIN for TLS)
naming a healthy node of its region and family (RFC 8489 section 10 / RFC 8656 300 Try
Alternate). The answer comes from the fleet as last read, held in memory: no I/O in the call."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Alternate:
    address: tuple[str, int]  # IP literal and port of the other node's TURN listener
    domain: str | None  # its TLS name for ALTERNATE-DOMAIN, if any


class AlternateSource(Protocol):
    def alternate(self, family: int, transport: str) -> Alternate | None:
        """A serving node of this node's region for a client of ``family`` (``socket.AF_INET``
        or ``socket.AF_INET6``; 4 and 6 are read the same) on ``transport`` (``udp``, ``tcp``
        or ``tls``), or None when there is none."""
        ...


def family_number(family: int) -> int:
    """``socket.AF_INET``/``AF_INET6`` (or 4/6) as the IP version, 4 or 6; 0 if neither."""
    if family in (socket.AF_INET, 4):
        return 4
    if family in (socket.AF_INET6, 6):
        return 6
    return 0
