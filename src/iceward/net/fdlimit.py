"""File descriptors: the open-files limit raised at start, and running out of them told once.

systemd starts services with a soft ``RLIMIT_NOFILE`` of 1024 (hard 524288): every TCP/TLS
connection and every relay socket is a descriptor, so the soft limit alone caps a server at about
a thousand allocations. :func:`raise_open_files_limit` lifts it to the hard limit.

When descriptors do run out, asyncio's own accept loop reports every failed ``accept()`` to the
loop's exception handler ("socket.accept() out of system resource", with a traceback, up to its
backlog of 100 per retry) and leaves the waiting connections in the backlog; uvloop (libuv) sheds
them and says nothing. The TURN listeners accept through
:class:`~iceward.net.stream.StreamAcceptor`, which sheds with :meth:`FdPressure.shed` and
reports here; the loop's exception handler routes what other listeners (the HTTP API) run into
here too. :class:`FdPressure` makes of all that one warning, then at most one summary a minute,
and counts every event (``iceward_dropped{reason="fd_pressure"}``). The connection sweep also
probes for a free descriptor once a period, so running out shows even when nothing fails loudly.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("iceward.server")

#: errno values that mean "no descriptor left", for this process or the whole system.
FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one; log the figures once; (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # the kernel still stops at fs.nr_open
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("open files limit stays at %d (hard %s): %s", soft, _fmt(hard), exc)
            return soft, hard
        log.info("open files limit raised from %d to %d (the hard limit)", soft, target)
        return target, hard
    log.info("open files limit %s (hard %s)", _fmt(soft), _fmt(hard))
    return soft, hard


def _fmt(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


class Throttled:
    """A log line for the first event, then at most one summary per ``interval`` with a count.

    Call :meth:`flush` now and then (the connection sweep does, every second) so a summary comes
    out even when the events stop.
    """

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        what: str,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.level = level
        self.what = what
        self.interval = interval
        self.clock = clock
        #: Every event ever counted (what the metrics see is kept by the caller).
        self.total = 0
        self._pending = 0
        self._latest = ""
        self._last: float | None = None

    def event(self, detail: str, count: int = 1) -> None:
        self.total += count
        now = self.clock()
        if self._pending == 0 and (self._last is None or now - self._last >= self.interval):
            self.logger.log(self.level, "%s: %s", self.what, detail)
            self._last = now
        else:
            self._pending += count
            self._latest = detail

    def flush(self) -> None:
        if not self._pending or self._last is None:
            return
        now = self.clock()
        if now - self._last < self.interval:
            return
        self.logger.log(
            self.level,
            "%s: %d more in the last %.0f s (latest: %s)",
            self.what,
            self._pending,
            now - self._last,
            self._latest,
        )
        self._pending = 0
        self._last = now


class FdPressure:
    """Running out of file descriptors, reported once and counted, whoever runs into it."""

    def __init__(self) -> None:
        self.log = Throttled(
            log,
            logging.WARNING,
            "out of file descriptors (new connections and relay sockets fail)",
        )
        self.counters: Counter[str] | None = None
        self._loops: set[int] = set()
        self._spare: int | None = None

    @property
    def total(self) -> int:
        return self.log.total

    def note(self, where: str, exc: BaseException | None = None, count: int = 1) -> None:
        """``count`` failures to get a descriptor at ``where``."""
        detail = where if exc is None else f"{where}: {exc}"
        if self.counters is not None:
            self.counters["drop.fd_pressure"] += count
        self.log.event(detail, count)

    def probe(self) -> bool:
        """Can this process open one more descriptor? If not, that is an event too.

        uvloop reports no accept failure at all: this is how its fd exhaustion is seen.
        """
        try:
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in FD_ERRNOS:
                self.note("no descriptor free", exc)
                return False
            return True
        os.close(fd)
        return True

    def flush(self) -> None:
        self.log.flush()

    def reserve(self) -> None:
        """Hold one spare descriptor for :meth:`shed` (once per process)."""
        if self._spare is None:
            try:
                self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._spare = None

    def shed(self, listener: socket.socket, limit: int = 4096) -> int | None:
        """accept() failed for want of a descriptor: let the spare go, accept and close at once
        every connection waiting on ``listener`` (their clients learn now, instead of hanging in
        the backlog until they time out), take the spare back. How many were shed, or None
        without a spare."""
        if self._spare is None:
            self.reserve()  # one may have come free since; use it next time
            return None
        os.close(self._spare)
        self._spare = None
        shed = 0
        try:
            while shed < limit:
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except ConnectionAbortedError:
                    continue
                except OSError:
                    break
                conn.close()
                shed += 1
        finally:
            self.reserve()
        return shed

    def install(self, loop: asyncio.AbstractEventLoop, counters: Counter[str] | None) -> None:
        """Take over the loop's reports of descriptor exhaustion; count them in ``counters``."""
        if counters is not None:
            self.counters = counters
        if id(loop) in self._loops:
            return
        self._loops.add(id(loop))
        previous = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            if isinstance(exc, OSError) and exc.errno in FD_ERRNOS:
                self.note(str(context.get("message") or "event loop"), exc)
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)


#: The one per process: listeners, relay sockets and the HTTP API all draw on the same table.
PRESSURE = FdPressure()


def note_pressure(where: str, exc: BaseException | None = None) -> None:
    """A descriptor could not be had at ``where`` (e.g. a relay socket): counted, logged once."""
    PRESSURE.note(where, exc)
