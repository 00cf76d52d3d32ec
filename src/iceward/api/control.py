"""What the HTTP API needs from a running server, and nothing more.

A one-process server and the supervisor of several workers both provide it
(:mod:`iceward.server`); the API cannot tell them apart and imports neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from iceward.snapshot import Snapshot


class ServerControl(Protocol):
    @property
    def realm(self) -> str:
        """The TURN realm: static users added through the API get keys for it."""
        ...

    @property
    def data_dir(self) -> Path: ...

    @property
    def listening(self) -> bool:
        """The TURN listeners are bound and served."""
        ...

    def public_uris(self) -> list[str]:
        """The STUN/TURN URLs handed to clients."""
        ...

    async def secret_for_minting(self) -> str | None:
        """The shared secret new credentials are signed with, once every relaying process
        agrees on the secrets; None when there is none."""
        ...

    def workers_up(self) -> tuple[int, int]:
        """(processes relaying now, processes configured)."""
        ...

    def worker_status(self) -> list[dict[str, Any]]:
        """Each relaying process: index, pid, up, restarts, its relay ports."""
        ...

    async def metrics_snapshot(self) -> Snapshot: ...

    async def allocation_report(self) -> list[dict[str, Any]]:
        """Live allocations with their traffic (see the admin API)."""
        ...

    async def delete_allocation(self, allocation_id: int) -> bool: ...

    async def store_changed(self) -> None:
        """Users or secrets changed through the API: apply them now, not at the next tick."""
        ...

    async def drain(self) -> None:
        """Start draining (again: nothing changes): new allocations go to an alternate server,
        existing ones go on, the server exits when the last ends or at the drain timeout."""
        ...

    def drain_status(self) -> dict[str, Any]:
        """``state`` (``serving`` or ``draining``), ``since``, ``deadline``, the timeout."""
        ...
