"""Allocation counts the quotas are checked against: per account and in all.

One process keeps them in a :class:`LocalQuota`. Workers of one server share a
:class:`iceward.net.sharedquota.SharedQuota` instead, so ``--user-quota`` and ``--total-quota``
hold for the whole server, not per worker.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol


class QuotaLedger(Protocol):
    def count(self, account: str) -> int:
        """Allocations ``account`` holds now."""
        ...

    def total(self) -> int:
        """Allocations held now, by everyone."""
        ...

    def added(self, account: str) -> None: ...

    def removed(self, account: str) -> None: ...


class LocalQuota:
    """The counts of one process."""

    def __init__(self) -> None:
        self._per_account: Counter[str] = Counter()
        self._total = 0

    def count(self, account: str) -> int:
        return self._per_account[account]

    def total(self) -> int:
        return self._total

    def added(self, account: str) -> None:
        self._per_account[account] += 1
        self._total += 1

    def removed(self, account: str) -> None:
        self._total -= 1
        self._per_account[account] -= 1
        if self._per_account[account] <= 0:
            del self._per_account[account]
