"""The dashboard: one self-contained HTML page, charts drawn here as SVG, nothing fetched.

The figures are counted by the store (grouped in SQL, so 100,000 calls cost one query each, not
a loop over rows): failure rate = failed / (connected + failed) and relay share = relayed /
connected, per hour or day, per region, browser family and tag; the causes of the failures with
the fix from the findings vocabulary; time to connected p50/p95. Calls hung up before ICE could
tell (``not-connected``) are shown but left out of both rates. Times to connected are counted
in 10 ms bins, so p50/p95 are good to 10 ms.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from html import escape
from typing import Any

from iceward.analyze.api import Analysis
from iceward.analyze.html import CSS, render_html
from iceward.analyze.telemetry import FORMAT, parse_record
from iceward.diagnose import Finding
from iceward.diagnose.findings import CODES
from iceward.store import Store

#: (bucket seconds, buckets shown) per view.
VIEWS = {"hour": (3600, 48), "day": (86400, 30)}
RECENT_FAILURES = 25
#: Bin width (ms) of the time-to-connected percentiles.
TTC_BIN_MS = 10.0
EXTRA_CSS = """
.tiles{display:flex;flex-wrap:wrap;gap:.6em}.tile{border:1px solid #d0d7de;border-radius:6px;
padding:.5em .9em;min-width:8em}.tile b{display:block;font-size:1.6em}
svg.chart{width:100%;height:auto}.bar{fill:#cf222e}.bar.relay{fill:#8250df}
td .meter{display:inline-block;height:8px;background:#cf222e;vertical-align:middle}
td .meter.relay{background:#8250df}nav a{margin-right:1em}
@media (max-width:600px){body{margin:.5em auto}table{font-size:12px}th,td{padding:2px 4px}}
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


@dataclass(slots=True)
class Tally:
    connected: int = 0
    relayed: int = 0
    failed: int = 0
    other: int = 0

    def add(self, outcome: str, n: int) -> None:
        if outcome == "failed":
            self.failed += n
        elif outcome.startswith("connected"):
            self.connected += n
            self.relayed += n if outcome == "connected-relay" else 0
        else:
            self.other += n

    @property
    def judged(self) -> int:
        return self.connected + self.failed

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.judged if self.judged else None

    @property
    def relay_share(self) -> float | None:
        return self.relayed / self.connected if self.connected else None


def tally(rows: list[tuple[Any, ...]], column: int) -> dict[Any, Tally]:
    """Tallies by ``row[column]`` of rows that end with (outcome, count)."""
    out: dict[Any, Tally] = defaultdict(Tally)
    for row in rows:
        out[row[column]].add(str(row[-2]), int(row[-1]))
    return out


def percentile(histogram: list[tuple[float, int]], p: float, width: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100) of binned values: the middle of its bin."""
    total = sum(n for _, n in histogram)
    if not total:
        return None
    rank = max(1, round(p / 100 * total + 0.4999))
    seen = 0
    for start, n in sorted(histogram):
        seen += n
        if seen >= rank:
            return start + width / 2
    return None


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f}%"


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x / 1000:.2f} s"


def bars(values: list[float | None], labels: list[str], css: str, title: str) -> str:
    """A bar chart of shares (0..1) in SVG; a gap where a bucket had no call."""
    w, h, left, bottom = 720, 150, 38, 22
    n = max(1, len(values))
    step = (w - left - 6) / n
    top = max([v for v in values if v is not None] + [0.01])
    scale = (h - bottom - 8) / top
    parts = [
        f"<svg class=chart viewBox='0 0 {w} {h}' role=img aria-label='{_e(title)}'>",
        f"<text x=2 y=12>{_pct(top)}</text><text x=2 y={h - bottom}>0%</text>",
        f"<line x1={left} y1={h - bottom} x2={w} y2={h - bottom} stroke='#d0d7de'/>",
    ]
    every = max(1, n // 8)
    for i, v in enumerate(values):
        x = left + i * step
        if v is not None:
            bh = max(1.0, v * scale)
            parts.append(
                f"<rect class='{css}' x={x + 1:.1f} y={h - bottom - bh:.1f}"
                f" width={max(1.0, step - 2):.1f} height={bh:.1f}>"
                f"<title>{_e(labels[i])}: {_pct(v)}</title></rect>"
            )
        if i % every == 0:
            parts.append(f"<text x={x:.1f} y={h - 6}>{_e(labels[i])}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _meter(x: float | None, css: str = "") -> str:
    if x is None:
        return ""
    return f"<span class='meter {css}' style='width:{max(1, round(x * 80))}px'></span> "


def _breakdown(title: str, tallies: dict[Any, Tally], limit: int = 20) -> str:
    rows = sorted(tallies.items(), key=lambda kv: -(kv[1].judged + kv[1].other))[:limit]
    body = "".join(
        f"<tr><td>{_e(k if k is not None else '(none)')}</td>"
        f"<td class=num>{t.judged + t.other}</td>"
        f"<td>{_meter(t.failure_rate)}{_pct(t.failure_rate)}</td>"
        f"<td>{_meter(t.relay_share, 'relay')}{_pct(t.relay_share)}</td></tr>"
        for k, t in rows
    )
    return (
        f"<h3>By {_e(title)}</h3><table><tr><th>{_e(title)}</th><th>calls</th>"
        f"<th>failure rate</th><th>relay share</th></tr>{body or '<tr><td>none</td></tr>'}"
        "</table>"
    )


def _label(bucket: int, seconds: int) -> str:
    when = dt.datetime.fromtimestamp(bucket * seconds, dt.UTC)
    return when.strftime("%H:%M" if seconds < 86400 else "%m-%d")


def render_dashboard(store: Store, by: str, now: float) -> str:
    seconds, count = VIEWS[by]
    first = int(now) // seconds - count + 1
    since = first * seconds
    rows = store.call_tally(since, seconds)  # (bucket, region, browser, cause, outcome, n)
    over_time = tally(rows, 0)
    buckets = list(range(first, first + count))
    labels = [_label(b, seconds) for b in buckets]
    total = Tally()
    for t in over_time.values():
        total.connected += t.connected
        total.relayed += t.relayed
        total.failed += t.failed
        total.other += t.other
    failed_by_cause: dict[str, int] = defaultdict(int)
    for row in rows:
        if row[4] == "failed":
            failed_by_cause[str(row[3])] += int(row[5])
    causes = sorted(failed_by_cause.items(), key=lambda kn: -kn[1])
    histogram = store.connect_time_histogram(since, TTC_BIN_MS)
    p50 = percentile(histogram, 50, TTC_BIN_MS)
    p95 = percentile(histogram, 95, TTC_BIN_MS)
    cause_rows = "".join(
        f"<tr><td class=code>{_e(code)}</td><td class=num>{n}</td>"
        f"<td>{_e(CODES[code].title if code in CODES else '')}</td>"
        f"<td class=fix>{_e(CODES[code].fix if code in CODES else '')}</td></tr>"
        for code, n in causes
    )
    failures = store.list_calls(RECENT_FAILURES, "failed", since)
    failure_rows = "".join(
        f"<tr><td><a href='/dashboard/calls/{_e(c['id'])}'>{_e(c['at'][:19])}</a></td>"
        f"<td class=code>{_e(c['cause'])}</td><td>{_e(c['region'] or '')}</td>"
        f"<td>{_e(c['browser'])}</td><td>{_e(' '.join(c['tags']))}</td></tr>"
        for c in failures
    )
    span = f"the last {count} {by}s"
    other = "day" if by == "hour" else "hour"
    tiles = (
        f"<div class=tiles><div class=tile>calls<b>{total.judged + total.other}</b></div>"
        f"<div class=tile>ICE failure rate<b>{_pct(total.failure_rate)}</b></div>"
        f"<div class=tile>relay share<b>{_pct(total.relay_share)}</b></div>"
        f"<div class=tile>time to connected p50<b>{_ms(p50)}</b></div>"
        f"<div class=tile>p95<b>{_ms(p95)}</b></div></div>"
    )
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>iceward dashboard</title><style>{CSS}{EXTRA_CSS}</style></head><body>"
        f"<h1>iceward calls</h1><p class=meta>{_e(span)}, as browsers reported them"
        f" (<a href='/dashboard?by={other}'>by {other}</a>). Failure rate: failed of connected"
        " + failed; relay share: relayed of connected; calls hung up before ICE could tell"
        f" are counted, not rated.</p>{tiles}"
        f"<h2>ICE failure rate by {by}</h2>"
        + bars([over_time[b].failure_rate if b in over_time else None for b in buckets],
               labels, "bar", "failure rate")
        + f"<h2>Relay share by {by}</h2>"
        + bars([over_time[b].relay_share if b in over_time else None for b in buckets],
               labels, "bar relay", "relay share")
        + "<h2>Causes of the failures</h2><table><tr><th>cause</th><th>calls</th><th>what</th>"
        f"<th>fix</th></tr>{cause_rows or '<tr><td>no failure</td></tr>'}</table>"
        + _breakdown("region", tally(rows, 1))
        + _breakdown("browser", tally(rows, 2))
        + _breakdown("tag", tally(store.tag_tally(since), 0))
        + "<h2>Recent failures</h2><table><tr><th>at (UTC)</th><th>cause</th><th>region</th>"
        f"<th>browser</th><th>tags</th></tr>{failure_rows or '<tr><td>none</td></tr>'}</table>"
        "</body></html>"
    )  # fmt: skip


def _issuance_html(issued: dict[str, Any] | None, request_id: str) -> str:
    if issued is None:
        return (
            f"<h2>Issued iceServers</h2><p>request {_e(request_id)}: no longer in the issuance"
            " log (it keeps the newest entries)</p>"
        )
    rows = "".join(
        f"<tr><td>{_e(', '.join(s.get('urls', [])))}</td><td>{_e(s.get('username', ''))}</td>"
        f"<td>{_e(s.get('credential', ''))}</td></tr>"
        for s in issued["iceServers"]
    )
    return (
        f"<h2>Issued iceServers</h2><p class=meta>request {_e(request_id)} at"
        f" {_e(issued['at'])} for {_e(issued['user'])} by key {_e(issued['apiKey'])},"
        f" TTL {_e(issued['ttl'])} s</p><table><tr><th>urls</th><th>username</th>"
        f"<th>credential</th></tr>{rows}</table>"
    )


def call_analysis(call: dict[str, Any]) -> Analysis:
    """The stored record as the analyzer's model, with the findings it was judged by when it
    arrived (what the outcome, the cause and the metrics were counted from)."""
    pc = parse_record(call["record"])
    pc.findings = [
        Finding(f["code"], f["severity"], f["title"], f["evidence"], f["fix"], f.get("subject"))
        for f in call["findings"]
    ]
    meta = {
        "note": f"call record from the browser SDK: {call['outcome']}"
        + (f" ({call['cause']})" if call["cause"] else "")
        + f"; {call['browser']}, region {call['region'] or '—'}, node {call['node'] or '—'}",
    }
    size = len(str(call["record"]))
    return Analysis(f"call {call['id']}", FORMAT, size, False, [pc], list(pc.findings), meta)


def render_call(call: dict[str, Any]) -> str:
    html = render_html(call_analysis(call))
    extra = _issuance_html(call.get("issuance"), call["requestId"])
    back = "<p><a href='/dashboard'>← dashboard</a></p>"
    return html.replace("<h1>", back + "<h1>", 1).replace("</body>", extra + "</body>", 1)
