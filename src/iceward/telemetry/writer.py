"""Judged calls to the store in batches, and telemetry token use counts kept in memory.

One commit per record would cap ingestion at the disk's sync rate (SQLite: tens a second). A
record is answered once judged; :class:`CallWriter` commits what arrived in the last
``INTERVAL`` seconds (at most ``MAX_BATCH``) in one transaction from its own thread, the token
use counts with them. :class:`TokenUses` answers "may this token post again" from memory,
loaded once from the store's live counts (the HTTP API runs in one process).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from iceward.store import STORE_FAILURES, Store

log = logging.getLogger("iceward.telemetry")

INTERVAL = 0.05
MAX_BATCH = 1000
#: Bound on the records waiting for a commit (a store that stalls drops, never grows).
MAX_PENDING = 20_000
#: Tokens whose counts are kept in memory; past it the expired ones, then the oldest half go
#: (such a token may post its records again: the bound is on memory, not on abuse).
MAX_TOKENS = 100_000


class TokenUses:
    def __init__(self, store: Store, limit: int, now: float) -> None:
        self.store, self.limit = store, limit
        self._uses: dict[str, tuple[int, int]] = store.token_use_counts(now, MAX_TOKENS)
        self._lock = threading.Lock()

    def take(self, request_id: str, expires_at: int, now: float) -> tuple[int, int] | None:
        """One more use of the token: (uses now, expiry), or None when it is used up."""
        with self._lock:
            entry = self._uses.get(request_id)
            uses = entry[0] if entry is not None else 0
            if uses >= self.limit:
                return None
            if entry is None and len(self._uses) >= MAX_TOKENS:
                self._shrink(now)
            self._uses[request_id] = (uses + 1, expires_at)
            return uses + 1, expires_at

    def _shrink(self, now: float) -> None:
        self._uses = {k: v for k, v in self._uses.items() if v[1] >= now}
        if len(self._uses) >= MAX_TOKENS:
            keep = list(self._uses.items())[MAX_TOKENS // 2 :]
            self._uses = dict(keep)


class CallWriter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: queue.Queue[tuple[dict[str, Any], list[str], str, tuple[int, int]]] = (
            queue.Queue(MAX_PENDING)
        )
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(
        self, call: dict[str, Any], tags: list[str], request_id: str, uses: tuple[int, int]
    ) -> bool:
        """Queue one call (with its ``id``); False when the queue is full (the store stalls)."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="iceward-call-writer", daemon=True
                    )
                    self._thread.start()
        self._idle.clear()
        try:
            self._queue.put_nowait((call, tags, request_id, uses))
        except queue.Full:
            return False
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued call is committed (or failed); False on timeout."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._idle.set()
                continue
            batch = [first]
            deadline = time.monotonic() + INTERVAL
            while len(batch) < MAX_BATCH:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            uses: dict[str, tuple[int, int]] = {}
            for _, _, request_id, count in batch:
                if count[0] > uses.get(request_id, (0, 0))[0]:
                    uses[request_id] = count
            try:
                self.store.add_calls([(c, t) for c, t, _, _ in batch], uses, time.time())
            except STORE_FAILURES as exc:
                self.store.health.failed(exc)
                log.error("%d call records lost: the data store failed (%s)", len(batch), exc)
            if self._queue.empty():
                self._idle.set()
