"""One relaying process, alone or one worker of several: its engine, the credentials it
verifies, the store they come from, and the once-a-second tick that keeps them current."""

from __future__ import annotations

import asyncio
from pathlib import Path

from iceward.net.engine import EngineParams, RelayEngine
from iceward.net.listeners import ListenerSet, check_local_address, open_listeners
from iceward.net.slot import WorkerSlot
from iceward.server.certificates import acme_files, tls_challenges
from iceward.server.cluster import check_region_files
from iceward.server.credentials import CredentialSync, open_store, refresh_logged
from iceward.server.drain import AlternateSource, CoreLookup, alternate_source
from iceward.server.plan import ServerPlan, specific
from iceward.store import Store, StoreUnavailable
from iceward.turn.policy import PeerPolicy
from iceward.usage.service import UsageService
from iceward.usage.store import UsageStore


def listeners_for(plan: ServerPlan, workers: int) -> ListenerSet:
    """Every listening socket the plan asks for, in reuseport groups of ``workers``."""
    settings = plan.settings
    return open_listeners(
        settings.listen, settings.port, plan.tls_port, workers, plan.turn.change_addresses
    )


def check_before_start(plan: ServerPlan) -> None:
    """What would fail later, and in every worker, checked once before any socket or worker:
    the operator's ``--cert``/``--key`` load, HTTP-01 has the HTTP API to answer on, each relay
    address is one of this host's, the region map and GeoIP database read; else OSError naming
    the file, setting or address and the problem."""
    from iceward.net.tlsfiles import check_tls_files  # the supervisor's: see tls_files

    settings = plan.settings
    if plan.tls_port is not None and settings.cert and settings.key:
        check_tls_files(settings.cert, settings.key)
    http_01 = settings.acme and settings.acme_challenge == "http-01"
    if http_01 and plan.http is None and settings.acme_http is None:
        raise OSError("--acme-challenge http-01 needs --acme-http or the HTTP API (--http)")
    if settings.relay_ip:
        what = "--relay-ip"
    elif "/" in (settings.external_ip or ""):
        what = "the relay address (--external-ip PUBLIC/PRIVATE)"
    else:
        what = "--listen"  # relays bind to the listening address
    for ip in plan.relay_ips:
        check_local_address(ip, what)
    check_region_files(plan)


def tls_files(plan: ServerPlan) -> tuple[Path, Path]:
    """The operator's certificate and key, the ACME pair (a self-signed placeholder until the
    first is issued), or a self-signed pair made once in the data dir."""
    # Imported here: relaying workers import this module, are handed the files, and never
    # load the cryptography library this needs.
    from iceward.net.tlsfiles import ensure_self_signed

    settings = plan.settings
    if settings.cert and settings.key:
        return settings.cert, settings.key
    acme = acme_files(settings)
    if acme is not None:
        return acme.prepare(settings.acme)
    names = [plan.public_host, *specific(settings.listen)]
    return ensure_self_signed(plan.data_dir / "tls", names)


def usage_store(store: Store) -> UsageStore:
    """The usage tables of ``store``; OSError naming it when they cannot be made."""
    try:
        return UsageStore(store)
    except StoreUnavailable as exc:
        raise OSError(f"cannot open the data store: {exc}") from None


class RelayProcess:
    def __init__(self, plan: ServerPlan, slot: WorkerSlot) -> None:
        settings = plan.settings
        self.plan = plan
        self.sync = CredentialSync(plan)
        params = EngineParams(
            turn=plan.turn,
            credentials=self.sync.credentials,
            policy=PeerPolicy(allow=settings.allow_peer, deny=settings.deny_peer),
            relay_ips=plan.relay_ips,
            advertise=plan.advertise,
            own_networks=plan.own_networks,
            nonce_lifetime=settings.nonce_lifetime,
            connection_timeout=settings.connection_timeout,
            idle_timeout=settings.idle_timeout,
            max_connections_per_source=settings.max_connections_per_source,
            tls_challenges=tls_challenges(settings),
            proxy_from=list(settings.proxy_protocol_from),
            max_bps=settings.max_bps,
            bps_capacity=settings.bps_capacity,
            max_requests_per_source=settings.max_requests_per_source,
        )
        files = (slot.tls_files or tls_files(plan)) if slot.tls else None
        #: The certificate and key the TLS listeners serve, None without TLS.
        self.tls_files = files
        self.engine = RelayEngine(params, slot, files)
        self.store: Store | None = None
        self.usage: UsageService | None = None
        self._tick: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.store = open_store(self.plan)
        await self.sync.refresh(self.store)
        self.engine.start()
        self.usage = UsageService(self.plan.usage, usage_store(self.store), self.engine)
        self.usage.start()
        self._tick = asyncio.get_running_loop().create_task(self._tick_forever())

    async def refresh(self) -> None:
        """Users and secrets from the store, now (the store changed)."""
        if self.store is not None:
            await self.sync.refresh(self.store)

    def drain(self, source: AlternateSource | None = None) -> None:
        """From now on a new Allocate is sent to an alternate (or refused); see server.drain.
        ``source``: the fleet's alternates (replacing what was asked before), else the
        settings' static list."""
        core = self.engine.core
        if core is not None and (source is not None or core.drain is None):
            core.drain = CoreLookup(source or alternate_source(self.plan.settings))

    async def _tick_forever(self) -> None:
        assert self.store is not None
        while True:
            await asyncio.sleep(1.0)
            await refresh_logged(self.store, self.refresh)
            self.engine.on_tick()

    async def stop(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
        await self.engine.stop()
        if self.usage is not None:
            await self.usage.stop()
        if self.store is not None:
            self.store.close()
