"""What the probes saw: plain data that rules judge and renderers present."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from iceward.doctor.config import IceConfig, ServerUrl

Address = tuple[str, int]
#: ok: it did what was asked; unreachable: nothing answered; auth: the credential was refused;
#: refused: the server answered with another error; skipped: not tried (no route, no address).
Outcome = Literal["ok", "unreachable", "auth", "refused", "skipped"]


def fmt_addr(address: Address | None) -> str:
    if address is None:
        return "-"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(slots=True)
class Resolution:
    host: str
    literal: bool
    ipv4: list[str] = field(default_factory=list)
    ipv6: list[str] = field(default_factory=list)
    error4: str | None = None
    error6: str | None = None
    ms: float = 0.0

    @property
    def addresses(self) -> list[str]:
        return self.ipv4 + self.ipv6


@dataclass(slots=True)
class TlsInfo:
    """The certificate a ``turns:``/``stuns:`` server presented, and whether it was trusted."""

    verified: bool
    #: Why verification failed (the verifier's words), None when trusted or not checked.
    error: str | None = None
    checked: bool = True
    subject: str = ""
    issuer: str = ""
    names: list[str] = field(default_factory=list)
    not_after: str = ""
    days_left: float | None = None
    version: str = ""


@dataclass(slots=True)
class Probe:
    """One URL over its transport toward one resolved address: Binding, then TURN Allocate."""

    url: str
    scheme: str
    transport: str
    server_index: int
    address: str | None
    family: int
    #: Probed because the config is UDP-only: does the server also answer TCP on that port?
    implied: bool = False
    outcome: Outcome = "skipped"
    #: Why it failed, in plain words (ICMP port unreachable, no answer in 2 s, 401 after ...).
    error: str | None = None
    connect_ms: float | None = None
    mapped: Address | None = None
    stun_rtt_ms: float | None = None
    stun_error: str | None = None
    tls: TlsInfo | None = None
    relayed: list[Address] = field(default_factory=list)
    allocate_mapped: Address | None = None
    lifetime: int | None = None
    allocate_ms: float | None = None
    error_code: int | None = None
    software: str | None = None
    transcript: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        if self.address is None:
            return "-"
        return fmt_addr((self.address, 0)).rsplit(":", 1)[0]


@dataclass(slots=True)
class Datapath:
    """Two allocations relaying to each other: what crossed and how fast."""

    url: str
    transport: str
    server_index: int
    relayed_a: Address | None = None
    relayed_b: Address | None = None
    #: Setup failed before packets were sent (the reason); None when packets were sent.
    setup_error: str | None = None
    #: The setup could not run for a reason that is not the relay's fault (e.g. 403 to a
    #: loopback relay address the server rightly denies).
    not_tested: bool = False
    sent: int = 0
    #: Pings from A that reached B, and echoes from B that came back to A.
    a_to_b: int = 0
    b_to_a: int = 0
    rtt_ms: list[float] = field(default_factory=list)
    p50_ms: float | None = None
    p95_ms: float | None = None
    jitter_ms: float | None = None
    #: Packets lost per payload size ("160": 0, "1200": 10).
    lost_by_size: dict[str, int] = field(default_factory=dict)
    transcript: list[str] = field(default_factory=list)

    @property
    def loss(self) -> float:
        return 1.0 - len(self.rtt_ms) / self.sent if self.sent else 1.0

    @property
    def blocked(self) -> bool:
        return self.setup_error is None and self.sent > 0 and (self.a_to_b == 0 or self.b_to_a == 0)


@dataclass(slots=True)
class PeerCheck:
    label: str
    peer: str
    accepted: bool
    answer: str


@dataclass(slots=True)
class SecurityScan:
    url: str
    server_index: int
    error: str | None = None
    checks: list[PeerCheck] = field(default_factory=list)

    @property
    def accepted(self) -> list[PeerCheck]:
        return [c for c in self.checks if c.accepted]


@dataclass(slots=True)
class Source:
    """Where the configuration came from."""

    kind: Literal["file", "stdin", "inline", "url"]
    #: The file, or the URL with its query values (API keys, tokens) masked.
    location: str
    http_status: int | None = None
    content_type: str | None = None
    #: The credentials server's clock minus this machine's (from the HTTP Date header), seconds.
    clock_skew_s: float | None = None
    #: For a URL: the HTTP method, and the headers sent (secret values masked).
    method: str | None = None
    headers: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Evidence:
    """Everything the ladder collected; rules read it, renderers show it."""

    source: Source
    config: IceConfig
    now: float
    resolutions: list[Resolution] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    datapaths: list[Datapath] = field(default_factory=list)
    security: list[SecurityScan] | None = None
    insecure: bool = False
    elapsed_s: float = 0.0

    def probes_for(self, url: ServerUrl) -> list[Probe]:
        return [
            p
            for p in self.probes
            if p.url == url.raw and not p.implied and p.server_index == url.server_index
        ]


def to_jsonable(obj: Any) -> Any:
    """A dataclass (or list of them) as plain JSON values."""
    if isinstance(obj, list):
        return [to_jsonable(o) for o in obj]
    data = asdict(obj)
    if isinstance(obj, Datapath):
        data["loss"] = round(obj.loss, 4)
        data["blocked"] = obj.blocked
    return data
