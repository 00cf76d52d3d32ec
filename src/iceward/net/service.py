"""The running server: sockets around one sans-IO :class:`TurnServer`.

This module only moves bytes and applies the core's outputs: it sends, installs and removes
forwarding entries (the hot path the listeners and relay sockets serve on their own), arms the
single timer the core asks for, and logs each allocation's end with its traffic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

from iceward.config import ServerSettings, ensure_secret
from iceward.net.relay import PeerEntry, RelaySocket, UdpRelayAllocator
from iceward.net.stream import StreamConnection
from iceward.net.tls import ensure_self_signed, server_context
from iceward.net.udp import ClientEntry, UdpListener
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
        self.credentials.set_secrets(secrets)
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

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self._relays = UdpRelayAllocator(
            self.relay_ips, self.settings.port_range, loop, self._on_relay_miss, self.advertise
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
            listener = UdpListener.bind(host, port, loop, self._on_udp_miss)
            port = listener.local[1]
            self._udp[listener.local] = listener
            server = await loop.create_server(
                lambda: self._new_stream("tcp"), host, port, reuse_address=True
            )
            self._servers.append(server)
        self.endpoints.port = port
        self.endpoints.listen = list(self.settings.listen)
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

    async def stop(self) -> None:
        """Stop accepting, end every allocation (logging its traffic), close every socket."""
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
        for server in self._servers:
            await server.wait_closed()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

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
