"""Settings turned into the typed values a running server uses, once, before anything starts.

:func:`plan` is pure but for :func:`primary_ip` (which sends nothing): the one-process server,
the supervisor and every worker build the same plan from the same settings, so no value is
derived twice in two ways.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from iceward.config import (
    ANY_PORT,
    ServerSettings,
    parse_alternate_address,
    parse_external_ip,
    parse_user,
)
from iceward.turn.server import TurnConfig, family_of
from iceward.units import parse_duration
from iceward.usage.service import UsageParams

_WILDCARDS = ("0.0.0.0", "::")
#: What a TCP Allocate is told (442) when TCP relaying is off.
TCP_RELAY_OFF = "TCP relaying is off on this server"


def primary_ip() -> str:
    """The address this host uses for its default route (no packet is sent), else loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            ip: str = s.getsockname()[0]
            return ip
        except OSError:
            return "127.0.0.1"


def specific(ips: list[str]) -> list[str]:
    """The addresses that are not wildcards."""
    return [ip for ip in ips if ip not in _WILDCARDS]


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(slots=True)
class Endpoints:
    """Where the server listens, once started, and the host clients should be told to use."""

    public_host: str
    port: int = 0
    tls_port: int = 0

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


@dataclass(frozen=True, slots=True)
class StaticUser:
    name: str
    #: The password (keys are derived from it), or coturn's precomputed MD5 key.
    secret: str | bytes


@dataclass(slots=True)
class ServerPlan:
    settings: ServerSettings
    turn: TurnConfig
    #: The relay address of each family in use, and what peers are told for each (external IP).
    relay_ips: list[str]
    advertise: dict[str, str]
    #: The host put in the URLs handed to clients.
    public_host: str
    users: list[StaticUser]
    #: Shared secrets from the settings; when there are none, one is generated into the data dir
    #: (``generate_secret``), static users or not: the credential API needs one, and credentials
    #: minted with it before must keep working when a ``--user`` is added.
    secrets: list[str]
    generate_secret: bool
    #: Where the TLS listeners go (0: any free port): None when TLS is off.
    tls_port: int | None
    #: The HTTP API's address, or None (``--http off``).
    http: tuple[str, int] | None
    workers: int
    usage: UsageParams
    #: The server's own IPs a peer may not be (see the peer policy), before ports are known.
    own_networks: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def endpoints(self) -> Endpoints:
        return Endpoints(self.public_host)


def node_id_of(settings: ServerSettings) -> str:
    """This node's name: ``--node-id``, else the host's (in the fleet, on call records)."""
    return settings.node_id or socket.gethostname().split(".")[0]


def tls_port_of(settings: ServerSettings) -> int | None:
    """The TLS port to bind (0: the kernel picks), or None: no TLS. ``--tls-port 0`` turns TLS
    off unless a ``--cert`` is given (then any port); ``--tls-port -1`` asks for any port."""
    if settings.tls_port == ANY_PORT:
        return 0
    return settings.tls_port if (settings.tls_port or settings.cert) else None


def plan(settings: ServerSettings, *, workers: int | None = None) -> ServerPlan:
    external_public, external_private = parse_external_ip(settings.external_ip)
    listen_specific = specific(settings.listen)
    if settings.relay_ip:
        relay_ips = list(settings.relay_ip)
    elif external_private:
        relay_ips = [external_private]
    elif listen_specific:
        relay_ips = listen_specific
    else:
        relay_ips = [primary_ip()]
    advertise: dict[str, str] = {}
    if external_public:
        for ip in relay_ips:
            if family_of(ip) == family_of(external_public):
                advertise[ip] = external_public
    turn = TurnConfig(
        realm=settings.realm,
        default_lifetime=settings.default_lifetime,
        max_lifetime=settings.max_lifetime,
        permission_lifetime=settings.permission_lifetime,
        channel_lifetime=settings.channel_lifetime,
        max_allocations_per_user=settings.max_allocations_per_user,
        max_allocations=settings.max_allocations,
        max_permissions_per_allocation=settings.max_permissions,
        max_tcp_connections=settings.max_tcp_connections,
        max_auth_failures=settings.max_auth_failures,
        max_challenges=settings.max_challenges,
        tcp_refusal=None if settings.tcp_relay else TCP_RELAY_OFF,
    )
    own = list(listen_specific)
    if settings.alternate_address:  # RFC 5780 (config checked: one listen IP, fixed port)
        alternate = parse_alternate_address(settings.alternate_address, settings.port)
        turn.change_addresses = ((settings.listen[0], settings.port), alternate)
        own.append(alternate[0])
    if len(listen_specific) < len(settings.listen):
        own.append("*")  # a wildcard listener: every local address (see net.localaddrs)
    own += advertise.values()
    users = [StaticUser(*parse_user(spec)) for spec in settings.user]
    return ServerPlan(
        settings=settings,
        turn=turn,
        relay_ips=relay_ips,
        advertise=advertise,
        public_host=external_public or (listen_specific or relay_ips)[0],
        users=users,
        secrets=list(settings.secret),
        generate_secret=not settings.secret,
        tls_port=tls_port_of(settings),
        http=settings.http_bind,
        workers=workers or settings.workers or default_workers(),
        usage=UsageParams(
            node=node_id_of(settings),
            region=settings.region,
            interval=settings.usage_interval,
            retention=parse_duration(settings.usage_retention),
            throttle=settings.quota_throttle_bps,
            cluster=settings.cluster,
        ),
        own_networks=own,
    )
