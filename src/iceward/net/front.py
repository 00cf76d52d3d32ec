"""What every kind of running server shares: settings, credentials, the store and the HTTP API.

A one-process server (:class:`iceward.net.service.TurnService`) and the supervisor of several
workers (:class:`iceward.net.pool.WorkerPool`) both derive from :class:`ServerFront`; the HTTP API
only talks to this interface, so it cannot tell them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from iceward.config import ServerSettings, ensure_secret, parse_alternate_address
from iceward.datadir import ensure_private_dir
from iceward.net.listeners import ListenerSet, open_listeners
from iceward.net.snapshot import Snapshot
from iceward.net.tls import ensure_self_signed
from iceward.store import STORE_FAILURES, Store, database_url, describe_failure
from iceward.turn.auth import CredentialStore
from iceward.turn.policy import PeerPolicy
from iceward.turn.server import TurnConfig, family_of

log = logging.getLogger("iceward.server")


def primary_ip() -> str:
    """The address this host uses for its default route (no packet is sent), else loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            ip: str = s.getsockname()[0]
            return ip
        except OSError:
            return "127.0.0.1"


def _specific(ips: list[str]) -> list[str]:
    return [ip for ip in ips if ip not in ("0.0.0.0", "::")]


@dataclass(slots=True)
class Endpoints:
    """Where the server listens, once started, and the host clients should be told to use."""

    public_host: str
    port: int = 0
    tls_port: int = 0
    listen: list[str] = field(default_factory=list)

    def uris(self) -> list[str]:
        host = f"[{self.public_host}]" if ":" in self.public_host else self.public_host
        uris = [
            f"stun:{host}:{self.port}",
            f"turn:{host}:{self.port}?transport=udp",
            f"turn:{host}:{self.port}?transport=tcp",
        ]
        if self.tls_port:
            uris.append(f"turns:{host}:{self.tls_port}?transport=tcp")
        return uris


class ServerFront:
    """Settings-derived state, the store and the HTTP API of one server, however many processes."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        # Secrets live there: created 0700, an older install's looser modes fixed (and logged).
        ensure_private_dir(settings.data_dir)
        self.credentials = CredentialStore(settings.realm, settings.max_credential_ttl)
        for spec in settings.user:
            name, _, secret = spec.partition(":")
            if secret.startswith("0x") and len(secret) == 34:
                self.credentials.add_user_key(name, bytes.fromhex(secret[2:]))
            else:
                self.credentials.add_user(name, secret)
        secrets = list(settings.secret)
        if not secrets and not settings.user:
            secrets = [ensure_secret(settings.data_dir)]
        self.config_secrets = secrets
        self.config_users = self.credentials.user_keys()
        self.credentials.set_secrets(secrets)
        self.store: Store | None = None
        self._store_revision = -1
        self._db_secrets: list[str] = []
        self.policy = PeerPolicy(allow=settings.allow_peer, deny=settings.deny_peer)
        external_public, _, external_private = (settings.external_ip or "").partition("/")
        listen_specific = _specific(settings.listen)
        if settings.relay_ip:
            relay_ips = list(settings.relay_ip)
        elif external_private:
            relay_ips = [external_private]
        elif listen_specific:
            relay_ips = listen_specific
        else:
            relay_ips = [primary_ip()]
        self.relay_ips = relay_ips
        self.advertise: dict[str, str] = {}
        if external_public:
            for ip in relay_ips:
                if family_of(ip) == family_of(external_public):
                    self.advertise[ip] = external_public
        self.endpoints = Endpoints(external_public or (listen_specific or relay_ips)[0])
        self.config = TurnConfig(
            realm=settings.realm,
            default_lifetime=settings.default_lifetime,
            max_lifetime=settings.max_lifetime,
            permission_lifetime=settings.permission_lifetime,
            channel_lifetime=settings.channel_lifetime,
            max_allocations_per_user=settings.max_allocations_per_user,
            max_allocations=settings.max_allocations,
            max_permissions_per_allocation=settings.max_permissions,
            max_auth_failures=settings.max_auth_failures,
            max_challenges=settings.max_challenges,
        )
        if settings.alternate_address:  # RFC 5780 (config checked: one listen IP, fixed port)
            alternate = parse_alternate_address(settings.alternate_address, settings.port)
            self.config.change_addresses = ((settings.listen[0], settings.port), alternate)
        self._stopped = asyncio.Event()
        self._http: Any = None
        self._http_task: asyncio.Task[None] | None = None
        self.http_address: tuple[str, int] | None = None
        self.listening = False

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    # -- what the HTTP API asks of a running server ---------------------------------------------
    async def allocation_report(self) -> list[dict[str, Any]]:
        """Live allocations with their traffic (see the admin API)."""
        raise NotImplementedError

    async def delete_allocation(self, allocation_id: int) -> bool:
        raise NotImplementedError

    async def metrics_snapshot(self) -> Snapshot:
        raise NotImplementedError

    async def store_changed(self) -> None:
        """Users or secrets changed through the API: apply them now, not at the next tick."""
        await self.refresh_from_store()

    def workers_up(self) -> tuple[int, int]:
        """(processes relaying now, processes configured)."""
        return (1, 1) if self.listening else (0, 1)

    def worker_status(self) -> list[dict[str, Any]]:
        """Each relaying process: index, pid, up, restarts, its relay ports."""
        return [
            {
                "index": 0,
                "pid": os.getpid(),
                "up": self.listening,
                "restarts": 0,
                "relayPorts": self.settings.relay_ports,
            }
        ]

    # -- state shared with the store ------------------------------------------------------------
    def open_store(self) -> Store:
        url = database_url(self.settings.data_dir, self.settings.database)
        try:
            self.store = Store(url)
        except STORE_FAILURES as exc:
            raise OSError(f"cannot open the data store: {describe_failure(exc)}") from None
        return self.store

    async def refresh_from_store(self) -> None:
        """Re-read users and secrets from the store when its revision changed."""
        store = self.store
        if store is None:
            return
        loop = asyncio.get_running_loop()
        revision = await loop.run_in_executor(None, store.revision)
        if revision == self._store_revision:
            return
        await self.before_store_reload()
        users, secrets = await loop.run_in_executor(
            None, lambda: (store.list_users(), store.list_secrets())
        )
        merged = dict(self.config_users)
        for user in users:
            if user.realm != self.settings.realm:
                log.warning(
                    "user %r in the store has keys for realm %r, not %r: ignored",
                    user.name,
                    user.realm,
                    self.settings.realm,
                )
            else:
                keys = {1: user.md5_key}
                if user.sha256_key is not None:
                    keys[2] = user.sha256_key
                merged[user.name] = keys
        self.credentials.load_users(merged)
        self._db_secrets = [s.value for s in secrets if s.retired_at is None]
        self.credentials.set_secrets([*self._db_secrets[::-1], *self.config_secrets])
        self._store_revision = revision

    async def tick_forever(self) -> None:
        """Every second: users and secrets from the store, then :meth:`on_tick`.

        A failing store is logged once (and its recovery once) by the store's health, which the
        readiness check and the API share; the server goes on with the users and secrets it has.
        """
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.refresh_from_store()
                if self.store is not None:
                    self.store.health.ok()
            except STORE_FAILURES as exc:
                if self.store is not None:
                    self.store.health.failed(exc)
            except Exception as exc:  # a store hiccup must not stop the server
                log.error("store refresh failed: %s", exc)
            await self.on_tick()

    async def on_tick(self) -> None:
        """Periodic work of the concrete server."""

    async def secret_for_minting(self) -> str | None:
        """:meth:`minting_secret`, once every process that verifies agrees on the secrets."""
        return self.minting_secret()

    async def before_store_reload(self) -> None:
        """The store changed; about to load its users and secrets here."""

    def minting_secret(self) -> str | None:
        """The secret new credentials are signed with: the newest in the store, else the first."""
        if self._db_secrets:
            return self._db_secrets[-1]
        return self.config_secrets[0] if self.config_secrets else None

    def public_uris(self) -> list[str]:
        return list(self.settings.public_url) or self.endpoints.uris()

    def open_listeners(self, workers: int) -> ListenerSet:
        """Every listening socket the settings ask for, in groups of ``workers``."""
        settings = self.settings
        tls_port = settings.tls_port if (settings.tls_port or settings.cert) else None
        return open_listeners(
            settings.listen, settings.port, tls_port, workers, self.config.change_addresses
        )

    def tls_material(self) -> tuple[Path, Path]:
        if self.settings.cert and self.settings.key:
            return self.settings.cert, self.settings.key
        names = [self.endpoints.public_host, *_specific(self.settings.listen)]
        return ensure_self_signed(self.settings.data_dir / "tls", names)

    # -- the HTTP API ---------------------------------------------------------------------------
    async def start_http(self) -> None:
        from iceward.api.app import create_app

        assert self.store is not None
        host, _, port = self.settings.http.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        # Bind here so a busy port is an OSError for the caller, not uvicorn's sys.exit.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"HTTP API cannot listen on {self.settings.http}: {exc.strerror}"
            ) from None
        app = create_app(
            self,
            self.store,
            cors_origins=self.settings.cors_origin,
            admin_networks=self.settings.admin_allow,
            rate=self.settings.api_rate,
            burst=self.settings.api_burst,
            default_ttl=self.settings.credential_ttl,
            trusted_proxies=self.settings.trusted_proxy,
        )
        # proxy_headers off: uvicorn would believe X-Forwarded-For from any loopback peer; the
        # API decides who the client is itself (iceward.api.client, --trusted-proxy).
        config = uvicorn.Config(
            app,
            host=host,
            port=int(port),
            log_level="warning",
            access_log=False,
            lifespan="off",
            proxy_headers=False,
        )
        server = _EmbeddedUvicorn(config)
        self._http = server
        self._http_task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._http_task.done():
                self._http_task.result()
                raise OSError(f"HTTP API could not listen on {self.settings.http}")
            await asyncio.sleep(0.01)
        sock = server.servers[0].sockets[0]
        self.http_address = sock.getsockname()[:2]
        log.info("HTTP API on http://%s:%d", host, self.http_address[1])

    async def stop_http(self) -> None:
        if self._http is not None:
            self._http.should_exit = True
            if self._http_task is not None:
                await self._http_task

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside the server's own loop: the process's signal handling stays ours."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
