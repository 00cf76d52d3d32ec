"""``--html OUT``: one self-contained HTML file (inline CSS and SVG, no script, no CDN).

Meant to be attached to a support ticket: the findings first, then per PeerConnection a timeline
chart (state lanes over the bytes sent/received curves, candidate errors marked), the
configuration, candidates, candidate errors, pairs and the selected pair over time.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from iceward import __version__
from iceward.analyze.model import STATE_KINDS, PeerConnectionReport
from iceward.analyze.report import (
    MAX_PAIRS_SHOWN,
    grouped_errors,
    human_bytes,
    iso,
    outcome_line,
    shown_pairs,
    timeline,
)
from iceward.diagnose import Finding

if TYPE_CHECKING:
    from iceward.analyze.api import Analysis

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;
color:#1d2329;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:2px solid #d0d7de}
h3{margin:1.2em 0 .4em}.meta{color:#57606a}
table{border-collapse:collapse;width:100%;margin:.4em 0 1em;font-size:13px}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #e5e8eb;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.finding{border-left:5px solid #999;padding:.4em .8em;margin:.6em 0;background:#fafbfc}
.finding.error{border-color:#cf222e}.finding.warning{border-color:#d4a72c}
.finding.info{border-color:#218bff}.sev{font-weight:700;text-transform:uppercase;font-size:12px}
.error .sev{color:#cf222e}.warning .sev{color:#9a6700}.info .sev{color:#0969da}
.code{font-family:ui-monospace,monospace;font-weight:700}.fix{color:#1a7f37}
.note{background:#fbefff;border-left:5px solid #8250df;padding:.3em .8em;margin:.4em 0}
svg{background:#fff;border:1px solid #d0d7de;margin:.5em 0}
svg text{font:11px system-ui,sans-serif;fill:#57606a}
.sel{font-weight:700}code{font-size:12px}
.legend{font-size:12px;color:#57606a;margin:0 0 1em}.legend span{margin-right:1.2em}
.sw{display:inline-block;width:12px;height:12px;margin-right:.35em;vertical-align:-2px}
.sw.err{height:0;border-top:2px dashed #cf222e;vertical-align:3px}
"""
STATE_COLORS = {
    "new": "#d0d7de",
    "checking": "#d4a72c",
    "connecting": "#d4a72c",
    "gathering": "#d4a72c",
    "have-local-offer": "#54aeff",
    "have-remote-offer": "#54aeff",
    "have-local-pranswer": "#54aeff",
    "have-remote-pranswer": "#54aeff",
    "connected": "#2da44e",
    "completed": "#1a7f37",
    "complete": "#2da44e",
    "stable": "#2da44e",
    "disconnected": "#fb8f44",
    "failed": "#cf222e",
    "closed": "#6e7781",
}
BYTES_COLORS = {"sent": "#0969da", "received": "#8250df"}
W, LANE, PLOT, LEFT, RIGHT = 960, 18, 150, 110, 20


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _finding_html(f: Finding) -> str:
    evidence = "".join(f"<li>{_e(line)}</li>" for line in f.evidence)
    subject = f" <span class=meta>[{_e(f.subject)}]</span>" if f.subject else ""
    fix = f"<div class=fix>Fix: {_e(f.fix)}</div>" if f.fix and f.fix != "—" else ""
    return (
        f"<div class='finding {_e(f.severity)}'><span class=sev>{_e(f.severity)}</span> "
        f"<span class=code>{_e(f.code)}</span> — {_e(f.title)}{subject}"
        f"<ul>{evidence}</ul>{fix}</div>"
    )


def chart(pc: PeerConnectionReport) -> str:
    """State lanes plus the bytes curves, on one time axis (seconds from the PC's start), and a
    legend of the colours used. No byte counters: the lanes alone, and a line saying so."""
    t0, end = pc.t0, pc.end
    if t0 is None or end is None:
        return "<p class=meta>No times in the input: no chart.</p>"
    span = max(end - t0, 1000.0)
    lanes = [k for k in STATE_KINDS if pc.history(k)]
    byte_series = [
        s
        for s in pc.flow
        if s.unit == "bytes" and s.source != "rtp" and any(t >= t0 for t, _ in s.points)
    ]
    no_bytes = "<p class=meta>No byte counters in the input: no bytes chart.</p>"
    if not lanes and not byte_series:
        return "<p class=meta>No state changes or byte counters in the input: no chart.</p>"
    top = 10
    y0 = top + LANE * len(lanes) + (20 if byte_series else 0)
    bottom = y0 + PLOT if byte_series else y0 + 4
    height = bottom + 30
    inner = W - LEFT - RIGHT

    def x(t: float) -> float:
        return LEFT + (t - t0) / span * inner

    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{height}'"
        f" viewBox='0 0 {W} {height}' role='img' aria-label='timeline of {_e(pc.id)}'>"
    ]
    shown: dict[str, str] = {}
    for i, kind in enumerate(lanes):
        y = top + i * LANE
        out.append(f"<text x='4' y='{y + 13}'>{_e(kind)}</text>")
        history = pc.history(kind)
        for j, s in enumerate(history):
            if s.t is None:
                continue
            nxt = next((h.t for h in history[j + 1 :] if h.t is not None), end)
            x1, x2 = x(s.t), x(max(nxt, s.t))
            color = STATE_COLORS.get(s.state, "#8c959f")
            shown.setdefault(s.state, color)
            width = max(x2 - x1, 1.5)
            out.append(
                f"<rect x='{x1:.1f}' y='{y + 2}' width='{width:.1f}' height='{LANE - 4}'"
                f" fill='{color}'><title>{_e(kind)}: {_e(s.state)} at {_e(pc.offset(s.t))}"
                "</title></rect>"
            )
    if byte_series:
        out.append(
            f"<rect x='{LEFT}' y='{y0}' width='{inner}' height='{PLOT}' fill='none'"
            " stroke='#d0d7de'/>"
        )
        peak = max((v for s in byte_series for _, v in s.points), default=0.0)
        scale = max(peak, 1.0)  # all-zero counters draw a flat line: nothing flowed
        for series in byte_series:
            pts = " ".join(
                f"{x(t):.1f},{y0 + PLOT - v / scale * (PLOT - 6):.1f}"
                for t, v in series.points
                if t >= t0
            )
            stroke = BYTES_COLORS.get(series.direction, "#57606a")
            out.append(
                f"<polyline fill='none' stroke='{stroke}' stroke-width='2'"
                f" points='{pts}'><title>{_e(series.name)}</title></polyline>"
            )
        out.append(f"<text x='4' y='{y0 + 12}'>bytes (cumulative)</text>")
        out.append(f"<text x='4' y='{y0 + 26}' fill='#0969da'>— sent</text>")
        out.append(f"<text x='4' y='{y0 + 40}' fill='#8250df'>— received</text>")
        out.append(f"<text x='4' y='{y0 + PLOT}'>max {human_bytes(peak)}</text>")
    errors = [e for e in pc.candidate_errors if e.t is not None]
    for e in errors:
        assert e.t is not None
        xe = x(e.t)
        out.append(
            f"<line x1='{xe:.1f}' x2='{xe:.1f}' y1='{top}' y2='{bottom}' stroke='#cf222e'"
            f" stroke-dasharray='3,3'><title>icecandidateerror {e.code} {_e(e.url)}"
            f" {_e(e.text)} at {_e(pc.offset(e.t))}</title></line>"
        )
    ticks = 8
    for i in range(ticks + 1):
        t = t0 + span * i / ticks
        out.append(
            f"<text x='{x(t):.1f}' y='{bottom + 16}' text-anchor='middle'>"
            f"{(t - t0) / 1000:.1f} s</text>"
        )
    out.append("</svg>")
    legend = [
        f"<span><i class=sw style='background:{color}'></i>{_e(state)}</span>"
        for state, color in shown.items()
    ]
    if errors:
        legend.append("<span><i class='sw err'></i>icecandidateerror</span>")
    out.append(f"<p class=legend>{''.join(legend)}</p>" if legend else "")
    if not byte_series:
        out.append(no_bytes)
    return "".join(out)


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if i in numeric else ''}>{cell}</td>" for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pc_html(pc: PeerConnectionReport) -> str:
    parts = [f"<h2>PeerConnection {_e(pc.id)}</h2>"]
    meta = [outcome_line(pc), pc.era or pc.source]
    if pc.url:
        meta.append(pc.url)
    if pc.t0 is not None:
        meta.append(f"start {iso(pc.t0)}")
    parts.append(f"<p class=meta>{_e(' · '.join(meta))}</p>")
    parts.extend(f"<div class=note>{_e(n)}</div>" for n in pc.notes)
    if pc.findings:
        summary = ", ".join(f"{f.code} ({f.severity})" for f in pc.findings)
        parts.append(
            f"<details><summary>Findings for this PeerConnection: {_e(summary)}</summary>"
            + "".join(_finding_html(f) for f in pc.findings)
            + "</details>"
        )
    parts.append(chart(pc))
    cfg = pc.config
    if cfg.known:
        parts.append(
            _table(
                ["iceServers", "iceTransportPolicy", "bundlePolicy"],
                [
                    [
                        "<br>".join(_e(u) for u in cfg.ice_servers) or "(none)",
                        _e(cfg.ice_transport_policy or "all (default)"),
                        _e(cfg.bundle_policy or "balanced (default)"),
                    ]
                ],
            )
        )
    rows = timeline(pc)
    if rows:
        parts.append("<h3>Timeline</h3>")
        parts.append(
            _table(
                ["at", "what", "state / call"],
                [[_e(pc.offset(t)), _e("" if k == "api" else k), _e(text)] for t, k, text in rows],
            )
        )
    parts.append("<h3>Candidates</h3>")
    if pc.candidates:
        parts.append(
            _table(
                ["side", "type", "protocol", "address", "relay protocol", "server URL", "note"],
                [
                    [
                        _e(c.side),
                        _e(c.type),
                        _e(c.protocol or "?"),
                        _e(c.endpoint()),
                        _e(c.relay_protocol or ""),
                        _e(c.url or ""),
                        "mDNS" if c.mdns else "",
                    ]
                    for c in pc.candidates
                ],
            )
        )
    else:
        parts.append("<p>None.</p>")
    errors = grouped_errors(pc.candidate_errors)
    if errors:
        parts.append("<h3>icecandidateerror</h3>")
        parts.append(
            _table(
                ["URL", "code", "text", "count", "first at", "meaning"],
                [
                    [
                        _e(e["url"]),
                        _e(e["code"]),
                        _e(e["text"]),
                        _e(e["count"]),
                        _e(pc.offset(e["first"])),
                        _e(e["meaning"]),
                    ]
                    for e in errors
                ],
                {1, 3},
            )
        )
    if pc.pairs:
        selected = {s.pair_id for s in pc.selected}
        parts.append("<h3>Candidate pairs</h3>")
        rows_html = []
        for p in shown_pairs(pc)[: MAX_PAIRS_SHOWN * 4]:
            local = p.local.describe() if p.local else "?"
            remote = p.remote.describe() if p.remote else "?"
            rows_html.append(
                [
                    ("<span class=sel>★ </span>" if p.id in selected else "") + _e(p.id),
                    _e(local),
                    _e(remote),
                    _e((p.state or "?") + (" (vanished)" if p.vanished else "")),
                    "yes" if p.nominated else "",
                    _e(f"{p.requests_sent}/{p.requests_received}"),
                    _e(f"{p.responses_sent}/{p.responses_received}"),
                    _e(f"{human_bytes(p.bytes_sent)}/{human_bytes(p.bytes_received)}"),
                    _e(f"{p.current_rtt * 1000:.0f} ms" if p.current_rtt is not None else "—"),
                ]
            )
        parts.append(
            _table(
                [
                    "pair",
                    "local",
                    "remote",
                    "state",
                    "nominated",
                    "requests sent/recv",
                    "responses sent/recv",
                    "bytes sent/recv",
                    "RTT",
                ],
                rows_html,
            )
        )
    if pc.selected:
        parts.append("<h3>Selected pair over time</h3>")
        parts.append(
            _table(
                ["at", "pair", "path"],
                [[_e(pc.offset(s.t)), _e(s.pair_id), _e(s.describe())] for s in pc.selected],
            )
        )
    return "".join(parts)


def render_html(analysis: Analysis) -> str:
    findings = "".join(_finding_html(f) for f in analysis.findings) or "<p>No findings.</p>"
    browser = analysis.meta.get("browser")
    meta = [analysis.format, human_bytes(analysis.size)]
    if browser:
        meta.append(str(browser))
    meta.append(f"{len(analysis.reports)} PeerConnection(s)")
    body = "".join(_pc_html(pc) for pc in analysis.reports)
    said = [
        f"<div class=note>{_e(prefix + str(analysis.meta[key]))}</div>"
        for key, prefix in (
            ("note", ""),
            ("answer", "The page said: "),
            ("summary", "The page said: "),
        )
        if analysis.meta.get(key)
    ]
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>iceward analyze: {_e(analysis.path)}</title><style>{CSS}</style></head><body>"
        f"<h1>iceward analyze</h1><p class=meta>{_e(analysis.path)} · {_e(' · '.join(meta))}"
        f" · iceward {_e(__version__)}</p>{''.join(said)}<h2>Findings</h2>{findings}{body}"
        "</body></html>"
    )
