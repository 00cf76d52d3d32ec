"""Draining a node before it stops: where its new clients go, and when it is done.

``iceward drain``, ``POST /admin/v1/drain`` and SIGUSR1 (coturn's signal) start it; nothing
stops it but the exit. While a node drains, its allocations keep relaying and refreshing, a new
Allocate is answered 300 Try Alternate naming an :class:`Alternate` (or 508 when none is known,
see :mod:`iceward.turn.drain`), ``/readyz`` answers 503 so load balancers stop sending, and the
node exits 0 once its last allocation has ended or after ``--drain-timeout``.

An :class:`AlternateSource` says where to send a client, by IP family (``socket.AF_INET`` or
``AF_INET6``, the family of the client's address, which ALTERNATE-SERVER must share) and
transport (``udp``, ``tcp``, ``tls``). :class:`StaticAlternates` is the one from the settings
(``--alternate-server``, ``--tls-alternate-server``). In a fleet the node's
:class:`~iceward.fleet.member.FleetMember` answers instead (the least-loaded healthy node of the
same region); worker processes get its answers as a :class:`TableAlternates`, sent again when
they change.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import socket
import time
from collections.abc import Iterator
from typing import Any, Protocol

from iceward.config import ServerSettings, parse_alternate_server
from iceward.turn.allocation import FiveTuple
from iceward.turn.drain import Alternate

__all__ = [
    "Alternate",
    "AlternateSource",
    "CoreLookup",
    "DrainState",
    "StaticAlternates",
    "TableAlternates",
    "alternate_source",
    "alternates_table",
]


class AlternateSource(Protocol):
    """Another node for a client of ``family`` (socket.AF_INET/AF_INET6) on ``transport``
    ("udp", "tcp", "tls"), or None when none is known."""

    def alternate(self, family: int, transport: str) -> Alternate | None: ...


class StaticAlternates:
    """The alternates the operator listed, taken in turn among those of the client's family
    (as coturn's ``--alternate-server`` list is): plain ones for UDP and TCP, TLS ones for TLS."""

    def __init__(self, plain: list[str], tls: list[str]) -> None:
        self._turns: dict[tuple[int, bool], Iterator[Alternate]] = {}
        for is_tls, specs in ((False, plain), (True, tls)):
            by_family: dict[int, list[Alternate]] = {}
            for spec in specs:
                ip, port, name = parse_alternate_server(spec)
                family = int(socket.AF_INET6 if ":" in ip else socket.AF_INET)
                by_family.setdefault(family, []).append(Alternate((ip, port), name))
            for family, alternates in by_family.items():
                self._turns[family, is_tls] = itertools.cycle(alternates)

    def alternate(self, family: int, transport: str) -> Alternate | None:
        turn = self._turns.get((family, transport == "tls"))
        return next(turn) if turn is not None else None


def alternate_source(settings: ServerSettings) -> AlternateSource:
    """The source a draining node asks outside a fleet: the static list of the settings."""
    return StaticAlternates(settings.alternate_server, settings.tls_alternate_server)


#: What a table of alternates covers: every family a client may come over, every transport.
_FAMILIES = (int(socket.AF_INET), int(socket.AF_INET6))
_TRANSPORTS = ("udp", "tcp", "tls")

#: One row of a table: family, transport, IP, port, TLS name (or None).
AlternateRow = tuple[int, str, str, int, str | None]


def alternates_table(source: AlternateSource) -> list[AlternateRow]:
    """What ``source`` answers now for every family and transport: for worker processes,
    which cannot ask the fleet (it lives in the supervisor) and are sent this instead."""
    rows: list[AlternateRow] = []
    for family in _FAMILIES:
        for transport in _TRANSPORTS:
            found = source.alternate(family, transport)
            if found is not None:
                rows.append((family, transport, *found.address, found.domain))
    return rows


class TableAlternates:
    """The fleet's alternates as the supervisor last read them (:func:`alternates_table`)."""

    def __init__(self, rows: list[AlternateRow] | list[list[Any]]) -> None:
        self._by: dict[tuple[int, str], Alternate] = {
            (int(family), str(transport)): Alternate((str(ip), int(port)), domain)
            for family, transport, ip, port, domain in rows
        }

    def alternate(self, family: int, transport: str) -> Alternate | None:
        return self._by.get((family, transport))


class CoreLookup:
    """The TURN core's question (a client's five-tuple) put to an :class:`AlternateSource`.

    An alternate that is the very address the client reached (a list copied to every node) is
    passed over, as coturn does, or the client would be sent round in a circle."""

    #: How many answers to ask for before concluding that only this node is known.
    TRIES = 8

    def __init__(self, source: AlternateSource) -> None:
        self.source = source

    def alternate_for(self, five_tuple: FiveTuple) -> Alternate | None:
        ip = five_tuple.client[0]
        v6 = ":" in ip and not ip.startswith("::ffff:")  # a mapped IPv4 client came over IPv4
        family = socket.AF_INET6 if v6 else socket.AF_INET
        for _ in range(self.TRIES):
            alternate = self.source.alternate(family, five_tuple.transport)
            if alternate is None or alternate.address != five_tuple.server:
                return alternate
        return None


class DrainState:
    """Whether this node drains, since when and until when: what the API, the status line and
    the watcher that ends the process all read."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        #: Unix time and monotonic deadline, once draining.
        self.since: float | None = None
        self.deadline: float | None = None
        self.started = asyncio.Event()

    @property
    def draining(self) -> bool:
        return self.since is not None

    def begin(self) -> bool:
        """Start draining; False when it had started already (the deadline stays)."""
        if self.since is not None:
            return False
        self.since = time.time()
        self.deadline = time.monotonic() + self.timeout
        self.started.set()
        return True

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def status(self) -> dict[str, Any]:
        """``{state: serving|draining, since, deadline, drainTimeoutSeconds}`` (ISO times)."""
        doc: dict[str, Any] = {
            "state": "draining" if self.draining else "serving",
            "drainTimeoutSeconds": self.timeout,
            "since": None,
            "deadline": None,
        }
        remaining = self.remaining()
        if self.since is not None and remaining is not None:
            doc["since"] = _iso(self.since)
            doc["deadline"] = _iso(time.time() + remaining)
        return doc


def _iso(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat(timespec="seconds")
