"""A browser SDK call record (``/sdk/iceward.js``) → one :class:`PeerConnectionReport`.

The record is what the SDK saw of one RTCPeerConnection, with times in milliseconds from
``start`` (Unix ms): the configuration's URLs (never a credential), state timelines,
``icecandidateerror`` events, candidates (type and protocol; an address only for relay
candidates, which are the server's), the selected pair over time, the candidate pairs' checks
and getStats samples. The HTTP
layer validates its shape (:mod:`iceward.telemetry.schema`); here it becomes the model every
other input becomes, so the same rules judge it. :func:`outcome` sums a judged call up in the
three words the dashboard counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iceward.analyze.model import (
    Candidate,
    CandidateError,
    Config,
    Pair,
    PeerConnectionReport,
    SelectedPair,
    Series,
    StateChange,
)
from iceward.analyze.rules import analyze, is_problem
from iceward.diagnose import Finding

FORMAT = "iceward-sdk"
#: What the noise rule looks at in an error's local address (the record keeps only its family).
_FAMILY_ADDRESS = {"ipv6": "::", "ipv4": "0.0.0.0"}
#: Signaling states that mean a remote description was applied.
_REMOTE_APPLIED = ("have-remote-offer", "have-remote-pranswer")


def _config(doc: dict[str, Any] | None, expiries: list[int]) -> Config:
    if doc is None:
        return Config(credential_expiries=list(expiries))
    groups = [[str(u) for u in entry.get("urls", [])] for entry in doc.get("iceServers", [])]
    return Config(
        known=True,
        ice_servers=[u for g in groups for u in g],
        server_groups=groups,
        ice_transport_policy=doc.get("iceTransportPolicy"),
        bundle_policy=doc.get("bundlePolicy"),
        credential_expiries=list(expiries),
    )


def _candidate(side: str, c: dict[str, Any] | None, t: float | None) -> Candidate | None:
    if c is None:
        return None
    return Candidate(
        side=side,
        type=str(c.get("type") or "unknown"),
        protocol=c.get("protocol"),
        address=c.get("address"),
        port=c.get("port"),
        relay_protocol=c.get("relayProtocol"),
        url=c.get("url"),
        t=t,
        sources=["stats"],
    )


def parse_record(record: dict[str, Any], expiries: list[int] | None = None) -> PeerConnectionReport:
    """The model of one record; ``expiries`` are the TURN REST credential expiries of the
    iceServers this call was given (the record itself has no username)."""
    start = float(record["start"])

    def at(offset: float | None) -> float | None:
        return None if offset is None else start + float(offset)

    pc = PeerConnectionReport(id=str(record.get("callId") or "call"), source="telemetry")
    pc.era = "iceward SDK record"
    pc.created = start
    pc.config = _config(record.get("config"), expiries or [])
    seq = 0
    signaling_before: str | None = None
    for t, kind, state in record.get("states", []):
        seq += 1
        pc.states.append(StateChange(at(t), kind, state, seq))
        if kind == "signaling":
            applied = state in _REMOTE_APPLIED or (
                state == "stable" and signaling_before == "have-local-offer"
            )
            if applied and not pc.negotiated:
                pc.negotiated = True
                pc.events.append((at(t), "setRemoteDescription", seq))
            signaling_before = state
    for c in record.get("candidates", []):
        seq += 1
        cand = _candidate(c.get("side", "local"), c, at(c.get("t")))
        if cand is not None:
            cand.seq = seq
            pc.candidates.append(cand)
    pc.remote_candidates_added = len(pc.remote())
    for e in record.get("errors", []):
        seq += 1
        pc.candidate_errors.append(
            CandidateError(
                at(e.get("t")),
                str(e.get("url", "")),
                int(e.get("code", 0)),
                str(e.get("text", "")),
                e.get("address") or _FAMILY_ADDRESS.get(e.get("family", "")),
                e.get("port"),
                seq,
            )
        )
    for i, s in enumerate(record.get("selected", [])):
        t = at(s.get("t"))
        pc.selected.append(
            SelectedPair(
                t,
                f"selected-{i + 1}",
                local=_candidate("local", s.get("local"), t),
                remote=_candidate("remote", s.get("remote"), t),
                rtt=s.get("rtt"),
            )
        )
    for i, p in enumerate(record.get("pairs", [])):
        pc.pairs.append(
            Pair(
                f"pair-{i + 1}",
                state=p.get("state"),
                requests_sent=p.get("requestsSent"),
                responses_received=p.get("responsesReceived"),
                local=_candidate("local", p.get("local"), None),
                remote=_candidate("remote", p.get("remote"), None),
                vanished=bool(p.get("vanished")),
            )
        )
    samples = record.get("samples", [])
    for direction in ("sent", "received"):
        for unit in ("bytes", "packets"):
            name = f"{unit}{direction.capitalize()}"
            points = [(start + s["t"], float(s[name])) for s in samples if s.get(name) is not None]
            if points:
                pc.flow.append(Series(f"transport.{name}", direction, unit, points))
    if samples:
        pc.stats_start, pc.stats_end = start + samples[0]["t"], start + samples[-1]["t"]
    pc.dump_end = at(record.get("end"))
    if record.get("reason") == "closed":
        pc.closed_at = pc.dump_end
    return pc


@dataclass(frozen=True, slots=True)
class Outcome:
    """A judged call in the dashboard's words. ``path`` is the selected pair's candidate types
    (``relay-host``); ``cause`` the finding code that explains a failure."""

    outcome: str  # connected-direct, connected-relay, failed, not-connected
    path: str | None
    relay_protocol: str | None
    cause: str | None
    time_to_connected: float | None


def outcome(pc: PeerConnectionReport, findings: list[Finding]) -> Outcome:
    """``not-connected``: hung up before ICE could tell (not a failure, not in the rate). A call
    that connected and then failed counts as failed."""
    dropped = pc.connected and pc.last_state("connection") == "failed"
    if pc.connected and pc.selected and not dropped:
        sel = pc.selected[-1]
        local = sel.local.type if sel.local else "unknown"
        remote = sel.remote.type if sel.remote else "unknown"
        relayed = "relay" in (local, remote)
        proto = sel.local.relay_protocol if sel.local and local == "relay" else None
        if relayed and proto is None:
            proto = "remote"  # only the far end relayed: its protocol is not ours to see
        kind = "connected-relay" if relayed else "connected-direct"
        return Outcome(kind, f"{local}-{remote}", proto, None, pc.time_to_connected)
    if pc.connected and not dropped:
        return Outcome("connected-direct", None, None, None, pc.time_to_connected)
    if dropped or is_problem(pc):
        errors = [f for f in findings if f.severity == "error"]
        cause = errors[0].code if errors else "ice-failed-unknown"
        return Outcome("failed", None, None, cause, None)
    return Outcome("not-connected", None, None, None, None)


def judge(
    record: dict[str, Any], expiries: list[int] | None = None
) -> tuple[PeerConnectionReport, list[Finding], Outcome]:
    """The analyzer's rules on one record: the model, its findings (ranked), the outcome."""
    pc = parse_record(record, expiries)
    findings = analyze([pc])
    return pc, findings, outcome(pc, findings)
