"""The normalized model every input format is parsed into.

Parsers (``internals``, ``rtcstats``, ``getstats``) produce :class:`PeerConnectionReport` objects;
``rules`` turns them into findings; ``report`` and ``html`` only present them. Times are Unix epoch
milliseconds (floats) or ``None`` when the input does not say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from iceward.diagnose import Finding
from iceward.diagnose.iceurl import read_url

#: State kinds of the timeline, in display order.
STATE_KINDS = ("signaling", "iceGathering", "iceConnection", "connection")
CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")


@dataclass(slots=True)
class Config:
    """What the PeerConnection was configured with. Credentials are never kept."""

    known: bool = False
    ice_servers: list[str] = field(default_factory=list)
    #: URLs grouped as the iceServers entries had them (entries share one credential).
    server_groups: list[list[str]] = field(default_factory=list)
    ice_transport_policy: str | None = None
    bundle_policy: str | None = None
    #: REST-style usernames (``<expiry>:<user>``): only the expiry is kept, never the name.
    credential_expiries: list[int] = field(default_factory=list)
    #: Entries with a username that is not a TURN REST username (a static credential).
    static_credentials: int = 0

    @property
    def turn_urls(self) -> list[str]:
        return [u for u in self.ice_servers if u.lower().startswith(("turn:", "turns:"))]

    @property
    def stun_urls(self) -> list[str]:
        return [u for u in self.ice_servers if u.lower().startswith(("stun:", "stuns:"))]


@dataclass(slots=True)
class StateChange:
    t: float | None
    kind: str  # one of STATE_KINDS
    state: str
    #: Position in the event log (orders events that share a timestamp).
    seq: int = 0


@dataclass(slots=True)
class Candidate:
    side: str  # "local" or "remote"
    type: str  # host, srflx, prflx, relay (or "unknown")
    protocol: str | None = None
    address: str | None = None
    port: int | None = None
    relay_protocol: str | None = None
    url: str | None = None
    tcp_type: str | None = None
    related_address: str | None = None
    ufrag: str | None = None
    stats_id: str | None = None
    t: float | None = None
    #: Where it was seen: "event" (icecandidate/addIceCandidate), "sdp", "stats".
    sources: list[str] = field(default_factory=list)
    seq: int = 0

    @property
    def mdns(self) -> bool:
        return bool(self.address) and str(self.address).lower().endswith(".local")

    def endpoint(self) -> str:
        address = self.address or "?"
        if ":" in address and not address.startswith("["):
            address = f"[{address}]"
        return f"{address}:{self.port if self.port is not None else '?'}"

    def describe(self) -> str:
        how = self.protocol or "?"
        if self.relay_protocol:
            how += f", to the TURN server over {self.relay_protocol}"
        return f"{self.type} {self.endpoint()} ({how})"


@dataclass(slots=True)
class CandidateError:
    t: float | None
    url: str
    code: int
    text: str
    address: str | None = None
    port: int | None = None
    seq: int = 0

    @property
    def category(self) -> str:
        """What a 701 most likely means (other codes are the TURN/STUN error response)."""
        return classify_error(self)


def classify_error(err: CandidateError) -> str:
    text = err.text.lower()
    if err.code in (401, 441):
        return "auth"
    if err.code == 438:
        return "stale-nonce"
    if err.code != 701 and err.code < 700:
        return "error-response"
    url = read_url(err.url)
    host = url.host if url is not None else None
    address = (err.address or "").strip("[]")
    if ":" in address and not (host and ":" in host):
        # An IPv6 local address trying an IPv4-only server: Chromium tries every interface.
        return "ipv6-noise"
    if "not associated with the desired network" in text:
        return "ipv6-noise"
    if "lookup" in text:
        return "dns"
    if "timed out" in text or "timeout" in text:
        return "timeout"
    if "failed to establish" in text or "connect" in text:
        return "connect-failed"
    return "unreachable"


ERROR_CATEGORY_TEXT = {
    "auth": "credential refused",
    "stale-nonce": "stale nonce (normally retried)",
    "error-response": "error response",
    "ipv6-noise": "IPv6 interface vs IPv4 server (noise)",
    "dns": "DNS lookup failed",
    "timeout": "no answer (timed out)",
    "connect-failed": "TCP/TLS connection failed",
    "unreachable": "server not reachable",
}


@dataclass(slots=True)
class Pair:
    id: str
    local_id: str | None = None
    remote_id: str | None = None
    transport_id: str | None = None
    state: str | None = None
    nominated: bool | None = None
    selected: bool | None = None
    requests_sent: int | None = None
    requests_received: int | None = None
    responses_sent: int | None = None
    responses_received: int | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None
    current_rtt: float | None = None
    total_rtt: float | None = None
    first_seen: float | None = None
    last_seen: float | None = None
    local: Candidate | None = None
    remote: Candidate | None = None
    #: Last seen before the stats ended: Chromium drops failed pairs from getStats.
    vanished: bool = False


@dataclass(slots=True)
class SelectedPair:
    t: float | None
    pair_id: str
    local: Candidate | None = None
    remote: Candidate | None = None
    rtt: float | None = None

    def describe(self) -> str:
        local = self.local.type if self.local else "?"
        remote = self.remote.type if self.remote else "?"
        text = f"{local} ↔ {remote}"
        if self.local is not None and self.local.relay_protocol:
            text += f" (relay over {self.local.relay_protocol})"
        elif self.local is not None and self.local.protocol:
            text += f" ({self.local.protocol})"
        return text


@dataclass(slots=True)
class Series:
    """A counter over time: ``points`` are ``(t, value)`` with t in epoch ms."""

    name: str
    direction: str  # "sent" or "received"
    unit: str  # "bytes" or "packets"
    points: list[tuple[float, float]] = field(default_factory=list)
    #: "transport", "pair", "rtp", "legacy".
    source: str = "transport"


@dataclass(slots=True)
class PeerConnectionReport:
    id: str
    source: str  # "webrtc-internals", "rtcstats", "getstats"
    era: str = ""
    url: str | None = None
    config: Config = field(default_factory=Config)
    states: list[StateChange] = field(default_factory=list)
    #: Other timeline events worth showing (setRemoteDescription, close, ...): (t, text, seq).
    events: list[tuple[float | None, str, int]] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    candidate_errors: list[CandidateError] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    selected: list[SelectedPair] = field(default_factory=list)
    selected_changes: int | None = None
    flow: list[Series] = field(default_factory=list)
    #: ICE state from the transport stats (a fallback when the event log is missing).
    transport_ice_states: list[tuple[float, str]] = field(default_factory=list)
    negotiated: bool = False
    remote_candidates_added: int = 0
    closed_at: float | None = None
    created: float | None = None
    stats_start: float | None = None
    stats_end: float | None = None
    dump_end: float | None = None
    #: The event log starts mid-call (webrtc-internals opened after the call started).
    log_starts_late: bool = False
    #: Number of stats series at the webrtc-internals 1000-point buffer limit.
    series_at_buffer_limit: int = 0
    notes: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- derived views -------------------------------------------------------------------
    @property
    def t0(self) -> float | None:
        """The reference time for offsets: creation, else the first thing recorded."""
        times = [t for t in (self.created, self.stats_start) if t is not None]
        times += [s.t for s in self.states[:1] if s.t is not None]
        return min(times) if times else None

    @property
    def end(self) -> float | None:
        times = [t for t in (self.dump_end, self.stats_end, self.closed_at) if t is not None]
        times += [s.t for s in self.states if s.t is not None]
        return max(times) if times else None

    def offset(self, t: float | None) -> str:
        t0 = self.t0
        if t is None or t0 is None:
            return "?"
        return f"+{(t - t0) / 1000:.1f} s"

    def history(self, kind: str) -> list[StateChange]:
        return [s for s in self.states if s.kind == kind]

    def last_state(self, kind: str) -> str | None:
        states = self.history(kind)
        if states:
            return states[-1].state
        if kind == "iceConnection" and self.transport_ice_states:
            return self.transport_ice_states[-1][1]
        return None

    def ever(self, kind: str, *states: str) -> bool:
        if any(s.state in states for s in self.history(kind)):
            return True
        return kind == "iceConnection" and any(s in states for _, s in self.transport_ice_states)

    def first_time(self, kind: str, *states: str) -> float | None:
        for s in self.history(kind):
            if s.state in states:
                return s.t
        return None

    def local(self, type_: str | None = None) -> list[Candidate]:
        return [
            c for c in self.candidates if c.side == "local" and (type_ is None or c.type == type_)
        ]

    def remote(self, type_: str | None = None) -> list[Candidate]:
        return [
            c for c in self.candidates if c.side == "remote" and (type_ is None or c.type == type_)
        ]

    @property
    def connected(self) -> bool:
        if self.ever("iceConnection", "connected", "completed") or self.ever(
            "connection", "connected"
        ):
            return True
        return any(p.state == "succeeded" and (p.bytes_received or 0) > 0 for p in self.pairs) or (
            bool(self.selected) and not self.states
        )

    @property
    def failed(self) -> bool:
        if self.ever("connection", "failed") or self.ever("iceConnection", "failed"):
            return True
        if self.connected:
            return False
        # Chromium: a call that never connects goes checking -> disconnected, never failed.
        if self.ever("iceConnection", "disconnected"):
            return True
        return bool(self.pairs) and all(p.state == "failed" for p in self.pairs)

    @property
    def outcome(self) -> str:
        """connected, failed, not-connected (negotiated, never connected) or unused."""
        if self.connected:
            return "connected"
        if self.failed:
            return "failed"
        if self.negotiated or self.remote_candidates_added or self.pairs:
            return "not-connected"
        if self.source == "getstats":
            return "unknown"
        return "unused"

    @property
    def time_to_connected(self) -> float | None:
        """Milliseconds from the first recorded event (creation) to ICE connected."""
        if self.log_starts_late:
            return None
        done = self.first_time("iceConnection", "connected", "completed")
        if done is None:
            done = self.first_time("connection", "connected")
        start = self.created
        if done is None or start is None:
            return None
        return done - start

    @property
    def gathering_complete(self) -> bool:
        return self.ever("iceGathering", "complete")
