"""``iceward serve --workers 1``: one process relays, mints and serves the HTTP API."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from iceward.fleet.issuer import FleetIssuer
from iceward.net import sharedquota
from iceward.net.fdlimit import raise_open_files_limit
from iceward.net.slot import WorkerSlot
from iceward.server.certificates import Certificates
from iceward.server.cluster import join_fleet, shares_quota
from iceward.server.drain import DrainState
from iceward.server.http import HttpServer, build_app
from iceward.server.plan import ServerPlan
from iceward.server.process import RelayProcess, listeners_for
from iceward.snapshot import Snapshot

log = logging.getLogger("iceward.server")


class SingleServer:
    """The one-process server; what the HTTP API sees of it is :class:`ServerControl`."""

    def __init__(self, plan: ServerPlan) -> None:
        self.plan = plan
        self.endpoints = plan.endpoints()
        self.process: RelayProcess | None = None
        http = plan.http
        self.http = HttpServer(http, plan.settings.http) if http is not None else None
        self.certificates = Certificates(plan.settings, self.reload)
        self._stopped = asyncio.Event()
        self.drain_state = DrainState(plan.settings.drain_timeout)
        #: Its place in the fleet (``--cluster``), else None; ``fleet.member`` is the
        #: :class:`~iceward.fleet.member.FleetMember` (``set_draining()``, ``alternate()``).
        self.fleet: FleetIssuer | None = None
        self._quota_fd: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        raise_open_files_limit()
        plan = self.plan
        listeners = listeners_for(plan, 1)
        if shares_quota(plan):  # the other nodes' counts arrive in shared memory
            self._quota_fd = sharedquota.create_memory(1)
        slot = WorkerSlot(
            index=0,
            count=1,
            generation=0,
            nonce_key=os.urandom(32),
            relay_ports=plan.settings.port_range,
            udp=listeners.udp[0],
            tcp=listeners.tcp[0],
            tls=listeners.tls[0],
            quota_fd=self._quota_fd,
        )
        self.endpoints.port = listeners.port
        self.endpoints.tls_port = listeners.tls_port or 0
        process = self.process = RelayProcess(plan, slot)
        await process.start()
        self.fleet = await join_fleet(
            plan, self.public_uris, self.metrics_snapshot, self._apply_store_change, self._quota_fd
        )
        if self.http is not None:
            assert process.store is not None
            await self.http.start(build_app(self, process.store, plan.settings, self.fleet))
            process.engine.http_protocol = self.http.protocol  # HTTPS on the TLS port
        await self.certificates.open()
        files = process.tls_files
        self.certificates.start(files[0] if files else None, self.endpoints.tls_port)
        log.info(
            "listening udp/tcp=%s tls=%s on %s; relays on %s ports %d-%d",
            self.endpoints.port,
            self.endpoints.tls_port or "off",
            ",".join(plan.settings.listen),
            ",".join(plan.relay_ips),
            *slot.relay_ports,
        )

    async def stop(self) -> None:
        """Stop accepting, end every allocation (logging its traffic), close every socket."""
        await self.certificates.stop()
        if self.fleet is not None:
            await self.fleet.member.leave()
        if self.http is not None:
            await self.http.stop()
        if self.process is not None:
            await self.process.stop()
        if self._quota_fd is not None:
            os.close(self._quota_fd)
            self._quota_fd = None
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def reload(self) -> None:
        """SIGHUP: load the TLS certificate files again."""
        if self.process is not None:
            self.process.engine.reload_tls()

    # -- what the command line prints ----------------------------------------------------------
    def minting_secret(self) -> str | None:
        return self.process.sync.minting_secret() if self.process else None

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

    @property
    def listening(self) -> bool:
        return self.process is not None and self.process.engine.listening

    def public_uris(self) -> list[str]:
        return list(self.plan.settings.public_url) or self.endpoints.uris()

    async def secret_for_minting(self) -> str | None:
        return self.minting_secret()

    def workers_up(self) -> tuple[int, int]:
        return (1, 1) if self.listening else (0, 1)

    def worker_status(self) -> list[dict[str, Any]]:
        return [
            {
                "index": 0,
                "pid": os.getpid(),
                "up": self.listening,
                "restarts": 0,
                "relayPorts": self.plan.settings.relay_ports,
            }
        ]

    async def metrics_snapshot(self) -> Snapshot:
        snapshot = self.process.engine.local_snapshot() if self.process else Snapshot()
        return self.certificates.annotate(snapshot)

    async def allocation_report(self) -> list[dict[str, Any]]:
        return self.process.engine.local_allocations() if self.process else []

    async def delete_allocation(self, allocation_id: int) -> bool:
        return self.process is not None and self.process.engine.delete_local(allocation_id)

    async def store_changed(self) -> None:
        await self._apply_store_change()
        if self.fleet is not None:
            await self.fleet.member.announce_store_change()

    async def _apply_store_change(self) -> None:
        if self.process is not None:
            await self.process.refresh()

    async def drain(self) -> None:
        if self.drain_state.begin():
            log.info("draining: new allocations go to an alternate server")
        member = self.fleet.member if self.fleet is not None else None
        if member is not None:
            member.set_draining()  # no issuer chooses this node from its next read on
        if self.process is not None:
            self.process.drain(member)

    def drain_status(self) -> dict[str, Any]:
        return self.drain_state.status()

    async def allocations_left(self) -> int | None:
        """Allocations alive (what a drained server waits for)."""
        return sum(self.process.engine.local_snapshot().active.values()) if self.process else 0
