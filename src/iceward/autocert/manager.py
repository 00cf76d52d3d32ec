"""When to ask the CA, and what to do with the answer: one task on the server's event loop.

It sleeps until the live certificate is due (``--acme-renew-before`` days before expiry, never
in the first half of its life; at once when only the placeholder is there, or the domains or
the CA changed), runs the order in a thread, swaps the new pair into the running TLS contexts (the
callback, which reloads the files as SIGHUP does: open connections keep their session, new
ones get the new certificate) and counts the outcome. A failure is logged in one line and
retried with exponential backoff; nothing it raises ends the server.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from iceward.autocert.client import AcmeFailure, OrderSpec, obtain
from iceward.autocert.files import AcmeFiles, LiveCertificate, read_live, utc

log = logging.getLogger("iceward.acme")

#: Seconds before the first retry after a failure; doubled each time, up to RETRY_MAX.
RETRY_FIRST = 60.0
RETRY_MAX = 6 * 3600.0
#: Longest single sleep: the schedule is checked again at least this often.
MAX_SLEEP = 12 * 3600.0
#: ``iceward_acme_renewals_total`` outcomes.
OUTCOMES = ("success", "failure")


_T = TypeVar("_T")


async def _in_daemon_thread(function: Callable[..., _T], *args: Any) -> _T:
    """``function(*args)`` in a daemon thread: a server stopping while an order waits on the CA
    exits at once instead of joining the thread (as the loop's default executor would)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]  # None only with an error

    def run() -> None:
        result: _T | None = None
        error: BaseException | None = None
        try:
            result = function(*args)
        except BaseException as exc:
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed meanwhile: the server stopped
            pass

    threading.Thread(target=run, name="acme-order", daemon=True).start()
    return await future


def retry_delay(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1, 2, ...)."""
    return float(min(RETRY_MAX, RETRY_FIRST * 2 ** (failures - 1)))


class CertificateManager:
    def __init__(
        self,
        spec: OrderSpec,
        files: AcmeFiles,
        renew_before: float,
        swap: Callable[[], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``renew_before`` in seconds; ``swap()`` makes the TLS listeners load the files."""
        self.spec = spec
        self.files = files
        self.renew_before = renew_before
        self.swap = swap
        self.clock = clock
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self._failures = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def due_in(self, live: LiveCertificate | None) -> float:
        """Seconds until the certificate must be renewed (0: now: none yet, the placeholder,
        another set of domains, or another CA, such as a move from a staging CA)."""
        if live is None or live.self_signed or not set(self.spec.domains) <= live.names:
            return 0.0
        if self.files.issued_by() != self.spec.directory:
            return 0.0
        return max(0.0, live.renew_at(self.renew_before) - self.clock())

    async def _run(self) -> None:
        while True:
            wait = self.due_in(read_live(self.files.cert))
            if wait > 0:
                await asyncio.sleep(min(wait, MAX_SLEEP))
                continue
            await self.renew_once()

    async def renew_once(self) -> bool:
        """One order, then the swap; on failure, the backoff sleep. True if obtained."""
        domains = ", ".join(self.spec.domains)
        log.info("requesting a certificate for %s from %s", domains, self.spec.directory)
        try:
            await _in_daemon_thread(obtain, self.spec, self.files)
        except Exception as exc:  # AcmeFailure says why; anything else is a surprise, also kept
            why = str(exc) if isinstance(exc, AcmeFailure) else f"unexpected {exc!r}"
            self.outcomes["failure"] += 1
            self._failures += 1
            delay = retry_delay(self._failures)
            log.error(
                "certificate for %s not obtained: %s; retrying in %.0f s", domains, why, delay
            )
            await asyncio.sleep(delay)
            return False
        self._failures = 0
        self.outcomes["success"] += 1
        self.swap()
        live = read_live(self.files.cert)
        if live is not None:
            log.info(
                "certificate for %s installed: valid until %s, renewal from %s",
                domains, utc(live.not_after), utc(live.renew_at(self.renew_before)),
            )  # fmt: skip
        return True
