"""Where a draining node sends a new Allocate: ALTERNATE-SERVER (and ALTERNATE-DOMAIN for TLS)
naming a healthy node of its region and family (RFC 8489 section 10 / RFC 8656 300 Try
Alternate). The answer comes from the fleet as last read, held in memory: no I/O in the call
(:meth:`~iceward.fleet.member.FleetMember.alternate`, an ``AlternateSource`` as
:mod:`iceward.server.drain` asks). :class:`Alternate` is the core's own (``turn.drain``)."""

from __future__ import annotations

import socket

from iceward.turn.drain import Alternate

__all__ = ["Alternate", "family_number"]


def family_number(family: int) -> int:
    """``socket.AF_INET``/``AF_INET6`` (or 4/6) as the IP version, 4 or 6; 0 if neither."""
    if family in (socket.AF_INET, 4):
        return 4
    if family in (socket.AF_INET6, 6):
        return 6
    return 0
