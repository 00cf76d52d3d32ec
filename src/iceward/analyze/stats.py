"""getStats() data of any era → candidates, pairs, selected-pair history and flow series.

Every format is first turned into :class:`StatsObject` views (one per stats id, each attribute a
time series) and then into the model by :func:`build`, so the webrtc-internals parser (columnar
series), the rtcstats parser and the getStats parser (snapshots) share one interpretation.

Eras handled here: the standard stats of every Chromium and Firefox (``candidate-pair``,
``local-candidate``, ``transport.selectedCandidatePairId``, Firefox's ``selected``), pre-M117
ids (``RTCIceCandidatePair_*``), and the 2014 legacy stats (``Conn-*`` with
``googActiveConnection``, ``Cand-*``, ``ssrc_*``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from iceward.analyze.events import EventApplier, normalize_type
from iceward.analyze.model import Candidate, Pair, PeerConnectionReport, SelectedPair, Series

#: Attributes the analysis reads; everything else (certificates, codecs...) is never decoded.
NEEDED = {
    "type",
    "isRemote",
    # candidates
    "address",
    "ip",
    "port",
    "protocol",
    "candidateType",
    "relayProtocol",
    "url",
    "tcpType",
    "relatedAddress",
    "usernameFragment",
    # pairs
    "localCandidateId",
    "remoteCandidateId",
    "transportId",
    "state",
    "nominated",
    "selected",
    "requestsSent",
    "requestsReceived",
    "responsesSent",
    "responsesReceived",
    "bytesSent",
    "bytesReceived",
    "packetsSent",
    "packetsReceived",
    "currentRoundTripTime",
    "totalRoundTripTime",
    # transport
    "selectedCandidatePairId",
    "selectedCandidatePairChanges",
    "iceState",
    "dtlsState",
    # rtp
    "kind",
    "mediaType",
    # legacy 2014 stats
    "googActiveConnection",
    "googLocalAddress",
    "googRemoteAddress",
    "googLocalCandidateType",
    "googRemoteCandidateType",
    "googTransportType",
    "googRtt",
    "googWritable",
    "googReadable",
    "ipAddress",
    "portNumber",
    "transport",
    "networkType",
}

CANDIDATE_TYPES = {"local-candidate", "remote-candidate", "localcandidate", "remotecandidate"}


class StatsObject(Protocol):
    id: str

    @property
    def type(self) -> str | None: ...

    def series(self, attr: str) -> list[tuple[float, Any]]: ...

    def last(self, attr: str) -> Any: ...

    def times(self) -> tuple[float | None, float | None]: ...


class SnapshotObject:
    """A stats object seen in successive snapshots (rtcstats lines, getStats exports)."""

    __slots__ = ("_type", "attrs", "first", "id", "last_t")

    def __init__(self, id_: str) -> None:
        self.id = id_
        self._type: str | None = None
        self.attrs: dict[str, list[tuple[float, Any]]] = {}
        self.first: float | None = None
        self.last_t: float | None = None

    @property
    def type(self) -> str | None:
        return self._type

    def add(self, t: float, obj: dict[str, Any]) -> None:
        if self._type is None and isinstance(obj.get("type"), str):
            self._type = obj["type"]
        if self.first is None or t < self.first:
            self.first = t
        if self.last_t is None or t > self.last_t:
            self.last_t = t
        attrs = self.attrs
        for key, value in obj.items():
            if key in NEEDED:
                points = attrs.get(key)
                if points is None:
                    attrs[key] = [(t, value)]
                else:
                    points.append((t, value))

    def series(self, attr: str) -> list[tuple[float, Any]]:
        return self.attrs.get(attr, [])

    def last(self, attr: str) -> Any:
        points = self.attrs.get(attr)
        return points[-1][1] if points else None

    def times(self) -> tuple[float | None, float | None]:
        return self.first, self.last_t


def to_num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def to_int(value: Any) -> int | None:
    n = to_num(value)
    return int(n) if n is not None else None


def to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if value is None:
        return None
    s = str(value).strip().lower()
    if s in ("true", "1"):
        return True
    if s in ("false", "0"):
        return False
    return None


def to_str(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value)
    return s


def infer_type(obj: StatsObject) -> str:
    t = obj.type
    if t:
        return t
    declared = obj.last("type")
    if isinstance(declared, str) and declared:
        return declared
    i = obj.id
    prefixes = (
        ("RTCIceCandidatePair_", "candidate-pair"),
        ("RTCTransport_", "transport"),
        ("RTCInboundRTP", "inbound-rtp"),
        ("RTCOutboundRTP", "outbound-rtp"),
        ("RTCPeerConnection", "peer-connection"),
        ("Conn-", "googCandidatePair"),
        ("ssrc_", "ssrc"),
    )
    for prefix, kind in prefixes:
        if i.startswith(prefix):
            return kind
    if i.startswith(("RTCIceCandidate_", "Cand-")):
        remote = to_bool(obj.last("isRemote"))
        return "remote-candidate" if remote else "local-candidate"
    return ""


def _candidate(obj: StatsObject, kind: str) -> Candidate:
    side = "remote" if kind.startswith("remote") or to_bool(obj.last("isRemote")) else "local"
    address = obj.last("address")
    if address in (None, ""):
        address = obj.last("ip")
    if address in (None, ""):
        address = obj.last("ipAddress")
    port = to_int(obj.last("port"))
    if port is None:
        port = to_int(obj.last("portNumber"))
    protocol = obj.last("protocol") or obj.last("transport")
    first, _ = obj.times()
    return Candidate(
        side=side,
        type=normalize_type(obj.last("candidateType")),
        protocol=str(protocol).lower() if protocol else None,
        address=str(address) if address not in (None, "") else None,
        port=port,
        relay_protocol=to_str(obj.last("relayProtocol")),
        url=to_str(obj.last("url")) or None,
        tcp_type=to_str(obj.last("tcpType")),
        related_address=to_str(obj.last("relatedAddress")) or None,
        ufrag=to_str(obj.last("usernameFragment")),
        stats_id=obj.id,
        t=first,
        sources=["stats"],
    )


def _pair(obj: StatsObject, candidates: dict[str, Candidate]) -> Pair:
    first, last = obj.times()
    pair = Pair(
        id=obj.id,
        local_id=to_str(obj.last("localCandidateId")),
        remote_id=to_str(obj.last("remoteCandidateId")),
        transport_id=to_str(obj.last("transportId")),
        state=to_str(obj.last("state")),
        nominated=to_bool(obj.last("nominated")),
        selected=to_bool(obj.last("selected")),
        requests_sent=to_int(obj.last("requestsSent")),
        requests_received=to_int(obj.last("requestsReceived")),
        responses_sent=to_int(obj.last("responsesSent")),
        responses_received=to_int(obj.last("responsesReceived")),
        bytes_sent=to_int(obj.last("bytesSent")),
        bytes_received=to_int(obj.last("bytesReceived")),
        current_rtt=to_num(obj.last("currentRoundTripTime")),
        total_rtt=to_num(obj.last("totalRoundTripTime")),
        first_seen=first,
        last_seen=last,
    )
    pair.local = candidates.get(pair.local_id or "")
    pair.remote = candidates.get(pair.remote_id or "")
    return pair


def _legacy_endpoint(value: Any) -> tuple[str | None, int | None]:
    s = to_str(value)
    if not s:
        return None, None
    host, _, port = s.rpartition(":")
    return host.strip("[]") or None, to_int(port)


def _legacy_pair(
    obj: StatsObject, candidates: dict[str, Candidate], synthesized: list[Candidate]
) -> Pair:
    """A 2014 ``Conn-*`` object: googLocalAddress/googRemoteAddress, googActiveConnection."""
    first, last = obj.times()
    writable = to_bool(obj.last("googWritable"))
    pair = Pair(
        id=obj.id,
        local_id=to_str(obj.last("localCandidateId")),
        remote_id=to_str(obj.last("remoteCandidateId")),
        state="succeeded" if writable else "in-progress",
        nominated=to_bool(obj.last("googActiveConnection")),
        selected=to_bool(obj.last("googActiveConnection")),
        bytes_sent=to_int(obj.last("bytesSent")),
        bytes_received=to_int(obj.last("bytesReceived")),
        current_rtt=(to_num(obj.last("googRtt")) or 0) / 1000 if obj.last("googRtt") else None,
        first_seen=first,
        last_seen=last,
    )
    protocol = to_str(obj.last("googTransportType"))
    for side, addr_attr, type_attr in (
        ("local", "googLocalAddress", "googLocalCandidateType"),
        ("remote", "googRemoteAddress", "googRemoteCandidateType"),
    ):
        cid = pair.local_id if side == "local" else pair.remote_id
        cand = candidates.get(cid or "")
        if cand is None:
            address, port = _legacy_endpoint(obj.last(addr_attr))
            cand = Candidate(
                side=side,
                type=normalize_type(obj.last(type_attr)),
                protocol=protocol,
                address=address,
                port=port,
                t=first,
                sources=["stats"],
            )
            synthesized.append(cand)
        if side == "local":
            pair.local = cand
        else:
            pair.remote = cand
    return pair


def _counter_series(obj: StatsObject, attr: str) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for t, v in obj.series(attr):
        n = to_num(v)
        if n is not None:
            out.append((t, n))
    return out


def _selection_history(
    points: Iterable[tuple[float, str | None]], pairs: dict[str, Pair]
) -> list[SelectedPair]:
    history: list[SelectedPair] = []
    current: str | None = None
    for t, pair_id in points:
        if pair_id == current:
            continue
        current = pair_id
        if not pair_id:
            continue
        pair = pairs.get(pair_id)
        history.append(
            SelectedPair(
                t=t,
                pair_id=pair_id,
                local=pair.local if pair else None,
                remote=pair.remote if pair else None,
                rtt=pair.current_rtt if pair else None,
            )
        )
    return history


def build(report: PeerConnectionReport, objects: dict[str, StatsObject]) -> list[Candidate]:
    """Fill ``report`` from stats objects; returns the candidates for the event merger."""
    kinds = {oid: infer_type(obj) for oid, obj in objects.items()}
    starts: list[float] = []
    ends: list[float] = []
    for obj in objects.values():
        first, last = obj.times()
        if first is not None:
            starts.append(first)
        if last is not None:
            ends.append(last)
    if starts:
        report.stats_start = min(starts)
    if ends:
        report.stats_end = max(ends)

    candidates: dict[str, Candidate] = {}
    for oid, kind in kinds.items():
        if kind in CANDIDATE_TYPES:
            candidates[oid] = _candidate(objects[oid], kind)

    pairs: dict[str, Pair] = {}
    synthesized: list[Candidate] = []
    legacy_selected: list[tuple[float, str | None]] = []
    for oid, kind in kinds.items():
        obj = objects[oid]
        if kind == "candidate-pair":
            pairs[oid] = _pair(obj, candidates)
        elif kind == "googCandidatePair":
            pairs[oid] = _legacy_pair(obj, candidates, synthesized)
    report.pairs = sorted(pairs.values(), key=lambda p: (p.first_seen or 0, p.id))
    end = report.stats_end
    for pair in report.pairs:
        pair.vanished = bool(
            end is not None and pair.last_seen is not None and pair.last_seen < end - 1500
        )

    # The selected pair over time: transport.selectedCandidatePairId (Chromium, spec),
    # candidate-pair.selected (Firefox), googActiveConnection (2014).
    selection: list[tuple[float, str | None]] = []
    main_transport: StatsObject | None = None
    main_bytes = -1.0
    for oid, kind in kinds.items():
        obj = objects[oid]
        if kind == "transport":
            selection.extend((t, to_str(v)) for t, v in obj.series("selectedCandidatePairId"))
            changes = to_int(obj.last("selectedCandidatePairChanges"))
            if changes is not None:
                report.selected_changes = (report.selected_changes or 0) + changes
            report.transport_ice_states.extend(
                (t, str(v)) for t, v in obj.series("iceState") if v is not None
            )
            received = to_num(obj.last("bytesReceived")) or 0
            sent = to_num(obj.last("bytesSent")) or 0
            if received + sent > main_bytes:
                main_bytes, main_transport = received + sent, obj
        elif kind in ("candidate-pair", "googCandidatePair"):
            attr = "selected" if kind == "candidate-pair" else "googActiveConnection"
            for t, v in obj.series(attr):
                if to_bool(v):
                    (selection if kind == "candidate-pair" else legacy_selected).append((t, oid))
    if not selection:
        selection = legacy_selected
    selection.sort(key=lambda p: p[0])
    report.selected = _selection_history(selection, pairs)
    report.transport_ice_states.sort(key=lambda p: p[0])

    # Flow: transport counters, else the selected pair's, plus per-stream RTP packets.
    flow: list[Series] = []
    if main_transport is not None:
        for attr, direction, unit in (
            ("bytesSent", "sent", "bytes"),
            ("bytesReceived", "received", "bytes"),
            ("packetsSent", "sent", "packets"),
            ("packetsReceived", "received", "packets"),
        ):
            points = _counter_series(main_transport, attr)
            if points:
                flow.append(
                    Series(f"transport {main_transport.id} {attr}", direction, unit, points)
                )
    else:
        active = [report.selected[-1].pair_id] if report.selected else []
        if not active and report.pairs:
            active = [max(report.pairs, key=lambda p: p.bytes_received or 0).id]
        for pid in active:
            obj = objects[pid]
            for attr, direction in (("bytesSent", "sent"), ("bytesReceived", "received")):
                points = _counter_series(obj, attr)
                if points:
                    flow.append(Series(f"pair {pid} {attr}", direction, "bytes", points, "pair"))
    for oid, kind in sorted(kinds.items()):
        obj = objects[oid]
        if kind in ("inbound-rtp", "outbound-rtp", "ssrc"):
            media = to_str(obj.last("kind") or obj.last("mediaType")) or ""
            for attr, direction in (("packetsReceived", "received"), ("packetsSent", "sent")):
                points = _counter_series(obj, attr)
                if points:
                    name = f"{kind} {oid} {media}".replace("  ", " ").strip()
                    flow.append(Series(f"{name} {attr}", direction, "packets", points, "rtp"))
    report.flow = flow
    return list(candidates.values()) + synthesized


def attach(report: PeerConnectionReport, stats_candidates: list[Candidate]) -> EventApplier:
    """Merge the stats' candidates into the report and return the applier for its events.

    Pairs and the selected-pair history keep pointing at the merged candidates, so what the
    events add (mDNS names, server URLs, relay protocols) shows on them too.
    """
    applier = EventApplier(report)
    canonical = {id(c): applier.add_candidate(c) for c in stats_candidates}
    items: list[Pair | SelectedPair] = [*report.pairs, *report.selected]
    for item in items:
        local, remote = item.local, item.remote
        if local is not None:
            item.local = canonical.get(id(local), local)
        if remote is not None:
            item.remote = canonical.get(id(remote), remote)
    return applier
