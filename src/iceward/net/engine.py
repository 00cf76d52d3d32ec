"""One relaying process's sockets around one sans-IO :class:`TurnServer`.

This is the I/O side of the protocol, in the spirit of aioquic's ``asyncio/protocol.py``: it
feeds the core what the listeners, streams and relay sockets read (each through one guarded
call), applies what the core returns (sends, forwarding entries the hot path serves on its own,
accounting, logs) and arms the single timer the core asks for. Settings, the store and the HTTP
API are not its business: :mod:`iceward.server` composes it with them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from iceward.net import sniff
from iceward.net.bandwidth import AllocationLimit, NodeCapacity
from iceward.net.databind import DataBindHandoff, PipedStream, splice_to_pipe
from iceward.net.fastpath import FastPath, load_engine
from iceward.net.fdlimit import PRESSURE, Throttled
from iceward.net.handoff import ReservationHandoff
from iceward.net.httpshandoff import HttpsPipe
from iceward.net.localaddrs import expand_local
from iceward.net.nativestream import NativeStream
from iceward.net.relay import PeerEntry, RelaySocket, UdpRelayAllocator
from iceward.net.sharedquota import SharedQuota
from iceward.net.slot import WorkerSlot
from iceward.net.srcbudget import SourceBudget
from iceward.net.stream import StreamAcceptor, StreamConnection
from iceward.net.tcprelay import TcpRelays
from iceward.net.tls import server_context
from iceward.net.tlsroute import HttpGate, TlsRouter
from iceward.net.udp import ClientEntry, UdpListener
from iceward.ratelimit import LogThrottle
from iceward.runtime import fields_written
from iceward.snapshot import Snapshot
from iceward.turn.allocation import Address, Allocation, Channel, FiveTuple, Relay
from iceward.turn.auth import CredentialStore, NonceManager
from iceward.turn.events import (
    AllocationCreated,
    AllocationRemoved,
    AuthRefused,
    ChannelInstalled,
    ChannelRemoved,
    DataConnectionBound,
    Output,
    PeerConnect,
    PeerRefused,
    ToClient,
    ToPeer,
)
from iceward.turn.policy import PeerPolicy
from iceward.turn.server import TurnConfig, TurnServer, family_of

log = logging.getLogger("iceward.server")

_FAMILIES = {1: "ipv4", 2: "ipv6"}


@dataclass(slots=True)
class EngineParams:
    """What the engine is told by the server that composes it (see iceward.server.plan)."""

    turn: TurnConfig
    credentials: CredentialStore
    policy: PeerPolicy
    relay_ips: list[str]
    #: relay IP -> the address peers are told (``--external-ip``).
    advertise: dict[str, str]
    #: The server's own IPs (``*``: every local one); with the listening ports, never a peer.
    own_networks: list[str]
    nonce_lifetime: float
    connection_timeout: float
    idle_timeout: float
    max_connections_per_source: int
    #: Where pending ACME TLS-ALPN-01 challenges are written (``--acme``), else None.
    tls_challenges: Path | None = None
    #: Load balancers whose connections start with a PROXY header (``--proxy-protocol-from``).
    proxy_from: list[str] = field(default_factory=list)
    #: Bytes/s per allocation and for the whole server, each direction; 0: no limit.
    max_bps: int = 0
    bps_capacity: int = 0
    #: STUN messages per second per source IP on the UDP listeners, each process; 0: no limit.
    max_requests_per_source: int = 0


class RelayEngine:
    """The listeners, relay sockets, streams and timer of one TURN server process (or worker)."""

    def __init__(
        self, params: EngineParams, slot: WorkerSlot, tls_files: tuple[Path, Path] | None
    ) -> None:
        """``slot`` holds the process's bound listening sockets and its relay port slice;
        ``tls_files`` the certificate and key its TLS listeners serve (if it has any)."""
        self.params = params
        self.slot = slot
        self.quota: SharedQuota | None = None
        self._handoff: ReservationHandoff | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.core: TurnServer | None = None
        self._udp: dict[Address, UdpListener] = {}
        self._servers: list[StreamAcceptor] = []
        self._streams: dict[FiveTuple, StreamConnection] = {}
        #: Open TCP/TLS connections per source IP, and how many this process allows (with
        #: workers each takes its share: the kernel spreads one source's connections over them).
        self._per_source: dict[str, int] = {}
        self._source_cap = -(-params.max_connections_per_source // slot.count)
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._closed_log = Throttled(log, logging.INFO, "closed TCP/TLS connections")
        self._refused_log = Throttled(
            log, logging.WARNING, "refused TCP/TLS connections over the per-source cap"
        )
        self._relays: UdpRelayAllocator | None = None
        self._tcp_relays: TcpRelays | None = None  # RFC 6062 (net/tcprelay.py)
        self._databind: DataBindHandoff | None = None  # its data connections across workers
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._tls: ssl.SSLContext | None = None
        self._tls_files = tls_files
        #: Totals of allocations that ended, per (direction, transport): (packets, bytes).
        self._ended: dict[tuple[str, str], list[int]] = {}
        self.created_by_transport: dict[str, int] = {}
        #: allocation id -> (packets seen at the last tick, time they last changed).
        self._activity: dict[int, tuple[int, float]] = {}
        #: The native relay fast path, when built and not disabled (ICEWARD_FASTPATH=0).
        self.fast: FastPath | None = None
        self.relay_path = "python"
        self._error_log = LogThrottle(budget=1)
        self._peer_log = LogThrottle()
        self._auth_log = LogThrottle()
        self._proxy_log = LogThrottle()
        #: The Python path's per-source budget (the native engine keeps its own).
        self._budget: SourceBudget | None = None
        self._rate_log = LogThrottle()
        #: source -> datagrams over its budget dropped since its last log line.
        self._rate_unlogged: dict[str, int] = {}
        #: Serves HTTP on the TLS port (a fresh protocol per connection), once the owner has an
        #: HTTP app; None: HTTP asked for there is refused.
        self.http_protocol: Callable[[], asyncio.Protocol] | None = None
        #: Takes a TLS-port connection whose ClientHello asks for HTTP, before its TLS starts
        #: (a worker's, to the supervisor that serves HTTP), or with True the end of a pipe
        #: carrying HTTP decrypted here; False: it could not.
        self.https_elsewhere: Callable[[socket.socket, Address, bool], bool] | None = None
        self.listening = False
        self._capacity: NodeCapacity | None = None
        #: Told of each allocation that ended, its counters synced (usage records).
        self.on_removed: Callable[[Allocation, str], None] | None = None
        #: The loop's monotonic clock: the core's ``now``, its timer deadlines, allocation ages.
        #: (Nonces and REST credential expiries are Unix times: see :meth:`_from_client`.)
        self._clock: Callable[[], float] = time.monotonic

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Serve the slot's sockets on the running loop."""
        params, slot = self.params, self.slot
        loop = self.loop = asyncio.get_running_loop()
        self._clock = loop.time
        engine, self.relay_path = load_engine()
        if engine is not None:
            self.fast = FastPath(engine, loop, self._internal_error)
        log.info("relay path: %s", self.relay_path)
        self._relays = UdpRelayAllocator(
            params.relay_ips,
            slot.relay_ports,
            loop,
            self._on_relay_miss,
            params.advertise,
            fast=self.fast,
            token_prefix=bytes([slot.index]) if slot.count > 1 else b"",
        )
        if slot.count > 1 and slot.handoff_name:
            self._handoff = ReservationHandoff(
                slot.handoff_name, slot.index, slot.count, self._relays, loop, self._deliver
            )
            self._databind = DataBindHandoff(
                slot.handoff_name, slot.index, slot.count, loop, self._adopt_piped
            )
        elif slot.count > 1 and params.turn.tcp_refusal is None:
            params.turn.tcp_refusal = "TCP relaying needs the workers' hand-off"
        if slot.quota_fd is not None:
            self.quota = SharedQuota(slot.quota_fd, slot.count, slot.index)
        self.core = TurnServer(
            params.turn,
            params.credentials,
            NonceManager(slot.nonce_key, params.nonce_lifetime),
            params.policy,
            self._relays,
            quota=self.quota,
            first_id=slot.first_id,
            id_step=slot.count,
        )
        PRESSURE.install(loop, self.core.counters)
        self._tcp_relays = self._relays.tcp = TcpRelays(
            loop, self.core, self._apply, self._internal_error
        )
        if self.fast is not None and params.turn.change_addresses is None:
            # RFC 5780 answers carry more than the mapped address: those stay in the core.
            self.fast.answer_binding(True)
        # The 401 depends on nothing that changes while the process runs (realm, software,
        # nonce key, rate): set once. A realm too long for the engine stays with the core.
        why = (
            None if self.fast is None else self.fast.answer_challenges(self.core.native_challenge())
        )
        if why is not None:
            log.info("401 challenges: answered by the core, not the native engine: %s", why)
        if params.bps_capacity:  # each worker relays its share of the node's capacity
            self._capacity = NodeCapacity(params.bps_capacity / slot.count, loop.time)
            if self.fast is not None:
                self.fast.set_capacity(self._capacity.rate)
        # Each worker holds each source to the whole budget: the kernel steers a source's ports
        # to different workers, but one socket's datagrams always reach the same one.
        if params.max_requests_per_source and self.fast is not None:
            self.fast.source_budget(params.max_requests_per_source)
        elif params.max_requests_per_source:
            self._budget = SourceBudget(params.max_requests_per_source)
        for sock in slot.udp:
            listener = UdpListener(sock, loop, self._on_udp_miss, self.fast, self._budget)
            self._udp[listener.local] = listener
        proxy_from = [ipaddress.ip_network(n, strict=False) for n in params.proxy_from]
        for sock in slot.tcp:
            acceptor = StreamAcceptor(
                sock,
                "tcp",
                loop,
                self._new_stream,
                PRESSURE,
                handshake_timeout=params.connection_timeout,
                proxy_from=proxy_from,
                refused=self._stream_refused,
            )
            self._servers.append(acceptor)
        if slot.tls:
            assert self._tls_files is not None, "TLS listeners need a certificate"
            self._tls = server_context(*self._tls_files, params.tls_challenges)
            self._tls.set_alpn_protocols(sniff.SERVER_ALPN)
            for sock in slot.tls:
                acceptor = StreamAcceptor(
                    sock,
                    "tls",
                    loop,
                    self._new_stream,
                    PRESSURE,
                    tls=self._tls,
                    handshake_timeout=params.connection_timeout,
                    route=lambda conn: TlsRouter(conn, self._to_http),
                    proxy_from=proxy_from,
                    refused=self._stream_refused,
                    https_elsewhere=self._pass_https if self.https_elsewhere else None,
                )
                self._servers.append(acceptor)
        ports = [a[1] for a in self._udp] + [s.getsockname()[1] for s in slot.tcp + slot.tls]
        params.policy.set_own_addresses(expand_local(params.own_networks), ports)
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload_tls)
        except (NotImplementedError, RuntimeError):
            pass
        self.listening = True
        self._sweep_handle = loop.call_later(self._sweep_period(), self._sweep)

    def reload_tls(self) -> None:
        """SIGHUP: load the certificate files again; new TLS connections use them."""
        if self._tls is None or self._tls_files is None:
            return
        cert, key = self._tls_files
        try:
            # The very bytes checked are the ones loaded: a pair that does not load together (a
            # new certificate beside the old key) leaves the live context untouched.
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
                copy[0].write_bytes(cert.read_bytes())
                copy[1].write_bytes(key.read_bytes())
                server_context(*copy)
                self._tls.load_cert_chain(*copy)
            log.info("reloaded TLS certificate from %s", cert)
        except (OSError, ssl.SSLError) as exc:
            log.error(
                "TLS reload failed, keeping the old certificate: %s or %s: %s", cert, key, exc
            )

    async def stop(self) -> None:
        """Stop accepting, end every allocation (logging its traffic), close every socket."""
        self.listening = False
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
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
        if self._handoff is not None:
            self._handoff.close()
        if self._databind is not None:
            self._databind.close()
        if self._tcp_relays is not None:
            self._tcp_relays.close()
        if self._relays is not None:
            self._relays.close()
        if self.fast is not None:
            self.fast.close()
        if self.quota is not None:
            self.quota.close()
        for server in self._servers:
            await server.wait_closed()

    # -- what the server reads -----------------------------------------------------------------
    def on_tick(self) -> None:
        """Once a second: note which allocations moved traffic (for their idle time)."""
        self._track_activity()

    def sync_traffic(self) -> None:
        """Bring the allocations' counters (and the core's counts of the Binding requests and
        401 challenges answered natively) up to date with what the native fast path counted, and
        the requests dropped over their source's budget."""
        if self.fast is not None:
            self.fast.sync()
            answered = self.fast.take_bindings()
            if answered and self.core is not None:
                self.core.counters["request.Binding"] += answered
            requests, challenged, dropped = self.fast.take_challenges()
            if requests and self.core is not None:
                self.core.count_challenges(requests, challenged, dropped)
            self._over_budget(*self.fast.take_source_drops())
        elif self._budget is not None:
            self._over_budget(*self._budget.take())

    def _over_budget(self, total: int, per_source: list[tuple[str, int]]) -> None:
        """Datagrams dropped over their source's budget: counted
        (``iceward_dropped{reason="request_rate"}``), and logged once a minute per source with
        how many were dropped since its last line."""
        if not total or self.core is None:
            return
        self.core.counters["drop.request_rate"] += total
        unlogged = self._rate_unlogged
        now = time.monotonic()
        for source, dropped in per_source:
            if len(unlogged) >= 4096 and source not in unlogged:
                unlogged.clear()
            unlogged[source] = unlogged.get(source, 0) + dropped
            write, _ = self._rate_log.admit(source, now)
            if write:
                count = unlogged.pop(source)
                log.warning(
                    "requests over the per-source budget dropped: source=%s dropped=%d budget=%d/s",
                    source,
                    count,
                    self.params.max_requests_per_source,
                    extra={"event": "request_rate", "client": source, "dropped": count},
                )

    def _track_activity(self) -> None:
        if self.core is None:
            return
        self.sync_traffic()
        now = self._clock()
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

    def wall_time(self, when: float) -> float:
        """The Unix time of ``when``, a time of the engine's monotonic clock (``created``...)."""
        return time.time() - (self._clock() - when)

    def relay_port_usage(self) -> tuple[int, int]:
        lo, hi = self.slot.relay_ports
        in_use = len(self._relays.active) if self._relays is not None else 0
        in_use += self._tcp_relays.listening if self._tcp_relays is not None else 0
        return in_use, (hi - lo + 1) * len(self.params.relay_ips)

    def local_snapshot(self) -> Snapshot:
        """This process's figures for the metrics endpoint."""
        snap = Snapshot(traffic=self.traffic_totals(), created=dict(self.created_by_transport))
        for alloc in self.core.allocations if self.core else []:
            for family in alloc.relays:
                key = (alloc.five_tuple.transport, _FAMILIES.get(family, str(family)))
                snap.active[key] = snap.active.get(key, 0) + 1
        snap.counters = dict(self.core.counters) if self.core else {}
        snap.ports_in_use, snap.ports_total = self.relay_port_usage()
        return snap

    def local_allocations(self) -> list[dict[str, Any]]:
        self.sync_traffic()
        now = self._clock()
        out = []
        for alloc in self.core.allocations if self.core else []:
            c = alloc.counters
            last_active = self._activity.get(alloc.id, (0, alloc.created))[1]
            out.append(
                {
                    "id": alloc.id,
                    "worker": self.slot.index,
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
                    # RFC 6062 peer connections (TCP allocations): connecting, pending, bound.
                    "tcpConnections": [
                        {"id": pc.id, "peer": f"{pc.peer[0]}:{pc.peer[1]}", "state": pc.state}
                        for pc in (self.core.tcp.of(alloc.id) if self.core else [])
                    ],
                    "ageSeconds": round(now - alloc.created, 1),
                    "idleSeconds": round(now - last_active, 1),
                    "expiresInSeconds": round(alloc.expires - now, 1),
                    "traffic": c.as_dict(),
                    "maxBps": getattr(c.limiter, "rate", None),
                    # Data went out to peers and nothing ever came back: the classic sign of a
                    # firewalled relay port range.
                    "peersSilent": c.packets_to_peer > 0 and c.packets_to_client == 0,
                }
            )
        return out

    def limit(self, alloc: Allocation, rate: float) -> None:
        """Hold ``alloc`` to ``rate`` bytes/s each direction (within the node's capacity), on
        both relay paths, from now on."""
        if self.core is None or self.loop is None:
            return
        AllocationLimit(rate, self._capacity, self.core.counters, self.loop.time).start(
            alloc.counters
        )
        if self.fast is not None:
            self.fast.limit(alloc.counters)

    def start_rate(self) -> float:
        """The bytes/s every allocation starts held to: ``--max-bps``, else the process's share
        of ``--bps-capacity``; 0: none."""
        return self.params.max_bps or (self._capacity.rate if self._capacity else 0)

    def reset_limit(self, alloc: Allocation) -> None:
        """Give ``alloc`` back the limit it started with (or none), on both relay paths."""
        rate = self.start_rate()
        if rate:
            self.limit(alloc, rate)
            return
        alloc.counters.limiter = None
        if self.fast is not None:
            self.fast.limit(alloc.counters)

    def delete_local(self, allocation_id: int, reason: str = "deleted by admin") -> bool:
        alloc = self.core.allocation_by_id(allocation_id) if self.core is not None else None
        if self.core is None or alloc is None:
            return False
        self._apply(self.core.delete(alloc.five_tuple, reason))
        return True

    # -- input ---------------------------------------------------------------------------------
    def _on_udp_miss(self, listener: UdpListener, data: bytes, client: Address) -> None:
        assert self.core is not None
        ft = FiveTuple("udp", client, listener.local)
        if self._handoff is not None and self._handoff.hold(data, ft):
            return
        self._feed(self._from_client, data, ft)

    def _deliver(self, data: bytes, ft: FiveTuple) -> None:
        """A request the reservation handoff held back, now that the reserved port is here."""
        if self.core is None or not self.listening:
            return
        if ft.transport != "udp" and ft not in self._streams:
            return  # the connection closed meanwhile
        self._feed(self._from_client, data, ft)

    def _on_relay_miss(self, relay_id: int, data: bytes, peer: Address) -> None:
        assert self.core is not None
        self._feed(self.core.handle_peer, relay_id, data, peer)

    def _socket_of(self, relay: Relay | None) -> RelaySocket | None:
        """The socket behind one of the core's relays (None once released)."""
        if relay is None or self._relays is None:
            return None
        return self._relays.active.get(relay.id)

    def _new_stream(self, kind: str, peer: Address) -> StreamConnection | None:
        """Just accepted (no TLS yet): counted against its source IP, or refused (None)."""
        ip = peer[0]
        open_now = self._per_source.get(ip, 0)
        if open_now >= self._source_cap:
            if self.core is not None:
                self.core.counters["drop.connection_cap"] += 1
            self._refused_log.event(f"{ip} has {open_now} open")
            return None
        self._per_source[ip] = open_now + 1
        conn = StreamConnection(
            kind, self._on_stream_message, self._on_stream_open, self._on_close, peer
        )
        conn.counted = True
        if self.core is not None:
            conn.counters = self.core.counters
        return conn

    def _on_stream_open(self, conn: StreamConnection) -> None:
        assert conn.five_tuple is not None
        if conn.five_tuple in self._streams:  # two PROXY headers naming one client address
            conn.refused = "proxy_duplicate"
            conn.five_tuple = None
            conn.abort("a second connection from the same client address and port")
            return
        self._streams[conn.five_tuple] = conn

    def _on_stream_message(self, conn: StreamConnection, data: bytes) -> None:
        assert self.core is not None and conn.five_tuple is not None
        if self._handoff is not None and self._handoff.hold(data, conn.five_tuple):
            return
        if self._databind is not None and self._pipe_out(conn, data):
            return
        self._feed(self._from_client, data, conn.five_tuple)

    # -- RFC 6062 data connections across workers (net/databind.py) ---------------------------
    def _pipe_out(self, conn: StreamConnection, data: bytes) -> bool:
        """A ConnectionBind for another worker's peer connection: the connection goes there."""
        assert self._databind is not None and conn.five_tuple is not None
        owner = self._databind.owner(data)
        if owner is None or conn.transport is None or self.loop is None:
            return False
        pipe = self._databind.send(owner, data, conn.five_tuple)
        if pipe is None:
            return False
        self._streams.pop(conn.five_tuple, None)
        self._release(conn)
        conn.hand_over(splice_to_pipe(self.loop, conn.transport, pipe))
        return True

    def _adopt_piped(self, sock: socket.socket, ft: FiveTuple, data: bytes) -> None:
        """Another worker's client connection, piped here with its ConnectionBind."""
        loop = self.loop
        if loop is None or not self.listening or ft in self._streams:
            sock.close()
            return
        conn = PipedStream(ft, self._on_stream_message, self._on_stream_open, self._on_close)
        conn.counted = True
        self._per_source[ft.client[0]] = self._per_source.get(ft.client[0], 0) + 1

        async def start() -> None:
            try:
                await loop.connect_accepted_socket(lambda: conn, sock)
            except OSError:
                sock.close()
                self._release(conn)
                return
            conn.data_received(data)

        loop.create_task(start())

    def _to_http(self, conn: StreamConnection) -> HttpGate | None:
        """A connection on the TLS port turned out to be HTTP: it leaves the TURN side for a
        fresh HTTP protocol, still counted against its source until it closes."""
        http: asyncio.Protocol
        if self.http_protocol is not None:
            http = self.http_protocol()
        elif self.https_elsewhere is not None and self.loop is not None:
            http = HttpsPipe(self.loop, self.https_elsewhere, conn.peer)  # to the supervisor
        else:
            return None
        if conn.five_tuple is not None:
            self._streams.pop(conn.five_tuple, None)
        timeout = self.params.connection_timeout
        return HttpGate(http, conn.peer, timeout, partial(self._http_closed, conn))

    def _http_closed(self, conn: StreamConnection, reason: str | None) -> None:
        self._release(conn)
        if reason is not None and self.core is not None:
            self.core.counters[f"drop.{reason}"] += 1

    def _pass_https(
        self, sock: socket.socket, client: Address, conn: StreamConnection | None
    ) -> None:
        if conn is not None:
            self._release(conn)
        assert self.https_elsewhere is not None
        if not self.https_elsewhere(sock, client, False) and self.core is not None:
            self.core.counters["drop.no_http"] += 1

    def _release(self, conn: StreamConnection) -> None:
        """No longer counted against its source IP."""
        if not conn.counted:
            return
        conn.counted = False
        ip = conn.peer[0]
        left = self._per_source.get(ip, 1) - 1
        if left > 0:
            self._per_source[ip] = left
        else:
            self._per_source.pop(ip, None)

    def _stream_refused(self, peer: Address, reason: str) -> None:
        """A connection refused before it was one (its PROXY header): counted by reason, logged
        once a minute per source."""
        if self.core is not None:
            self.core.counters[f"drop.{reason}"] += 1
        if reason.startswith("proxy_"):
            self._proxy_refused(peer, reason)

    def _proxy_refused(self, peer: Address, reason: str) -> None:
        write, held = self._proxy_log.admit(peer[0], time.monotonic())
        if write:
            more = f" ({held} more from {peer[0]} not logged)" if held else ""
            log.warning(
                "PROXY protocol refused from %s:%s: %s%s",
                peer[0],
                peer[1],
                reason.removeprefix("proxy_"),
                more,
                extra={"event": "proxy_refused", "client": peer, "reason": reason},
            )

    def _on_close(self, conn: StreamConnection) -> None:
        if not conn.counted:
            return
        self._release(conn)
        if conn.refused is not None:
            self._stream_refused(conn.peer, conn.refused)
        if conn.five_tuple is None or self.core is None:
            if self.core is not None and conn.refused is None:  # TLS handshake failed or timed out
                self.core.counters["drop.tls_handshake"] += 1
            return
        self._streams.pop(conn.five_tuple, None)
        self._apply(self.core.close_client(conn.five_tuple, self._clock()))

    def _sweep_period(self) -> float:
        shortest = min(self.params.connection_timeout, self.params.idle_timeout)
        return max(0.05, min(1.0, shortest / 4))

    def _sweep(self) -> None:
        """Close the TCP/TLS connections that outstayed their welcome: no STUN message (or
        no finished TLS handshake) within connection_timeout of the accept, or, without an
        allocation, no complete message for idle_timeout. One pass over the connections per
        period, nothing per packet. Also where running out of descriptors is noticed under
        uvloop, which reports no failed accept."""
        self._sweep_handle = None
        core, loop = self.core, self.loop
        if not self.listening or core is None or loop is None:
            return
        now = time.monotonic()
        first_wait = self.params.connection_timeout
        idle_wait = self.params.idle_timeout
        unheard = idle = 0
        for conn in list(self._streams.values()):
            if conn.active:
                conn.active = False
                conn.last_active = now
            if not conn.greeted:
                if now - conn.opened >= first_wait:
                    unheard += 1
                    conn.abort(f"no STUN message within {first_wait:g} s", logging.DEBUG)
            elif now - conn.last_active >= idle_wait and (
                conn.five_tuple is None or core.allocation_for(conn.five_tuple) is None
            ):
                idle += 1
                conn.abort(f"silent {idle_wait:g} s without an allocation", logging.DEBUG)
        if unheard or idle:
            core.counters["drop.connection_timeout"] += unheard
            core.counters["drop.idle_timeout"] += idle
            self._closed_log.event(
                f"{unheard} sent no STUN message within {first_wait:g} s, "
                f"{idle} were silent {idle_wait:g} s without an allocation",
                unheard + idle,
            )
        self._closed_log.flush()
        self._refused_log.flush()
        PRESSURE.probe()
        PRESSURE.flush()
        self._sweep_handle = loop.call_later(self._sweep_period(), self._sweep)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        if self.core is not None:
            self._apply(self.core.handle_timer(self._clock()))

    def _from_client(self, data: bytes, ft: FiveTuple, now: float) -> list[Output]:
        assert self.core is not None
        return self.core.handle_client(data, ft, now, time.time())

    def _feed(self, handle: Callable[..., list[Output]], *args: Any) -> None:
        """One input to the core (``now`` appended), its outputs applied. An exception one input
        trips is counted and logged, and never reaches the loop that read a batch of them."""
        try:
            self._apply(handle(*args, self._clock()))
        except Exception:
            self._internal_error()

    def _internal_error(self) -> None:
        """Called from an ``except`` block: count it, log its traceback once a minute."""
        if self.core is not None:
            self.core.counters["drop.internal_error"] += 1
        write, held = self._error_log.admit("input", time.monotonic())
        if write:
            more = f" ({held} more since the last report)" if held else ""
            log.exception("internal error handling one message, dropped%s", more)

    # -- output --------------------------------------------------------------------------------
    def _apply(self, outputs: list[Output]) -> None:
        for out in outputs:
            kind = type(out)
            if kind is ToClient:
                self._to_client(out.five_tuple, out.data)  # type: ignore[union-attr]
            elif kind is ToPeer:
                assert isinstance(out, ToPeer)
                sock = self._socket_of(out.relay)
                if sock is not None:
                    sock.send(out.data, out.peer)
            elif kind is ChannelInstalled:
                self._install(out.channel)  # type: ignore[union-attr]
            elif kind is ChannelRemoved:
                self._uninstall(out.channel)  # type: ignore[union-attr]
            elif kind is AllocationCreated:
                self._created(out.allocation)  # type: ignore[union-attr]
            elif kind is AllocationRemoved:
                self._removed(out.allocation, out.reason)  # type: ignore[union-attr]
            elif kind is PeerRefused:
                self._peer_refused(out)  # type: ignore[arg-type]
            elif kind is AuthRefused:
                self._auth_refused(out)  # type: ignore[arg-type]
            elif kind is PeerConnect and self._tcp_relays is not None:  # RFC 6062
                self._tcp_relays.connect(out.connection)  # type: ignore[union-attr]
            elif kind is DataConnectionBound:
                self._data_bound(out)  # type: ignore[arg-type]
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

    def _data_bound(self, bound: DataConnectionBound) -> None:
        """RFC 6062: the client connection now carries a peer connection's bytes; it leaves
        the STUN streams (and their per-source count and sweep)."""
        stream = self._streams.pop(bound.five_tuple, None)
        if stream is None or stream.transport is None or self._tcp_relays is None:
            return  # closed meanwhile: the peer connection waits out its bind timeout
        self._release(stream)
        stream.hand_over(self._tcp_relays.bind(bound.connection, stream.transport))

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
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _install(self, channel: Channel) -> None:
        alloc = channel.allocation
        ft = alloc.five_tuple
        relay = self._socket_of(alloc.relays.get(family_of(channel.peer[0])))
        if relay is None:
            return
        if self.fast is not None and ft.transport == "udp":
            listener = self._udp[ft.server]
            self.fast.install(
                listener.fd, ft.client, channel.number, relay.fd, channel.peer, alloc.counters
            )
            return
        native = self._native_stream(ft)
        if native is not None:
            assert self.fast is not None
            self.fast.install(
                native.fd, ft.client, channel.number, relay.fd, channel.peer, alloc.counters
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
                conn.writelines, None, channel.number, alloc.counters, True
            )

    def _native_stream(self, ft: FiveTuple) -> NativeStream | None:
        """A TCP or TLS client's connection as the native engine serves it (made on its first
        channel), or None: no engine, or gone."""
        if self.fast is None or ft.transport == "udp":
            return None
        conn = self._streams.get(ft)
        if conn is None:
            return None
        if conn.native is None and NativeStream.usable(conn.transport):
            assert conn.transport is not None
            try:
                conn.native = NativeStream(
                    self.fast, conn.transport, conn.writelines, ft.client, ft.transport == "tls"
                )
            except OSError:  # no descriptor to spare (EMFILE): the Python path serves it
                return None
        return conn.native

    def _uninstall(self, channel: Channel) -> None:
        alloc = channel.allocation
        ft = alloc.five_tuple
        if self.fast is not None and ft.transport == "udp":
            listener = self._udp.get(ft.server)
            if listener is not None:
                self.fast.uninstall(listener.fd, ft.client, channel.number)
            return
        conn = self._streams.get(ft) if self.fast is not None else None
        if conn is not None and conn.native is not None:
            assert self.fast is not None
            key = (conn.native.fd, ft.client, channel.number)
            if self.fast.installed(*key):  # (not if the engine had no descriptor for it then)
                self.fast.uninstall(*key)
                return
        relay = self._socket_of(alloc.relays.get(family_of(channel.peer[0])))
        if relay is not None:
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
        rate = self.start_rate()
        if rate:
            self.limit(alloc, rate)
        self.created_by_transport[transport] = self.created_by_transport.get(transport, 0) + 1
        # At debug level: the end record says all the start line does (and what was relayed),
        # and a line per start cost a sixth of the allocation path.
        if log.isEnabledFor(logging.DEBUG):
            relayed = ",".join(
                f"{r.relayed_address[0]}:{r.relayed_address[1]}" for r in alloc.relays.values()
            )
            log.debug(
                "allocation start client=%s user=%r relayed=%s",
                alloc.five_tuple,
                alloc.username,
                relayed,
                extra={
                    "event": "allocation_start",
                    "allocation": alloc.id,
                    "user": alloc.username,
                    "account": alloc.account,
                    "client": alloc.five_tuple.client,
                    "transport": alloc.five_tuple.transport,
                    "relayed": [r.relayed_address for r in alloc.relays.values()],
                },
            )
        if alloc.dont_fragment:
            for handle in alloc.relays.values():
                relay = self._socket_of(handle)
                if relay is not None and relay.family == 1:
                    relay.sock.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER=DO

    def _removed(self, alloc: Allocation, reason: str) -> None:
        # No sync of the whole native table here: the core announces every channel of the
        # allocation as ChannelRemoved before this, and uninstalling each one took its native
        # counts (those of entries purged with the relay socket included).
        c, ended = alloc.counters, self._ended
        transport = alloc.five_tuple.transport
        for key, packets, nbytes in (
            (("to_peer", transport), c.packets_to_peer, c.bytes_to_peer),
            (("to_client", transport), c.packets_to_client, c.bytes_to_client),
        ):
            sums = ended.get(key)
            if sums is None:
                ended[key] = [packets, nbytes]
            else:
                sums[0] += packets
                sums[1] += nbytes
        self._activity.pop(alloc.id, None)
        if alloc.tcp and self._tcp_relays is not None:
            self._tcp_relays.close_allocation(alloc.id)
        if self.on_removed is not None:
            self.on_removed(alloc, reason)
        ft = alloc.five_tuple
        if ft.transport == "udp":
            listener = self._udp.get(ft.server)
            if listener is not None:
                listener.unlink(ft.client)
        if not log.isEnabledFor(logging.INFO):
            return
        duration = self._clock() - alloc.created
        fields = None
        if fields_written():  # the json format; the text line carries it all in its message
            fields = {
                "event": "allocation_end",
                "allocation": alloc.id,
                "user": alloc.username,
                "account": alloc.account,
                "client": ft.client,
                "transport": ft.transport,
                "relayed": [r.relayed_address for r in alloc.relays.values()],
                "reason": reason,
                "duration_s": round(duration, 3),
                "bytes_to_peer": c.bytes_to_peer,
                "bytes_to_client": c.bytes_to_client,
                "packets_to_peer": c.packets_to_peer,
                "packets_to_client": c.packets_to_client,
            }
        log.info(
            "allocation end client=%s user=%r reason=%r duration=%.1fs "
            "to_peer_packets=%d to_peer_bytes=%d to_client_packets=%d to_client_bytes=%d",
            alloc.five_tuple,
            alloc.username,
            reason,
            duration,
            c.packets_to_peer,
            c.bytes_to_peer,
            c.packets_to_client,
            c.bytes_to_client,
            extra=fields,
        )

    def _peer_refused(self, refused: PeerRefused) -> None:
        """Counted by the core (``iceward_peer_refusals``); logged here, once a minute per
        client address with how many were held back."""
        write, held = self._peer_log.admit(refused.five_tuple.client[0], time.monotonic())
        if write:
            more = f" ({held} more refusals for this client not logged)" if held else ""
            log.warning(
                "peer refused client=%s user=%r peer=%s reason=%r%s",
                refused.five_tuple,
                refused.username,
                refused.peer,
                refused.reason,
                more,
                extra={
                    "event": "peer_refused",
                    "client": refused.five_tuple.client,
                    "transport": refused.five_tuple.transport,
                    "user": refused.username,
                    "peer": refused.peer,
                    "reason": refused.reason,
                    "suppressed": held,
                },
            )

    def _auth_refused(self, refused: AuthRefused) -> None:
        """Counted by the core (``iceward_auth_failures``); logged once a minute per source IP,
        with how many were held back: a password-guessing flood writes one line a minute."""
        source = refused.five_tuple.client[0]
        write, held = self._auth_log.admit(source, time.monotonic())
        if write:
            more = f" ({held} more refusals from {source} not logged)" if held else ""
            log.warning(
                "auth refused client=%s username=%r reason=%r%s",
                refused.five_tuple,
                refused.username,
                refused.reason,
                more,
                extra={
                    "event": "auth_refused",
                    "client": refused.five_tuple.client,
                    "transport": refused.five_tuple.transport,
                    "user": refused.username,
                    "reason": refused.reason,
                    "suppressed": held,
                },
            )
