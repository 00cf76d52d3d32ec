"""One worker process of ``iceward serve --workers N``: ``python -m iceward.net.worker FD``.

The supervisor (:mod:`iceward.net.pool`) starts it with its listening sockets and a control
socket already open. The first line on the control socket is the worker's spec (settings, slot,
file descriptors); the worker answers ``{"ready": ...}`` once it relays, then serves requests,
one JSON object a line: ``snapshot`` (metrics), ``allocations``, ``delete`` and ``refresh`` (the
store changed). It stops, ending its allocations with their traffic logged, on SIGTERM/SIGINT or
when the supervisor goes away (end of file on the control socket).
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
from iceward.net.service import TurnService
from iceward.net.slot import WorkerSlot
from iceward.runtime import setup_logging, use_uvloop

#: Longest control line (an allocation report of a busy worker is the largest).
LINE_LIMIT = 64 * 1024 * 1024

log = logging.getLogger("iceward.worker")


def _slot(spec: dict[str, Any]) -> WorkerSlot:
    fds = spec["fds"]
    tls_files = spec.get("tls_files")
    return WorkerSlot(
        index=int(spec["index"]),
        count=int(spec["count"]),
        generation=int(spec["generation"]),
        nonce_key=bytes.fromhex(spec["nonce_key"]),
        relay_ports=(int(spec["relay_ports"][0]), int(spec["relay_ports"][1])),
        udp=[socket.socket(fileno=fd) for fd in fds["udp"]],
        tcp=[socket.socket(fileno=fd) for fd in fds["tcp"]],
        tls=[socket.socket(fileno=fd) for fd in fds["tls"]],
        tls_files=(Path(tls_files[0]), Path(tls_files[1])) if tls_files else None,
        quota_fd=fds.get("quota"),
        handoff_name=spec.get("handoff_name"),
    )


async def _answer(service: TurnService, request: dict[str, Any]) -> Any:
    op = request.get("op")
    if op == "snapshot":
        return service.local_snapshot().to_json()
    if op == "allocations":
        return service.local_allocations()
    if op == "delete":
        return service.delete_local(int(request["arg"]))
    if op == "refresh":
        await service.refresh_from_store()
        return True
    raise ValueError(f"unknown request {op!r}")


async def serve_worker(control_fd: int) -> int:
    loop = asyncio.get_running_loop()
    control = socket.socket(fileno=control_fd)
    reader, writer = await asyncio.open_unix_connection(sock=control, limit=LINE_LIMIT)
    spec = json.loads(await reader.readline())
    settings = ServerSettings(**spec["settings"])
    slot = _slot(spec)
    setup_logging(settings.log_level, worker=slot.index)
    service = TurnService(settings, slot)
    try:
        await service.start()
    except (OSError, ValueError) as exc:
        writer.write(json.dumps({"error": str(exc)}).encode() + b"\n")
        await writer.drain()
        return 2
    stopping: list[asyncio.Task[None]] = []

    def stop() -> None:
        if not stopping:
            stopping.append(loop.create_task(service.stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    writer.write(json.dumps({"ready": True, "relay_path": service.relay_path}).encode() + b"\n")
    await writer.drain()
    requests = loop.create_task(_serve_requests(service, reader, writer))
    stopped = loop.create_task(service.wait_stopped())
    await asyncio.wait({requests, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not stopped.done():  # the supervisor went away
        log.warning("supervisor gone: stopping")
        stop()
        await stopped
    requests.cancel()
    return 0


async def _serve_requests(
    service: TurnService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
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
                reply = {"id": ident, "result": await _answer(service, request)}
            except Exception as exc:  # a bad request must not end the worker
                reply = {"id": ident, "error": str(exc)}
        writer.write(json.dumps(reply).encode() + b"\n")
        try:
            await writer.drain()
        except ConnectionError:
            return


def main() -> None:
    use_uvloop()
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: python -m iceward.net.worker CONTROL_FD (started by iceward serve)")
    try:
        sys.exit(asyncio.run(serve_worker(int(sys.argv[1]))))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
