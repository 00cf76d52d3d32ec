"""The composition root of ``iceward serve``: settings become a plan, the plan a server.

- :mod:`iceward.server.plan`: settings turned into typed runtime values, once;
- :mod:`iceward.server.single`: one process relays, mints and serves HTTP;
- :mod:`iceward.server.workers`: a supervisor and N relaying workers, both halves of their
  control protocol;
- :mod:`iceward.server.process`: what a relaying process composes (the engine of
  :mod:`iceward.net.engine`, credentials kept in step with the store, the tick);
- :mod:`iceward.server.http`: the API's and the test page's routes on one embedded uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from iceward.config import ServerSettings
from iceward.server.plan import plan
from iceward.server.single import SingleServer
from iceward.server.workers import Supervisor

Server = SingleServer | Supervisor


def build(settings: ServerSettings) -> Server:
    """The server the settings ask for (not started); OSError when they cannot work."""
    server_plan = plan(settings)
    if server_plan.workers == 1:
        return SingleServer(server_plan)
    try:
        return Supervisor(server_plan)
    except ValueError as exc:  # a relay range too small for the workers
        raise OSError(str(exc)) from None


async def run(settings: ServerSettings, ready: Callable[[Server], None]) -> None:
    """Start, call ``ready``, serve until SIGTERM or SIGINT, stop cleanly."""
    server = build(settings)
    await server.start()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def stop() -> None:
        if not stopping:
            logging.getLogger("iceward.server").info("stopping")
            stopping.append(loop.create_task(server.stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    ready(server)
    await server.wait_stopped()
