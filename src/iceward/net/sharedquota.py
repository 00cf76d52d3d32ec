"""Quota counts shared by the workers of one server, in memory they all map.

After the workers' rows comes one more: what the other nodes of a fleet hold, per bucket,
written by the process in the fleet (:class:`FleetRow`, from their heartbeats), so
``--user-quota`` counts a user's allocations on every node without a Redis call on the
Allocate path. Without a fleet it stays zero.

The supervisor creates the memory (a memfd every worker inherits). Each worker writes only its
own row: a total and one counter per bucket of account names, so no locks are needed; a check
reads every row. Two accounts whose names fall in the same bucket are counted together, which
can only make a per-user quota stricter, never looser; with 65,536 buckets that takes many
thousands of concurrent users to matter. Two workers allocating for one user in the same
microsecond may both pass the check: the quota may be exceeded by at most N-1 at that instant.
"""

from __future__ import annotations

import array
import hashlib
import mmap
import os

BUCKETS = 65536
_ROW = BUCKETS + 1  # slot 0: the worker's total
_ITEM = 4  # uint32


def _size(workers: int) -> int:
    """The workers' rows and the fleet's."""
    return (workers + 1) * _ROW * _ITEM


def create_memory(workers: int) -> int:
    """A file descriptor of zeroed shared memory sized for ``workers`` rows and the fleet's."""
    fd = os.memfd_create("iceward-quota", 0)
    os.ftruncate(fd, _size(workers))
    return fd


def clear_row(fd: int, workers: int, index: int) -> None:
    """Forget what worker ``index`` held (it died; its allocations are gone)."""
    with mmap.mmap(fd, _size(workers)) as mem:
        start = index * _ROW * _ITEM
        mem[start : start + _ROW * _ITEM] = bytes(_ROW * _ITEM)


def _bucket(account: str) -> int:
    digest = hashlib.blake2b(account.encode(), digest_size=4).digest()
    return 1 + int.from_bytes(digest, "little") % BUCKETS


class SharedQuota:
    """The :class:`iceward.turn.quota.QuotaLedger` of worker ``index`` of ``workers``."""

    def __init__(self, fd: int, workers: int, index: int) -> None:
        self._mem = mmap.mmap(fd, _size(workers))
        self._cells = memoryview(self._mem).cast("I")
        self._rows = [i * _ROW for i in range(workers)]
        self._own = index * _ROW
        self._fleet = workers * _ROW

    def count(self, account: str) -> int:
        """On every worker, and on the other nodes of a fleet (as of their last heartbeat)."""
        bucket = _bucket(account)
        cells = self._cells
        return sum(cells[row + bucket] for row in self._rows) + cells[self._fleet + bucket]

    def total(self) -> int:
        cells = self._cells
        return sum(cells[row] for row in self._rows)

    def added(self, account: str) -> None:
        self._cells[self._own] += 1
        self._cells[self._own + _bucket(account)] += 1

    def removed(self, account: str) -> None:
        cell = self._own + _bucket(account)
        if self._cells[cell] > 0:
            self._cells[cell] -= 1
        if self._cells[self._own] > 0:
            self._cells[self._own] -= 1

    def close(self) -> None:
        self._cells.release()
        self._mem.close()


class FleetRow:
    """The fleet's side of the memory: what this node's workers hold per bucket (for its
    heartbeat), and what the other nodes hold (from theirs), which every worker's
    :meth:`SharedQuota.count` adds."""

    def __init__(self, fd: int, workers: int) -> None:
        self._mem = mmap.mmap(fd, _size(workers))
        self._workers = workers

    def local_buckets(self) -> dict[int, int]:
        """Allocations this node's workers hold, by bucket; buckets with none left out."""
        totals: dict[int, int] = {}
        for worker in range(self._workers):
            start = worker * _ROW * _ITEM
            row = array.array("I", self._mem[start + _ITEM : start + _ROW * _ITEM])
            for bucket, n in enumerate(row, 1):
                if n:
                    totals[bucket] = totals.get(bucket, 0) + n
        return totals

    def set_remote(self, counts: dict[int, int]) -> None:
        """What the other nodes hold now, by bucket (replacing what they held before)."""
        start = self._workers * _ROW * _ITEM
        row = array.array("I", bytes(_ROW * _ITEM))
        for bucket, n in counts.items():
            if 0 < bucket <= BUCKETS:
                row[bucket] = min(n, 0xFFFFFFFF)
        self._mem[start : start + _ROW * _ITEM] = row.tobytes()

    def close(self) -> None:
        self._mem.close()
