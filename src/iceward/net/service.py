"""The running server: sockets around one sans-IO :class:`TurnServer`.

This module only moves bytes and applies the core's outputs: it sends, installs and removes
forwarding entries (the hot path the listeners and relay sockets serve on their own), arms the
single timer the core asks for, and logs each allocation's end with its traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from iceward.config import ServerSettings, ensure_secret, parse_alternate_address
from iceward.net.fastpath import FastPath, load_engine
from iceward.net.relay import PeerEntry, RelaySocket, UdpRelayAllocator
from iceward.net.stream import StreamConnection
from iceward.net.tls import ensure_self_signed, server_context
from iceward.net.udp import ClientEntry, UdpListener
from iceward.store import Store, database_url
from iceward.turn.allocation import Address, Allocation, Channel, FiveTuple
from iceward.turn.auth import CredentialStore, NonceManager
from iceward.turn.events import (
    AllocationCreated,
    AllocationRemoved,
    ChannelInstalled,
    ChannelRemoved,
    Output,
    ToClient,
    ToPeer,
)
from iceward.turn.policy import PeerPolicy
from iceward.turn.server import TurnConfig, TurnServer, family_of

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


class TurnService:
    """Owns the listeners, relay sockets and timer of one TURN server process."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.loop: asyncio.AbstractEventLoop | None = None
        self.credentials = CredentialStore(settings.realm)
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
        )
        if settings.alternate_address:  # RFC 5780 (config checked: one listen IP, fixed port)
            alternate = parse_alternate_address(settings.alternate_address, settings.port)
            self.config.change_addresses = ((settings.listen[0], settings.port), alternate)
        self.core: TurnServer | None = None
        self._udp: dict[Address, UdpListener] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._streams: dict[FiveTuple, StreamConnection] = {}
        self._relays: UdpRelayAllocator | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._tls: ssl.SSLContext | None = None
        self._tls_files: tuple[Path, Path] | None = None
        self._stopped = asyncio.Event()
        self._tick_task: asyncio.Task[None] | None = None
        self._http: Any = None
        self._http_task: asyncio.Task[None] | None = None
        self.http_address: tuple[str, int] | None = None
        #: Totals of allocations that ended, per (direction, transport): (packets, bytes).
        self._ended: dict[tuple[str, str], list[int]] = {}
        self.created_by_transport: dict[str, int] = {}
        #: allocation id -> (packets seen at the last tick, time they last changed).
        self._activity: dict[int, tuple[int, float]] = {}
        self.listening = False
        #: The native relay fast path, when built and not disabled (ICEWARD_FASTPATH=0).
        self.fast: FastPath | None = None
        self.relay_path = "python"

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self.store = Store(database_url(self.settings.data_dir, self.settings.database))
        await self.refresh_from_store()
        engine, self.relay_path = load_engine()
        if engine is not None:
            self.fast = FastPath(engine, loop)
        log.info("relay path: %s", self.relay_path)
        self._relays = UdpRelayAllocator(
            self.relay_ips,
            self.settings.port_range,
            loop,
            self._on_relay_miss,
            self.advertise,
            fast=self.fast,
        )
        self.core = TurnServer(
            self.config,
            self.credentials,
            NonceManager(os.urandom(32), self.settings.nonce_lifetime),
            self.policy,
            self._relays,
        )
        port = self.settings.port
        for host in self.settings.listen:
            listener = UdpListener.bind(host, port, loop, self._on_udp_miss, self.fast)
            port = listener.local[1]
            self._udp[listener.local] = listener
            server = await loop.create_server(
                lambda: self._new_stream("tcp"), host, port, reuse_address=True
            )
            self._servers.append(server)
        self.endpoints.port = port
        self.endpoints.listen = list(self.settings.listen)
        if self.config.change_addresses:  # RFC 5780: UDP on both IPs x both ports
            (ip_a, port_a), (ip_b, port_b) = self.config.change_addresses
            for local in ((ip_a, port_b), (ip_b, port_a), (ip_b, port_b)):
                listener = UdpListener.bind(*local, loop, self._on_udp_miss, self.fast)
                self._udp[listener.local] = listener
        if self.settings.tls_port or self.settings.cert:
            self._tls_files = self._tls_material()
            self._tls = server_context(*self._tls_files)
            tls_port = self.settings.tls_port
            for host in self.settings.listen:
                server = await loop.create_server(
                    lambda: self._new_stream("tls"),
                    host,
                    tls_port,
                    ssl=self._tls,
                    reuse_address=True,
                    ssl_handshake_timeout=10.0,
                )
                tls_port = server.sockets[0].getsockname()[1]
                self._servers.append(server)
            self.endpoints.tls_port = tls_port
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload_tls)
        except (NotImplementedError, RuntimeError):
            pass
        self.listening = True
        self._tick_task = loop.create_task(self._tick_forever())
        if self.settings.http != "off":
            await self._start_http()
        log.info(
            "listening udp/tcp=%s tls=%s on %s; relays on %s ports %s",
            self.endpoints.port,
            self.endpoints.tls_port or "off",
            ",".join(self.settings.listen),
            ",".join(self.relay_ips),
            self.settings.relay_ports,
        )

    def _tls_material(self) -> tuple[Path, Path]:
        if self.settings.cert and self.settings.key:
            return self.settings.cert, self.settings.key
        names = [self.endpoints.public_host, *_specific(self.settings.listen)]
        return ensure_self_signed(self.settings.data_dir / "tls", names)

    def reload_tls(self) -> None:
        """SIGHUP: load the certificate files again; new TLS connections use them."""
        if self._tls is None or self._tls_files is None:
            return
        try:
            self._tls.load_cert_chain(*self._tls_files)
            log.info("reloaded TLS certificate from %s", self._tls_files[0])
        except (OSError, ssl.SSLError) as exc:
            log.error("TLS reload failed, keeping the old certificate: %s", exc)

    async def _start_http(self) -> None:
        import uvicorn

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
        )
        config = uvicorn.Config(
            app, host=host, port=int(port), log_level="warning", access_log=False, lifespan="off"
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

    async def stop(self) -> None:
        """Stop accepting, end every allocation (logging its traffic), close every socket."""
        self.listening = False
        if self._http is not None:
            self._http.should_exit = True
            if self._http_task is not None:
                await self._http_task
        if self._tick_task is not None:
            self._tick_task.cancel()
        for server in self._servers:
            server.close()
        for listener in self._udp.values():
            listener.close()
        if self.core is not None:
            for alloc in self.core.allocations:
                self._apply(self.core.delete(alloc.five_tuple, "server shutdown"))
        for conn in list(self._streams.values()):
            if conn.transport is not None:
                conn.transport.close()
        if self._timer is not None:
            self._timer.cancel()
        if self._relays is not None:
            self._relays.close()
        if self.fast is not None:
            self.fast.close()
        for server in self._servers:
            await server.wait_closed()
        if self.store is not None:
            self.store.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # -- state shared with the HTTP API and the store -------------------------------------------
    async def refresh_from_store(self) -> None:
        """Re-read users and secrets from the store when its revision changed."""
        store = self.store
        if store is None:
            return
        loop = asyncio.get_running_loop()
        revision = await loop.run_in_executor(None, store.revision)
        if revision == self._store_revision:
            return
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

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.refresh_from_store()
            except Exception as exc:  # a store hiccup must not stop the server
                log.error("store refresh failed: %s", exc)
            self._track_activity()

    def sync_traffic(self) -> None:
        """Bring the allocations' counters up to date with what the native fast path counted."""
        if self.fast is not None:
            self.fast.sync()

    def _track_activity(self) -> None:
        if self.core is None:
            return
        self.sync_traffic()
        now = time.time()
        seen: dict[int, tuple[int, float]] = {}
        for alloc in self.core.allocations:
            c = alloc.counters
            total = c.packets_to_peer + c.packets_to_client
            last = self._activity.get(alloc.id)
            if last is None:
                seen[alloc.id] = (total, alloc.created if total == 0 else now)
            else:
                seen[alloc.id] = (total, now if total != last[0] else last[1])
        self._activity = seen

    def minting_secret(self) -> str | None:
        """The secret new credentials are signed with: the newest in the store, else the first."""
        if self._db_secrets:
            return self._db_secrets[-1]
        return self.config_secrets[0] if self.config_secrets else None

    def public_uris(self) -> list[str]:
        return list(self.settings.public_url) or self.endpoints.uris()

    def traffic_totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        self.sync_traffic()
        totals = {k: (v[0], v[1]) for k, v in self._ended.items()}
        if self.core is not None:
            for alloc in self.core.allocations:
                self._add_traffic(totals, alloc)
        return totals

    @staticmethod
    def _add_traffic(totals: dict[tuple[str, str], Any], alloc: Allocation) -> None:
        c, transport = alloc.counters, alloc.five_tuple.transport
        for direction, packets, nbytes in (
            ("to_peer", c.packets_to_peer, c.bytes_to_peer),
            ("to_client", c.packets_to_client, c.bytes_to_client),
        ):
            p, b = totals.get((direction, transport), (0, 0))
            totals[(direction, transport)] = (p + packets, b + nbytes)

    def relay_port_usage(self) -> tuple[int, int]:
        lo, hi = self.settings.port_range
        in_use = len(self._relays.active) if self._relays is not None else 0
        return in_use, (hi - lo + 1) * len(self.relay_ips)

    def allocation_report(self) -> list[dict[str, Any]]:
        self.sync_traffic()
        now = time.time()
        out = []
        for alloc in self.core.allocations if self.core else []:
            c = alloc.counters
            last_active = self._activity.get(alloc.id, (0, alloc.created))[1]
            out.append(
                {
                    "id": alloc.id,
                    "user": alloc.account,
                    "username": alloc.username,
                    "client": {
                        "transport": alloc.five_tuple.transport,
                        "address": f"{alloc.five_tuple.client[0]}:{alloc.five_tuple.client[1]}",
                    },
                    "relayed": [
                        f"{r.relayed_address[0]}:{r.relayed_address[1]}"
                        for r in alloc.relays.values()
                    ],
                    "permissions": sorted(h for h, t in alloc.permissions.items() if t > now),
                    "channels": [
                        {"number": ch.number, "peer": f"{ch.peer[0]}:{ch.peer[1]}"}
                        for ch in alloc.channels.values()
                    ],
                    "ageSeconds": round(now - alloc.created, 1),
                    "idleSeconds": round(now - last_active, 1),
                    "expiresInSeconds": round(alloc.expires - now, 1),
                    "traffic": c.as_dict(),
                    # Data went out to peers and nothing ever came back: the classic sign of a
                    # firewalled relay port range.
                    "peersSilent": c.packets_to_peer > 0 and c.packets_to_client == 0,
                }
            )
        return out

    def delete_allocation(self, allocation_id: int) -> bool:
        if self.core is None:
            return False
        for alloc in self.core.allocations:
            if alloc.id == allocation_id:
                self._apply(self.core.delete(alloc.five_tuple, "deleted by admin"))
                return True
        return False

    # -- input ---------------------------------------------------------------------------------
    def _on_udp_miss(self, listener: UdpListener, data: bytes, client: Address) -> None:
        assert self.core is not None
        ft = FiveTuple("udp", client, listener.local)
        self._apply(self.core.handle_client(data, ft, time.time()))

    def _on_relay_miss(self, relay: RelaySocket, data: bytes, peer: Address) -> None:
        assert self.core is not None
        self._apply(self.core.handle_peer(relay, data, peer, time.time()))

    def _new_stream(self, kind: str) -> StreamConnection:
        return StreamConnection(kind, self._on_stream_message, self._on_stream_open, self._on_close)

    def _on_stream_open(self, conn: StreamConnection) -> None:
        assert conn.five_tuple is not None
        self._streams[conn.five_tuple] = conn

    def _on_stream_message(self, conn: StreamConnection, data: bytes) -> None:
        assert self.core is not None and conn.five_tuple is not None
        self._apply(self.core.handle_client(data, conn.five_tuple, time.time()))

    def _on_close(self, conn: StreamConnection) -> None:
        if conn.five_tuple is None or self.core is None:
            return
        self._streams.pop(conn.five_tuple, None)
        self._apply(self.core.close_client(conn.five_tuple, time.time()))

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        if self.core is not None:
            self._apply(self.core.handle_timer(time.time()))

    # -- output --------------------------------------------------------------------------------
    def _apply(self, outputs: list[Output]) -> None:
        for out in outputs:
            kind = type(out)
            if kind is ToClient:
                self._to_client(out.five_tuple, out.data)  # type: ignore[union-attr]
            elif kind is ToPeer:
                out.relay.send(out.data, out.peer)  # type: ignore[union-attr]
            elif kind is ChannelInstalled:
                self._install(out.channel)  # type: ignore[union-attr]
            elif kind is ChannelRemoved:
                self._uninstall(out.channel)  # type: ignore[union-attr]
            elif kind is AllocationCreated:
                self._created(out.allocation)  # type: ignore[union-attr]
            elif kind is AllocationRemoved:
                self._removed(out.allocation, out.reason)  # type: ignore[union-attr]
        self._arm_timer()

    def _to_client(self, ft: FiveTuple, data: bytes) -> None:
        if ft.transport == "udp":
            listener = self._udp.get(ft.server)
            if listener is not None:
                listener.send(data, ft.client)
        else:
            conn = self._streams.get(ft)
            if conn is not None:
                conn.write(data)

    def _arm_timer(self) -> None:
        assert self.core is not None and self.loop is not None
        deadline = self.core.get_timer()
        if deadline is None:
            return
        if self._timer_deadline is not None and self._timer_deadline <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_deadline = deadline
        self._timer = self.loop.call_later(max(0.0, deadline - time.time()), self._on_timer)

    def _install(self, channel: Channel) -> None:
        alloc = channel.allocation
        ft = alloc.five_tuple
        relay = alloc.relays[family_of(channel.peer[0])]
        assert isinstance(relay, RelaySocket)
        if self.fast is not None and ft.transport == "udp":
            listener = self._udp[ft.server]
            self.fast.install(
                listener.fd, ft.client, channel.number, relay.fd, channel.peer, alloc.counters
            )
            return
        to_peer = ClientEntry(relay.sock.sendto, channel.peer, alloc.counters)
        if ft.transport == "udp":
            peer_send = relay.link(channel.peer)
            if peer_send is not None:
                to_peer = ClientEntry(peer_send, None, alloc.counters)
            listener = self._udp[ft.server]
            listener.channels[(ft.client, channel.number)] = to_peer
            client_send = listener.link(ft.client)
            if client_send is not None:
                to_client = PeerEntry(client_send, None, channel.number, alloc.counters, False)
            else:
                to_client = PeerEntry(
                    listener.sock.sendto, ft.client, channel.number, alloc.counters, False
                )
            relay.channels[channel.peer] = to_client
        else:
            conn = self._streams.get(ft)
            if conn is None:
                return
            conn.channels[channel.number] = to_peer
            relay.channels[channel.peer] = PeerEntry(
                conn.write, None, channel.number, alloc.counters, True
            )

    def _uninstall(self, channel: Channel) -> None:
        alloc = channel.allocation
        ft = alloc.five_tuple
        if self.fast is not None and ft.transport == "udp":
            listener = self._udp.get(ft.server)
            if listener is not None:
                self.fast.uninstall(listener.fd, ft.client, channel.number)
            return
        relay = alloc.relays.get(family_of(channel.peer[0]))
        if isinstance(relay, RelaySocket):
            relay.channels.pop(channel.peer, None)
            relay.unlink(channel.peer)
        if ft.transport == "udp":
            listener = self._udp.get(ft.server)
            if listener is not None:
                listener.channels.pop((ft.client, channel.number), None)
        else:
            conn = self._streams.get(ft)
            if conn is not None:
                conn.channels.pop(channel.number, None)

    def _created(self, alloc: Allocation) -> None:
        transport = alloc.five_tuple.transport
        self.created_by_transport[transport] = self.created_by_transport.get(transport, 0) + 1
        relayed = ",".join(
            f"{r.relayed_address[0]}:{r.relayed_address[1]}" for r in alloc.relays.values()
        )
        log.info(
            "allocation start client=%s user=%r relayed=%s",
            alloc.five_tuple,
            alloc.username,
            relayed,
        )
        if alloc.dont_fragment:
            for relay in alloc.relays.values():
                if isinstance(relay, RelaySocket) and relay.family == 1:
                    relay.sock.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER=DO

    def _removed(self, alloc: Allocation, reason: str) -> None:
        self.sync_traffic()
        totals: dict[tuple[str, str], Any] = {k: tuple(v) for k, v in self._ended.items()}
        self._add_traffic(totals, alloc)
        self._ended = {k: list(v) for k, v in totals.items()}
        self._activity.pop(alloc.id, None)
        ft = alloc.five_tuple
        if ft.transport == "udp":
            listener = self._udp.get(ft.server)
            if listener is not None:
                listener.unlink(ft.client)
        c = alloc.counters
        log.info(
            "allocation end client=%s user=%r reason=%r duration=%.1fs "
            "to_peer_packets=%d to_peer_bytes=%d to_client_packets=%d to_client_bytes=%d",
            alloc.five_tuple,
            alloc.username,
            reason,
            time.time() - alloc.created,
            c.packets_to_peer,
            c.bytes_to_peer,
            c.packets_to_client,
            c.bytes_to_client,
        )


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside the server's own loop: the process's signal handling stays ours."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
