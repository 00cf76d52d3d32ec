"""A relaying worker of ``iceward serve --workers N``: its half of the control protocol (see
:mod:`iceward.server.workers`, the supervisor's).

Started by the supervisor with the control socket's descriptor, it reads its spec, composes a
:class:`~iceward.server.process.RelayProcess` on its slot and answers requests until told to
stop. It imports no HTTP stack and no ACME client: each worker pays, in memory, for every module
it loads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from iceward.config import ServerSettings
from iceward.net.httpshandoff import HttpsSender
from iceward.net.slot import WorkerSlot
from iceward.runtime import setup_logging, use_uvloop
from iceward.server.drain import TableAlternates
from iceward.server.plan import plan
from iceward.server.process import RelayProcess

log = logging.getLogger("iceward.server")

#: Longest control line (an allocation report of a busy worker is the largest).
LINE_LIMIT = 64 * 1024 * 1024


def control_line(message: dict[str, Any]) -> bytes:
    """One control protocol message, a JSON object on one line."""
    return json.dumps(message).encode() + b"\n"


def _slot(spec: dict[str, Any]) -> WorkerSlot:
    fds = spec["fds"]
    files = spec.get("tls_files")
    return WorkerSlot(
        index=int(spec["index"]),
        count=int(spec["count"]),
        generation=int(spec["generation"]),
        nonce_key=bytes.fromhex(spec["nonce_key"]),
        relay_ports=(int(spec["relay_ports"][0]), int(spec["relay_ports"][1])),
        udp=[socket.socket(fileno=fd) for fd in fds["udp"]],
        tcp=[socket.socket(fileno=fd) for fd in fds["tcp"]],
        tls=[socket.socket(fileno=fd) for fd in fds["tls"]],
        tls_files=(Path(files[0]), Path(files[1])) if files else None,
        quota_fd=fds.get("quota"),
        handoff_name=spec.get("handoff_name"),
    )


def _table(rows: list[list[Any]] | None) -> TableAlternates | None:
    """The fleet's alternates the supervisor sent (None outside a fleet: the static list)."""
    return TableAlternates(rows) if rows is not None else None


async def _answer(process: RelayProcess, request: dict[str, Any]) -> Any:
    op = request.get("op")
    engine = process.engine
    if op == "snapshot":
        return engine.local_snapshot().to_json()
    if op == "allocations":
        return engine.local_allocations()
    if op == "delete":
        return engine.delete_local(int(request["arg"]))
    if op == "refresh":
        await process.refresh()
        return True
    if op == "drain":
        process.drain(_table(request.get("arg")))
        return True
    raise ValueError(f"unknown request {op!r}")


async def serve_worker(control_fd: int) -> int:
    loop = asyncio.get_running_loop()
    control = socket.socket(fileno=control_fd)
    reader, writer = await asyncio.open_unix_connection(sock=control, limit=LINE_LIMIT)
    spec = json.loads(await reader.readline())
    settings = ServerSettings(**spec["settings"])
    slot = _slot(spec)
    setup_logging(settings.log_level, slot.index, settings.log_format)
    process = RelayProcess(plan(settings, workers=slot.count), slot)
    if spec.get("https_name"):
        process.engine.https_elsewhere = HttpsSender(spec["https_name"]).send
    try:
        await process.start()
    except (OSError, ValueError) as exc:
        writer.write(control_line({"error": str(exc)}))
        try:
            await writer.drain()
        except ConnectionError:
            pass  # the supervisor gave up already (another worker failed first)
        return 2
    if spec.get("draining"):
        process.drain(_table(spec.get("alternates")))
    stopped = asyncio.Event()
    stopping: list[asyncio.Task[None]] = []

    async def stop_process() -> None:
        await process.stop()
        stopped.set()

    def stop() -> None:
        if not stopping:
            stopping.append(loop.create_task(stop_process()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    # SIGUSR1 sent to the whole group (systemctl kill) must not end a worker: it drains it; the
    # supervisor, which decides when to exit, got it too.
    loop.add_signal_handler(signal.SIGUSR1, process.drain)
    writer.write(control_line({"ready": True, "relay_path": process.engine.relay_path}))
    await writer.drain()
    requests = loop.create_task(_serve_requests(process, reader, writer))
    waiting = loop.create_task(stopped.wait())
    await asyncio.wait({requests, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if not waiting.done():  # the supervisor went away
        log.warning("supervisor gone: stopping")
        stop()
        await waiting
    requests.cancel()
    return 0


async def _serve_requests(
    process: RelayProcess, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    while True:
        try:
            line = await reader.readline()
        except (ConnectionError, ValueError):
            return
        if not line:
            return
        try:
            request = json.loads(line)
            ident = request.get("id")
        except (ValueError, AttributeError):
            reply: dict[str, Any] = {"id": None, "error": "not a JSON object"}
        else:
            try:
                reply = {"id": ident, "result": await _answer(process, request)}
            except Exception as exc:  # a bad request must not end the worker
                reply = {"id": ident, "error": str(exc)}
        writer.write(control_line(reply))
        try:
            await writer.drain()
        except ConnectionError:
            return


def main() -> None:
    use_uvloop()
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: iceward.server.worker CONTROL_FD (started by iceward serve)")
    try:
        sys.exit(asyncio.run(serve_worker(int(sys.argv[1]))))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
