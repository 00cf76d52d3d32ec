"""What a node publishes in the fleet every heartbeat, and reads of the others.

One JSON document per node under ``iceward:node:<id>`` in Redis, expiring after three missed
beats. The field names are the admin API's (``GET /admin/v1/fleet``) and ``iceward fleet``'s.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from iceward.diagnose.iceurl import read_url

#: Seconds between two heartbeats.
BEAT = 2.0
#: Beats a node may miss before it is out of the fleet (its key expires in Redis too).
MISSED_BEATS = 3
#: A heartbeat older than this is not fresh: the node is never chosen (SIGKILL, partition).
FRESH_FOR = BEAT * MISSED_BEATS

State = Literal["serving", "draining"]
TRANSPORTS = ("udp", "tcp", "tls")


@dataclass(frozen=True, slots=True)
class Load:
    """What makes a node more or less loaded, as of its last heartbeat."""

    allocations: int = 0
    #: Relayed bit/s over the last 10 s, client to peer and peer to client.
    to_peer_bps: float = 0.0
    to_client_bps: float = 0.0
    free_ports: int = 0
    #: The host's busy CPU share, 0..1, since the last beat.
    cpu: float = 0.0

    def rank(self) -> tuple[int, float, float]:
        """Smaller is less loaded: allocations first, then relayed Mbit/s, then CPU; a node
        with no free relay port comes last."""
        mbps = round((self.to_peer_bps + self.to_client_bps) / 1e6, 1)
        full = self.free_ports <= 0
        return (self.allocations + (1 << 30 if full else 0), mbps, round(self.cpu, 2))


@dataclass(frozen=True, slots=True)
class Listener:
    """A TURN listener clients reach: how, at which IP literal and port."""

    transport: str
    ip: str
    port: int

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.ip).version


@dataclass(frozen=True, slots=True)
class NodeInfo:
    id: str
    region: str
    #: Random per process: tells a restarted node from another one using the same id.
    instance: str
    version: str
    state: State
    #: Unix time of this heartbeat, and of the node's start.
    at: float
    started: float
    #: The STUN/TURN URLs handed to clients, by transport (``stun`` for the stun: ones).
    urls: dict[str, list[str]] = field(default_factory=dict)
    listeners: tuple[Listener, ...] = ()
    #: The TLS name of its turns: URLs, for ALTERNATE-DOMAIN; None when they name an IP.
    tls_name: str | None = None
    load: Load = field(default_factory=Load)
    #: Allocations held per user bucket (``--user-quota``; see iceward.net.sharedquota).
    quota: dict[int, int] = field(default_factory=dict)

    def age(self, now: float) -> float:
        return max(0.0, now - self.at)

    def fresh(self, now: float) -> bool:
        return self.age(now) < FRESH_FOR

    def all_urls(self) -> list[str]:
        return [u for kind in ("stun", *TRANSPORTS) for u in self.urls.get(kind, [])]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "region": self.region,
            "instance": self.instance,
            "version": self.version,
            "state": self.state,
            "at": self.at,
            "started": self.started,
            "urls": self.urls,
            "listeners": [[x.transport, x.ip, x.port] for x in self.listeners],
            "tlsName": self.tls_name,
            "load": {
                "allocations": self.load.allocations,
                "toPeerBps": self.load.to_peer_bps,
                "toClientBps": self.load.to_client_bps,
                "freePorts": self.load.free_ports,
                "cpu": self.load.cpu,
            },
            "quota": {str(b): n for b, n in self.quota.items()},
        }

    def encode(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | bytes) -> NodeInfo | None:
        """A heartbeat as read from Redis; None when it is not one (never an exception)."""
        try:
            doc = json.loads(text)
            load = doc.get("load") or {}
            state: State = "serving" if doc["state"] == "serving" else "draining"
            return cls(
                id=str(doc["id"]),
                region=str(doc["region"]),
                instance=str(doc["instance"]),
                version=str(doc.get("version", "")),
                state=state,
                at=float(doc["at"]),
                started=float(doc.get("started", doc["at"])),
                urls={str(k): [str(u) for u in v] for k, v in (doc.get("urls") or {}).items()},
                listeners=tuple(
                    Listener(str(t), str(ipaddress.ip_address(ip)), int(port))
                    for t, ip, port in doc.get("listeners") or []
                ),
                tls_name=doc.get("tlsName") or None,
                load=Load(
                    allocations=int(load.get("allocations", 0)),
                    to_peer_bps=float(load.get("toPeerBps", 0.0)),
                    to_client_bps=float(load.get("toClientBps", 0.0)),
                    free_ports=int(load.get("freePorts", 0)),
                    cpu=float(load.get("cpu", 0.0)),
                ),
                quota={int(b): int(n) for b, n in (doc.get("quota") or {}).items()},
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


def urls_by_transport(uris: list[str]) -> dict[str, list[str]]:
    """The URLs a node hands out, by transport (stun: and stuns: under ``stun``)."""
    out: dict[str, list[str]] = {}
    for uri in uris:
        parsed = read_url(uri)
        if parsed is None:
            continue
        kind = "stun" if not parsed.is_turn else parsed.transport
        out.setdefault(kind, []).append(uri)
    return out


def listeners_of(uris: list[str], own_ips: list[str]) -> tuple[tuple[Listener, ...], str | None]:
    """The TURN listeners behind a node's URLs, and the TLS name its turns: URLs use. A URL
    naming a host (not an IP) is taken to reach ``own_ips`` (the node's listening or public
    addresses) on its port."""
    listeners: list[Listener] = []
    tls_name: str | None = None
    for uri in uris:
        parsed = read_url(uri)
        if parsed is None or not parsed.is_turn:
            continue
        if parsed.host_literal:
            ips = [parsed.host]
        else:
            ips = own_ips
            if parsed.transport == "tls":
                tls_name = tls_name or parsed.host
        for ip in ips:
            listener = Listener(parsed.transport, str(ipaddress.ip_address(ip)), parsed.port)
            if listener not in listeners:
                listeners.append(listener)
    return tuple(listeners), tls_name
