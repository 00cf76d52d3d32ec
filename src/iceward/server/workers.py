"""``iceward serve --workers N``: a supervisor, N relaying worker processes, and the control
protocol between them (the worker's half is :mod:`iceward.server.worker`).

The supervisor opens every listening socket once, as reuseport groups of N (see
:mod:`iceward.net.listeners`), and keeps them for its whole life; worker i is started (the
``main`` of :mod:`iceward.server.worker`) with the i-th socket of each group, its own slice of
the relay port range, the nonce key all workers share and the shared quota memory. A worker owns
the allocations it creates (:func:`owner_of` says which one from the id). The supervisor mints
credentials and serves the HTTP API, summing the workers' metrics and allocations.

Control protocol, one JSON object a line on a Unix socket pair: first the supervisor's spec
(settings, slot, file descriptors) and the worker's ``{"ready": ...}``; then requests ``{"id",
"op", "arg"}`` answered ``{"id", "result"}`` or ``{"id", "error"}``, with ``op`` one of
``snapshot`` (metrics), ``allocations``, ``delete``, ``refresh`` (the store changed) and ``drain``
(new allocations go to an alternate; a worker started while the server drains drains too). A
worker stops, ending its allocations with their traffic logged, on SIGTERM/SIGINT or when the
supervisor goes away (end of file on the control socket).

A worker that dies is started again on the same slot: same sockets, so the steering program
sends every other worker's clients exactly where it did before; the dead worker's clients reach
a worker that does not know them and get 437 (allocation mismatch) on their next Refresh, as
after any server restart, and allocate again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iceward.fleet.issuer import FleetIssuer
from iceward.net import sharedquota
from iceward.net.fdlimit import PRESSURE, raise_open_files_limit
from iceward.net.httpshandoff import HttpsIntake
from iceward.net.listeners import ListenerSet
from iceward.net.slot import relay_slice
from iceward.net.tls import server_context
from iceward.server.certificates import Certificates
from iceward.server.cluster import join_fleet, shares_quota
from iceward.server.credentials import CredentialSync, open_store, refresh_logged
from iceward.server.drain import AlternateRow, DrainState, alternates_table
from iceward.server.http import HttpServer, build_app
from iceward.server.plan import ServerPlan
from iceward.server.process import listeners_for, tls_files, usage_store
from iceward.server.worker import LINE_LIMIT, control_line
from iceward.snapshot import Snapshot
from iceward.store import Store

log = logging.getLogger("iceward.server")

#: How long a worker may take to start, and to answer one control request.
START_TIMEOUT = 30.0
CALL_TIMEOUT = 5.0
#: Restart delays: at once, then longer while a worker keeps dying soon after its start.
RESTART_DELAYS = (0.0, 0.5, 1.0, 2.0, 5.0)
STABLE_AFTER = 10.0


def owner_of(allocation_id: int, workers: int) -> int:
    """The worker that owns an allocation: worker i of N numbers its allocations i + 1, step N
    (see :attr:`WorkerSlot.first_id`)."""
    return (allocation_id - 1) % workers


# -- the supervisor's half -----------------------------------------------------------------------


class WorkerDown(Exception):
    pass


@dataclass(slots=True)
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    started: float
    pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    reading: asyncio.Task[None] | None = None
    #: The last metrics it reported: what it had counted, kept when it dies.
    last_snapshot: Snapshot | None = None


class Supervisor:
    """Listening sockets, worker processes, and the HTTP API over all of them; what the API sees
    of it is :class:`iceward.api.control.ServerControl`."""

    def __init__(self, server_plan: ServerPlan) -> None:
        workers = server_plan.workers
        self.plan = server_plan
        self.count = workers
        self.endpoints = server_plan.endpoints()
        self.sync = CredentialSync(server_plan)
        self.store: Store | None = None
        http = server_plan.http
        self.http = HttpServer(http, server_plan.settings.http) if http is not None else None
        self.certificates = Certificates(server_plan.settings, self.reload)
        self._nonce_key = os.urandom(32)
        self._handoff_name = f"iceward-{os.getpid()}-{os.urandom(4).hex()}-w"
        #: Where workers hand HTTPS connections of the TLS port (an abstract Unix socket).
        self._https_name = f"\0iceward-{os.getpid()}-{os.urandom(4).hex()}-https"
        self._https: HttpsIntake | None = None
        port_range = server_plan.settings.port_range
        self._slices = [relay_slice(port_range, workers, i) for i in range(workers)]
        self._listeners: ListenerSet | None = None
        self._quota_fd: int | None = None
        self._tls_files: tuple[Path, Path] | None = None
        self._workers: list[_Worker | None] = [None] * workers
        self._generation = [0] * workers
        self._failures = [0] * workers
        self._monitors: list[asyncio.Task[None]] = []
        self._tick_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ids = 0
        self.listening = False
        self._stopped = asyncio.Event()
        #: Its place in the fleet (``--cluster``), else None (see SingleServer.fleet).
        self.fleet: FleetIssuer | None = None
        #: Counts of workers that died: their traffic and events stay in the totals.
        self._departed = Snapshot()
        self.drain_state = DrainState(server_plan.settings.drain_timeout)
        #: While draining in a fleet: the alternates last sent to the workers.
        self._alternates: list[AlternateRow] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        settings = self.plan.settings
        raise_open_files_limit()  # before the workers: they inherit it
        PRESSURE.install(asyncio.get_running_loop(), None)  # the HTTP API's accepts
        store = self.store = open_store(self.plan)
        usage_store(store)  # its tables made here once, not raced for by the workers
        await self.sync.refresh(store)
        self._listeners = listeners_for(self.plan, self.count)
        self.endpoints.port = self._listeners.port
        self.endpoints.tls_port = self._listeners.tls_port
        if self._listeners.tls_port:
            self._tls_files = tls_files(self.plan)
        self._quota_fd = sharedquota.create_memory(self.count)
        self.fleet = await join_fleet(
            self.plan,
            self.public_uris,
            self.metrics_snapshot,
            self._apply_store_change,
            self._quota_fd if shares_quota(self.plan) else None,
            self.count,
        )
        if self.http is not None:  # first: a busy HTTP port fails before any worker starts
            await self.http.start(build_app(self, store, settings, self.fleet))
            if self._tls_files is not None:
                tls = server_context(*self._tls_files)
                tls.set_alpn_protocols(["http/1.1"])
                self._https = HttpsIntake(
                    self._https_name,
                    asyncio.get_running_loop(),
                    tls,
                    self.http.protocol,
                    settings.connection_timeout,
                    settings.max_connections_per_source,
                )
        await self.certificates.open()
        try:
            started = await asyncio.gather(*(self._spawn(i) for i in range(self.count)))
        except BaseException:
            await self._terminate_all()
            raise
        for worker in started:
            self._watch(worker)
        self.listening = True
        loop = asyncio.get_running_loop()
        self._tick_task = loop.create_task(self._tick_forever())
        files = self._tls_files
        self.certificates.start(files[0] if files else None, self.endpoints.tls_port)
        try:
            loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        except (NotImplementedError, RuntimeError):
            pass
        lo, hi = settings.port_range
        log.info(
            "listening udp/tcp=%s tls=%s on %s with %d workers; relays on %s ports %d-%d",
            self.endpoints.port,
            self.endpoints.tls_port or "off",
            ",".join(settings.listen),
            self.count,
            ",".join(self.plan.relay_ips),
            lo,
            hi,
        )

    async def stop(self) -> None:
        """Stop every worker (each ends its allocations, logging their traffic), then exit."""
        self._stopping = True
        self.listening = False
        if self._https is not None:
            await self._https.close()
        await self.certificates.stop()
        if self.fleet is not None:
            await self.fleet.member.leave()
        if self.http is not None:
            await self.http.stop()
        if self._tick_task is not None:
            self._tick_task.cancel()
        await self._terminate_all()
        for task in self._monitors:
            task.cancel()
        if self._listeners is not None:
            self._listeners.close()
        if self._quota_fd is not None:
            os.close(self._quota_fd)
            self._quota_fd = None
        if self.store is not None:
            self.store.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def reload(self) -> None:
        """SIGHUP: every worker loads the TLS certificate files again, and so does the HTTPS
        this process serves on the TLS port."""
        self._forward(signal.SIGHUP)
        if self._https is not None and self._tls_files is not None:
            try:
                self._https.tls.load_cert_chain(*self._tls_files)
            except (OSError, ssl.SSLError) as exc:
                log.error("HTTPS on the TLS port keeps the old certificate: %s", exc)

    async def _terminate_all(self, grace: float = 15.0) -> None:
        live = [w for w in self._workers if w is not None and w.process.returncode is None]
        for worker in live:
            try:
                worker.process.terminate()
            except ProcessLookupError:
                pass
        for worker in live:
            try:
                await asyncio.wait_for(worker.process.wait(), grace)
            except TimeoutError:
                log.error("worker %d did not stop in %.0f s: killed", worker.index, grace)
                worker.process.kill()
                await worker.process.wait()

    async def _tick_forever(self) -> None:
        """Every second: users and secrets from the store; each worker's counts, kept in case
        it dies."""
        assert self.store is not None
        while True:
            await asyncio.sleep(1.0)
            await refresh_logged(self.store, self._refresh)
            PRESSURE.flush()
            await self.metrics_snapshot()
            await self._resend_alternates()

    async def _refresh(self) -> None:
        """Workers first: a credential minted with a new secret must verify in all of them."""
        assert self.store is not None
        await self.sync.refresh(self.store, before_reload=self._refresh_workers)

    async def _refresh_workers(self) -> None:
        await self._call_all("refresh")

    def _forward(self, sig: int) -> None:
        for worker in self._workers:
            if worker is not None and worker.process.returncode is None:
                worker.process.send_signal(sig)

    # -- worker processes ----------------------------------------------------------------------
    async def _spawn(self, index: int) -> _Worker:
        assert self._listeners is not None and self._quota_fd is not None
        listeners = self._listeners
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = {
            "udp": [s.fileno() for s in listeners.udp[index]],
            "tcp": [s.fileno() for s in listeners.tcp[index]],
            "tls": [s.fileno() for s in listeners.tls[index]],
            "quota": self._quota_fd,
        }
        passed = [child.fileno(), self._quota_fd, *(s.fileno() for s in listeners.sockets(index))]
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",  # not -m: runpy would run this module a second time, with a warning
                "from iceward.server.worker import main; main()",
                str(child.fileno()),
                pass_fds=passed,
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=LINE_LIMIT)
        settings = self.plan.settings.model_dump(mode="json")
        settings.update(http="off", port=listeners.port, tls_port=listeners.tls_port)
        spec = {
            "settings": settings,
            "index": index,
            "count": self.count,
            "generation": self._generation[index],
            "nonce_key": self._nonce_key.hex(),
            "relay_ports": list(self._slices[index]),
            "fds": fds,
            "tls_files": [str(p) for p in self._tls_files] if self._tls_files else None,
            "handoff_name": self._handoff_name,
            "draining": self.drain_state.draining,
            "alternates": self._alternates,
            "https_name": self._https_name if self._https is not None else None,
        }
        writer.write(control_line(spec))
        await writer.drain()
        try:
            line = await asyncio.wait_for(reader.readline(), START_TIMEOUT)
        except TimeoutError:
            line = b""
        answer = json.loads(line) if line.startswith(b"{") else {}
        if not answer.get("ready"):
            process.kill()
            await process.wait()
            writer.close()
            reason = answer.get("error") or f"exit status {process.returncode}"
            raise OSError(f"worker {index} could not start: {reason}")
        worker = _Worker(index, process, reader, writer, time.monotonic())
        worker.reading = asyncio.get_running_loop().create_task(self._read_replies(worker))
        self._workers[index] = worker
        if self.drain_state.draining and not spec["draining"]:  # began while it started
            try:
                await self._call(index, "drain")
            except WorkerDown:
                pass  # it died already: its successor's spec says draining
        log.info(
            "worker %d started (pid %d, relay ports %d-%d, %s path)",
            index,
            process.pid,
            *self._slices[index],
            answer.get("relay_path", "?"),
        )
        return worker

    def _watch(self, worker: _Worker) -> None:
        self._monitors.append(asyncio.get_running_loop().create_task(self._monitor(worker)))

    async def _monitor(self, worker: _Worker) -> None:
        status = await worker.process.wait()
        self._retire(worker)
        if self._stopping:
            return
        index = worker.index
        how = f"signal {-status}" if status < 0 else f"status {status}"
        lived = time.monotonic() - worker.started
        self._failures[index] = 0 if lived > STABLE_AFTER else self._failures[index] + 1
        delay = RESTART_DELAYS[min(self._failures[index], len(RESTART_DELAYS) - 1)]
        log.error(
            "worker %d (pid %d) ended with %s after %.1f s; its clients must allocate again; "
            "restarting in %.1f s",
            index,
            worker.process.pid,
            how,
            lived,
            delay,
        )
        assert self._quota_fd is not None
        sharedquota.clear_row(self._quota_fd, self.count, index)
        self._generation[index] += 1
        while not self._stopping:
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                self._watch(await self._spawn(index))
                return
            except OSError as exc:
                log.error("%s", exc)
                delay = RESTART_DELAYS[-1]

    def _retire(self, worker: _Worker) -> None:
        """Forget a dead worker; keep its totals so they never go backwards (not its levels: a
        SIGKILLed worker's queued usage records are gone with it)."""
        if self._workers[worker.index] is worker:
            self._workers[worker.index] = None
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(WorkerDown(f"worker {worker.index} ended"))
        worker.pending.clear()
        worker.writer.close()
        if worker.last_snapshot is not None:
            self._departed.add(worker.last_snapshot.totals())

    async def _read_replies(self, worker: _Worker) -> None:
        while True:
            try:
                line = await worker.reader.readline()
            except (ConnectionError, ValueError):
                line = b""
            if not line:
                return
            try:
                reply = json.loads(line)
                future = worker.pending.pop(reply["id"])
            except (ValueError, KeyError, TypeError):
                log.warning("worker %d sent an unexpected control line", worker.index)
                continue
            if future.done():
                continue
            if "error" in reply:
                future.set_exception(RuntimeError(reply["error"]))
            else:
                future.set_result(reply["result"])

    async def _call(self, index: int, op: str, arg: Any = None) -> Any:
        worker = self._workers[index]
        if worker is None or worker.process.returncode is not None:
            raise WorkerDown(f"worker {index} is down")
        self._ids += 1
        ident = self._ids
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        worker.pending[ident] = future
        worker.writer.write(control_line({"id": ident, "op": op, "arg": arg}))
        try:
            await worker.writer.drain()
            return await asyncio.wait_for(future, CALL_TIMEOUT)
        except (TimeoutError, ConnectionError) as exc:
            worker.pending.pop(ident, None)
            raise WorkerDown(f"worker {index} did not answer") from exc

    async def _call_all(self, op: str, arg: Any = None) -> list[Any]:
        """Each live worker's answer; a worker that is down or silent is left out."""
        answers = await asyncio.gather(
            *(self._call(i, op, arg) for i in range(self.count)), return_exceptions=True
        )
        out = []
        for index, answer in enumerate(answers):
            if isinstance(answer, BaseException):
                if not isinstance(answer, WorkerDown):
                    log.error("worker %d: %s failed: %s", index, op, answer)
                continue
            out.append((index, answer))
        return out

    # -- what the command line prints ----------------------------------------------------------
    def minting_secret(self) -> str | None:
        return self.sync.minting_secret()

    @property
    def http_address(self) -> tuple[str, int] | None:
        return self.http.address if self.http is not None else None

    # -- ServerControl -------------------------------------------------------------------------
    @property
    def realm(self) -> str:
        return self.plan.settings.realm

    @property
    def data_dir(self) -> Path:
        return self.plan.data_dir

    def public_uris(self) -> list[str]:
        return list(self.plan.settings.public_url) or self.endpoints.uris()

    async def allocation_report(self) -> list[dict[str, Any]]:
        report: list[dict[str, Any]] = []
        for _, allocations in await self._call_all("allocations"):
            report.extend(allocations)
        return report

    async def delete_allocation(self, allocation_id: int) -> bool:
        owner = owner_of(allocation_id, self.count)
        try:
            return bool(await self._call(owner, "delete", allocation_id))
        except WorkerDown:
            return False

    async def metrics_snapshot(self) -> Snapshot:
        total = Snapshot()
        total.add(self._departed)
        for index, data in await self._call_all("snapshot"):
            snap = Snapshot.from_json(data)
            worker = self._workers[index]
            if worker is not None:
                worker.last_snapshot = snap
            total.add(snap)
        if self._https is not None:  # HTTPS the workers handed over, refused or timed out here
            for reason, n in self._https.counters.items():
                total.counters[f"drop.{reason}"] = total.counters.get(f"drop.{reason}", 0) + n
        lo, hi = self.plan.settings.port_range
        total.ports_total = (hi - lo + 1) * len(self.plan.relay_ips)
        return self.certificates.annotate(total)

    async def store_changed(self) -> None:
        await self._apply_store_change()
        if self.fleet is not None:
            await self.fleet.member.announce_store_change()

    async def _apply_store_change(self) -> None:
        await self._call_all("refresh")
        if self.store is not None:
            await self.sync.refresh(self.store)

    async def drain(self) -> None:
        """Every worker drains (one restarted later is told so in its spec)."""
        if self.drain_state.begin():
            log.info("draining: new allocations go to an alternate server")
        if self.fleet is not None:
            self.fleet.member.set_draining()  # no issuer chooses this node from its next read on
            self._alternates = alternates_table(self.fleet.member)
        await self._call_all("drain", self._alternates)

    async def _resend_alternates(self) -> None:
        """While draining in a fleet: the workers learn of a node that joined or left."""
        if self.fleet is None or not self.drain_state.draining:
            return
        table = alternates_table(self.fleet.member)
        if table != self._alternates:
            self._alternates = table
            await self._call_all("drain", table)

    def drain_status(self) -> dict[str, Any]:
        return self.drain_state.status()

    async def allocations_left(self) -> int | None:
        """Allocations alive in the workers; None when a live worker did not answer (a silent
        worker's allocations are not none: the drain must not end on that count)."""
        live = self.workers_up()[0]
        answers = await self._call_all("snapshot")
        if len(answers) < live:
            return None
        return sum(sum(Snapshot.from_json(data).active.values()) for _, data in answers)

    async def secret_for_minting(self) -> str | None:
        """Read the store now: a worker may have seen a secret added or retired before this
        process's own tick, and a credential must verify wherever its client lands."""
        assert self.store is not None
        await refresh_logged(self.store, self._refresh)  # a store that is down: the last ones
        return self.minting_secret()

    def workers_up(self) -> tuple[int, int]:
        up = sum(1 for w in self._workers if w is not None and w.process.returncode is None)
        return up, self.count

    def worker_status(self) -> list[dict[str, Any]]:
        out = []
        for index, worker in enumerate(self._workers):
            up = worker is not None and worker.process.returncode is None
            out.append(
                {
                    "index": index,
                    "pid": worker.process.pid if worker is not None and up else None,
                    "up": up,
                    "restarts": self._generation[index],
                    "relayPorts": "{}-{}".format(*self._slices[index]),
                }
            )
        return out
