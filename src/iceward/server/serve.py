"""``iceward serve``: the server the settings ask for, run until a signal stops it."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from iceward.config import ServerSettings
from iceward.net.notify import SystemdNotifier
from iceward.server.plan import plan
from iceward.server.process import check_before_start
from iceward.server.single import SingleServer
from iceward.server.workers import Supervisor

Server = SingleServer | Supervisor


def build(settings: ServerSettings) -> Server:
    """The server the settings ask for (not started); OSError when they cannot work."""
    server_plan = plan(settings)
    check_before_start(server_plan)
    if server_plan.workers == 1:
        return SingleServer(server_plan)
    try:
        return Supervisor(server_plan)
    except ValueError as exc:  # a relay range too small for the workers
        raise OSError(str(exc)) from None


async def run(settings: ServerSettings, ready: Callable[[Server], None]) -> None:
    """Start, call ``ready``, serve until SIGTERM or SIGINT, stop cleanly; SIGHUP reloads;
    SIGUSR1 drains (as ``POST /admin/v1/drain`` does), then stops once drained.

    Under systemd (``Type=notify``) it says so: ``READY=1`` once every socket (the HTTP API's
    too) is bound and every worker up, ``STATUS=`` with the allocations and workers up,
    ``WATCHDOG=1`` when ``WatchdogSec=`` asks, ``RELOADING=1`` around SIGHUP and ``STOPPING=1``
    at stop. Only this process (the supervisor, with workers) notifies.
    """
    server = build(settings)
    notifier = SystemdNotifier()
    await server.start()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def stop() -> None:
        if not stopping:
            logging.getLogger("iceward.server").info("stopping")
            notifier.stopping()
            stopping.append(loop.create_task(server.stop()))

    def reload() -> None:
        notifier.reloading()
        server.reload()
        notifier.notify("READY=1")

    def drain() -> None:
        if not stopping:
            tasks.append(loop.create_task(server.drain()))

    tasks: list[asyncio.Task[None]] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGUSR1, drain)
    ready(server)
    tasks.append(loop.create_task(_stop_when_drained(server, stop)))
    if notifier.enabled:
        notifier.ready(await status_line(server))
        tasks.append(loop.create_task(_report_status(server, notifier, stopping)))
        if notifier.watchdog_interval is not None:
            tasks.append(loop.create_task(_keep_watchdog(notifier, notifier.watchdog_interval)))
    try:
        await server.wait_stopped()
    finally:
        for task in tasks:
            task.cancel()


#: Seconds between two STATUS= updates (sent when the line changed).
STATUS_PERIOD = 2.0
#: Seconds between two counts of the allocations left while draining.
DRAIN_POLL = 0.5


async def _stop_when_drained(server: Server, stop: Callable[[], None]) -> None:
    """Once draining began: ``stop`` when the last allocation has ended or at the timeout."""
    state = server.drain_state
    await state.started.wait()
    log = logging.getLogger("iceward.server")
    while True:
        try:
            left = await server.allocations_left()
        except Exception as exc:  # counted again at the next poll; the timeout still holds
            log.warning("draining: cannot count allocations: %s", exc)
            left = None
        if left == 0:
            log.info("drained: the last allocation has ended; exiting")
            break
        if not state.remaining():
            log.warning(
                "drain timeout (%g s): exiting with %s allocation(s) left",
                state.timeout,
                "unknown" if left is None else left,
            )
            break
        await asyncio.sleep(DRAIN_POLL)
    stop()


async def status_line(server: Server) -> str:
    """``3 allocations, 2/2 workers up`` (``draining: ...`` while draining): what ``systemctl
    status`` shows."""
    try:
        snapshot = await server.metrics_snapshot()
    except Exception as exc:  # a status line must never end the server
        return f"status unavailable: {exc}"
    active = sum(snapshot.active.values())
    up, total = server.workers_up()
    line = f"{active} allocation{'' if active == 1 else 's'}, {up}/{total} workers up"
    return f"draining: {line}" if server.drain_state.draining else line


async def _report_status(
    server: Server, notifier: SystemdNotifier, stopping: list[asyncio.Task[None]]
) -> None:
    last = ""
    while not stopping:
        line = await status_line(server)
        if line != last and not stopping:
            notifier.status(line)
            last = line
        await asyncio.sleep(STATUS_PERIOD)


async def _keep_watchdog(notifier: SystemdNotifier, interval: float) -> None:
    """WATCHDOG=1 from the event loop itself: a loop that hangs stops feeding it."""
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)
