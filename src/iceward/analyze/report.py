"""Presentation: the ``--json`` document and the Rich terminal report (no analysis here)."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from iceward.analyze.model import (
    CANDIDATE_TYPES,
    ERROR_CATEGORY_TEXT,
    STATE_KINDS,
    Candidate,
    CandidateError,
    Pair,
    PeerConnectionReport,
    Series,
)
from iceward.diagnose import Finding

if TYPE_CHECKING:
    from iceward.analyze.api import Analysis

MAX_SAMPLES = 200
MAX_PAIRS_SHOWN = 12
MAX_CANDIDATES_SHOWN = 40
SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
SEVERITY_MARK = {"error": "✖", "warning": "▲", "info": "●"}


# ---- helpers shared with the HTML renderer -----------------------------------------------------
def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t / 1000, UTC).isoformat(timespec="milliseconds")


def offset_ms(pc: PeerConnectionReport, t: float | None) -> float | None:
    t0 = pc.t0
    if t is None or t0 is None:
        return None
    return round(t - t0, 1)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def outcome_line(pc: PeerConnectionReport) -> str:
    outcome = pc.outcome
    if outcome == "connected":
        ttc = pc.time_to_connected
        text = "connected" + (f" in {ttc / 1000:.2f} s" if ttc is not None else "")
        final = pc.last_state("connection")
        if final in ("failed", "disconnected"):
            text += f", then {final}"
        return text
    if outcome == "failed":
        return "failed"
    if outcome == "not-connected":
        return "never connected"
    return outcome


def timeline(pc: PeerConnectionReport) -> list[tuple[float | None, str, str]]:
    """(t, kind, text) rows in log order: state changes (repeats folded), API calls, candidates
    gathered or added, candidate errors."""
    rows: list[tuple[float | None, int, str, str]] = []
    last: dict[str, str] = {}
    for s in pc.states:
        if last.get(s.kind) == s.state:
            continue
        last[s.kind] = s.state
        rows.append((s.t, s.seq, s.kind, s.state))
    rows += [(t, seq, "api", text) for t, text, seq in pc.events]
    for c in pc.candidates:
        if c.t is not None and ("event" in c.sources or "sdp" in c.sources):
            verb = "gathered" if c.side == "local" else "added"
            rows.append((c.t, c.seq, "candidate", f"{verb} {_cand_cell(c)}"))
    for e in pc.candidate_errors:
        rows.append((e.t, e.seq, "error", f"icecandidateerror {e.code} {e.url} {e.text!r}"))
    rows.sort(key=lambda r: (r[0] is None, r[0] or 0.0, r[1]))
    return [(t, kind, text) for t, _, kind, text in rows]


def grouped_errors(errors: list[CandidateError]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, str], list[CandidateError]] = defaultdict(list)
    for e in errors:
        groups[(e.url, e.code, e.text)].append(e)
    out = []
    for (url, code, text), errs in groups.items():
        times = [e.t for e in errs if e.t is not None]
        out.append(
            {
                "url": url,
                "code": code,
                "text": text,
                "count": len(errs),
                "category": errs[0].category,
                "meaning": ERROR_CATEGORY_TEXT.get(errs[0].category, ""),
                "first": min(times) if times else None,
                "last": max(times) if times else None,
                "addresses": sorted({e.address for e in errs if e.address}),
            }
        )
    return out


def shown_pairs(pc: PeerConnectionReport) -> list[Pair]:
    selected = {s.pair_id for s in pc.selected}

    def key(p: Pair) -> tuple[int, int, int, int]:
        return (
            p.id in selected,
            bool(p.nominated),
            (p.bytes_received or 0) + (p.bytes_sent or 0),
            p.requests_sent or 0,
        )

    return sorted(pc.pairs, key=key, reverse=True)


def downsample(
    points: list[tuple[float, float]], limit: int = MAX_SAMPLES
) -> list[tuple[float, float]]:
    if len(points) <= limit:
        return points
    step = len(points) / limit
    out = [points[int(i * step)] for i in range(limit)]
    if out[-1] is not points[-1]:
        out[-1] = points[-1]
    return out


# ---- JSON ---------------------------------------------------------------------------------------
def _candidate_dict(c: Candidate | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {
        "side": c.side,
        "type": c.type,
        "protocol": c.protocol,
        "address": c.address,
        "port": c.port,
        "relayProtocol": c.relay_protocol,
        "url": c.url,
        "mdns": c.mdns,
        "tcpType": c.tcp_type,
        "relatedAddress": c.related_address,
        "statsId": c.stats_id,
        "sources": list(c.sources),
    }


def _pair_dict(pc: PeerConnectionReport, p: Pair) -> dict[str, Any]:
    return {
        "id": p.id,
        "state": p.state,
        "nominated": p.nominated,
        "selected": any(s.pair_id == p.id for s in pc.selected) or bool(p.selected),
        "requestsSent": p.requests_sent,
        "requestsReceived": p.requests_received,
        "responsesSent": p.responses_sent,
        "responsesReceived": p.responses_received,
        "bytesSent": p.bytes_sent,
        "bytesReceived": p.bytes_received,
        "currentRoundTripTime": p.current_rtt,
        "totalRoundTripTime": p.total_rtt,
        "firstSeen": iso(p.first_seen),
        "lastSeen": iso(p.last_seen),
        "vanished": p.vanished,
        "local": _candidate_dict(p.local),
        "remote": _candidate_dict(p.remote),
    }


def _series_dict(pc: PeerConnectionReport, s: Series) -> dict[str, Any]:
    pts = s.points
    return {
        "name": s.name,
        "direction": s.direction,
        "unit": s.unit,
        "source": s.source,
        "points": len(pts),
        "start": iso(pts[0][0]) if pts else None,
        "end": iso(pts[-1][0]) if pts else None,
        "first": pts[0][1] if pts else None,
        "last": pts[-1][1] if pts else None,
        "samples": [[offset_ms(pc, t), v] for t, v in downsample(pts)],
    }


def by_type(cands: list[Candidate]) -> dict[str, int]:
    counts = Counter(c.type for c in cands)
    return {
        t: counts.get(t, 0) for t in (*CANDIDATE_TYPES, *sorted(set(counts) - set(CANDIDATE_TYPES)))
    }


def pc_dict(pc: PeerConnectionReport) -> dict[str, Any]:
    def at(t: float | None) -> dict[str, Any]:
        return {"time": iso(t), "offsetMs": offset_ms(pc, t)}

    selected = pc.selected[-1] if pc.selected else None
    return {
        "id": pc.id,
        "source": pc.source,
        "format": pc.era,
        "url": pc.url,
        "outcome": pc.outcome,
        "timeToConnectedMs": (
            round(pc.time_to_connected, 1) if pc.time_to_connected is not None else None
        ),
        "start": iso(pc.t0),
        "configuration": {
            "known": pc.config.known,
            "iceServers": list(pc.config.ice_servers),
            "iceTransportPolicy": pc.config.ice_transport_policy,
            "bundlePolicy": pc.config.bundle_policy,
        },
        "states": {
            kind: [{"state": s.state, **at(s.t)} for s in pc.history(kind)] for kind in STATE_KINDS
        },
        "events": [{"event": text, **at(t)} for t, text, _ in pc.events],
        "candidates": [_candidate_dict(c) for c in pc.candidates],
        "candidatesByType": {"local": by_type(pc.local()), "remote": by_type(pc.remote())},
        "candidateErrors": [
            {**e, "first": iso(e["first"]), "last": iso(e["last"])}
            for e in grouped_errors(pc.candidate_errors)
        ],
        "pairs": [_pair_dict(pc, p) for p in shown_pairs(pc)],
        "selectedPair": (
            {
                "pairId": selected.pair_id,
                **at(selected.t),
                "local": _candidate_dict(selected.local),
                "remote": _candidate_dict(selected.remote),
                "description": selected.describe(),
            }
            if selected
            else None
        ),
        "selectedPairHistory": [
            {"pairId": s.pair_id, **at(s.t), "description": s.describe()} for s in pc.selected
        ],
        "selectedCandidatePairChanges": pc.selected_changes,
        "flow": [_series_dict(pc, s) for s in pc.flow],
        "stats": {
            "start": iso(pc.stats_start),
            "end": iso(pc.stats_end),
            "seriesAtBufferLimit": pc.series_at_buffer_limit,
        },
        "closed": iso(pc.closed_at),
        "notes": list(pc.notes),
        "findings": [f.as_dict() for f in pc.findings],
    }


def to_json(analysis: Analysis) -> dict[str, Any]:
    return {
        "input": {
            "path": analysis.path,
            "format": analysis.format,
            "bytes": analysis.size,
            "gzip": analysis.compressed,
            **{k: v for k, v in analysis.meta.items() if v is not None},
        },
        "findings": [f.as_dict() for f in analysis.findings],
        "peerConnections": [pc_dict(pc) for pc in analysis.reports],
    }


# ---- terminal -----------------------------------------------------------------------------------
def findings_renderable(findings: list[Finding], *, fixes: bool = True) -> Group:
    parts: list[Any] = []
    for f in findings:
        style = SEVERITY_STYLE[f.severity]
        head = Text()
        head.append(f"{SEVERITY_MARK[f.severity]} {f.severity:<7} ", style=style)
        head.append(f.code, style="bold")
        head.append(f"  {f.title}")
        if f.subject:
            head.append(f"  [{f.subject}]", style="dim")
        parts.append(head)
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=5, justify="right")
        grid.add_column(ratio=1)
        for line in f.evidence:
            grid.add_row("•", Text(line))
        if fixes and f.fix and f.fix != "—":
            grid.add_row(Text("fix:", style="green"), Text(f.fix, style="green"))
        parts.append(grid)
    if not parts:
        parts.append(Text("no findings", style="green"))
    return Group(*parts)


def _cand_cell(c: Candidate | None) -> str:
    if c is None:
        return "?"
    text = f"{c.type} {c.endpoint()}"
    if c.relay_protocol:
        text += f" via {c.relay_protocol}"
    return text


def _num(v: int | None) -> str:
    return "—" if v is None else str(v)


def pc_renderable(pc: PeerConnectionReport) -> Panel:
    parts: list[Any] = []
    cfg = pc.config
    if cfg.known:
        servers = ", ".join(cfg.ice_servers) if cfg.ice_servers else "(none)"
        parts.append(
            Text.from_markup(
                f"[bold]iceServers[/] {escape(servers)}\n"
                f"[bold]iceTransportPolicy[/] {escape(cfg.ice_transport_policy or 'all (default)')}"
                f"   [bold]bundlePolicy[/] {escape(cfg.bundle_policy or 'balanced (default)')}"
            )
        )
    else:
        parts.append(Text("configuration: not in this input", style="dim"))

    rows = timeline(pc)
    if rows:
        table = Table(title="Timeline", title_justify="left", box=None, pad_edge=False)
        table.add_column("at", justify="right", style="dim")
        table.add_column("what")
        table.add_column("state / call")
        for t, kind, text in rows[:60]:
            table.add_row(pc.offset(t), "" if kind == "api" else kind, text)
        if len(rows) > 60:
            table.add_row("", "", f"… {len(rows) - 60} more")
        parts.append(table)

    if pc.candidates:
        table = Table(title="Candidates", title_justify="left", box=None, pad_edge=False)
        for col in ("side", "type", "proto", "address", "relay", "server URL", "note"):
            table.add_column(col)
        for c in sorted(pc.candidates, key=lambda c: (c.side, _type_order(c.type)))[
            :MAX_CANDIDATES_SHOWN
        ]:
            table.add_row(
                c.side,
                c.type,
                c.protocol or "?",
                c.endpoint(),
                c.relay_protocol or "",
                c.url or "",
                "mDNS" if c.mdns else "",
            )
        parts.append(table)
    else:
        parts.append(Text("Candidates: none", style="bold"))

    errors = grouped_errors(pc.candidate_errors)
    if errors:
        table = Table(title="icecandidateerror", title_justify="left", box=None, pad_edge=False)
        for col in ("URL", "code", "text", "count", "first at", "meaning"):
            table.add_column(col)
        for e in errors:
            table.add_row(
                e["url"],
                str(e["code"]),
                e["text"],
                str(e["count"]),
                pc.offset(e["first"]),
                e["meaning"],
            )
        parts.append(table)

    if pc.pairs:
        table = Table(title="Candidate pairs", title_justify="left", box=None, pad_edge=False)
        for col in (
            "",
            "local",
            "remote",
            "state",
            "nom",
            "req s/r",
            "resp s/r",
            "bytes s/r",
            "rtt",
        ):
            table.add_column(col)
        selected = {s.pair_id for s in pc.selected}
        pairs = shown_pairs(pc)
        for p in pairs[:MAX_PAIRS_SHOWN]:
            rtt = f"{p.current_rtt * 1000:.0f} ms" if p.current_rtt is not None else "—"
            table.add_row(
                "★" if p.id in selected else "",
                _cand_cell(p.local),
                _cand_cell(p.remote),
                (p.state or "?") + (" (vanished)" if p.vanished else ""),
                "yes" if p.nominated else "",
                f"{_num(p.requests_sent)}/{_num(p.requests_received)}",
                f"{_num(p.responses_sent)}/{_num(p.responses_received)}",
                f"{human_bytes(p.bytes_sent)}/{human_bytes(p.bytes_received)}",
                rtt,
            )
        if len(pairs) > MAX_PAIRS_SHOWN:
            table.add_row("", f"… {len(pairs) - MAX_PAIRS_SHOWN} more", "", "", "", "", "", "", "")
        parts.append(table)

    if pc.selected:
        lines = [f"{pc.offset(s.t)}  {s.pair_id}: {s.describe()}" for s in pc.selected[-6:]]
        changes = (
            f" (selectedCandidatePairChanges {pc.selected_changes})" if pc.selected_changes else ""
        )
        parts.append(Text("Selected pair" + changes + "\n  " + "\n  ".join(lines)))

    if pc.flow:
        lines = []
        for s in pc.flow[:8]:
            if not s.points:
                continue
            (t1, v1), (t2, v2) = s.points[0], s.points[-1]
            amount = human_bytes(v2) if s.unit == "bytes" else f"{v2:.0f} packets"
            delta = human_bytes(v2 - v1) if s.unit == "bytes" else f"{v2 - v1:.0f}"
            lines.append(
                f"{s.name}: {amount} ({delta} from {pc.offset(t1)} to {pc.offset(t2)},"
                f" {len(s.points)} samples)"
            )
        parts.append(Text("Flow\n  " + "\n  ".join(lines)))

    for note in pc.notes:
        parts.append(Text("note: " + note, style="magenta"))
    if pc.findings:
        parts.append(
            Text("Findings: " + ", ".join(f"{f.code} ({f.severity})" for f in pc.findings))
        )
    title = f"PeerConnection {pc.id}"
    if pc.url:
        title += f"  {pc.url}"
    subtitle = f"{outcome_line(pc)} · {pc.era}" if pc.era else outcome_line(pc)
    return Panel(Group(*parts), title=escape(title), subtitle=escape(subtitle), title_align="left")


def _type_order(t: str) -> int:
    return CANDIDATE_TYPES.index(t) if t in CANDIDATE_TYPES else len(CANDIDATE_TYPES)


def render(analysis: Analysis, console: Console) -> None:
    meta = analysis.meta
    head = f"{analysis.path}: {analysis.format}"
    details = [human_bytes(analysis.size) + (" gunzipped" if analysis.compressed else "")]
    if meta.get("browser"):
        details.append(str(meta["browser"]))
    details.append(f"{len(analysis.reports)} PeerConnection(s)")
    console.print(Text(head, style="bold"), Text(" · ".join(details), style="dim"))
    for key in ("note", "answer", "summary"):
        if meta.get(key):
            console.print(Text(("" if key == "note" else "The page said: ") + str(meta[key])))
    console.print(
        Panel(findings_renderable(analysis.findings), title="Findings", title_align="left")
    )
    for pc in analysis.reports:
        console.print(pc_renderable(pc))
