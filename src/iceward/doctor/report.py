"""Presenting a doctor run: live progress, tables per URL and transport, findings, JSON.

Renderers only present: every number and word comes from the evidence and the findings.
Credentials are masked wherever the configuration is shown (reports get pasted into tickets).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.measure import Measurement
from rich.padding import Padding
from rich.status import Status
from rich.table import Table
from rich.text import Text

from iceward import __version__
from iceward.diagnose.findings import Finding
from iceward.doctor.config import ServerUrl
from iceward.doctor.evidence import Evidence, Probe, fmt_addr, to_jsonable
from iceward.doctor.rules import duration, utc

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
_MARK = {True: ("✓", "green"), False: ("✗", "red"), None: ("·", "dim")}


class RichProgress:
    """Live progress: a spinner for the running stage (on a terminal) and a line per result."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._status: Status | None = None

    def stage(self, name: str) -> None:
        self.console.print(Text(name, style="bold"))
        if not self.console.is_terminal:
            return
        if self._status is None:
            self._status = self.console.status(name)
            self._status.start()
        else:
            self._status.update(name)

    def line(self, text: str, ok: bool | None = None) -> None:
        mark, style = _MARK[ok]
        self.console.print(Text.assemble("  ", (mark, style), " ", text))

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def mask(value: Any) -> Any:
    """The config with every credential/password shortened to its first 4 characters."""
    if isinstance(value, list):
        return [mask(v) for v in value]
    if isinstance(value, dict):
        return {
            k: (
                f"{v[:4]}…({len(v)} chars)"
                if k in ("credential", "password") and isinstance(v, str) and len(v) > 4
                else mask(v)
            )
            for k, v in value.items()
        }
    return value


def _url_json(url: ServerUrl, now: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "url": url.raw,
        "scheme": url.scheme,
        "host": url.host,
        "port": url.port,
        "transport": url.transport,
        "server_index": url.server_index,
    }
    cred = url.credential
    if cred is not None:
        out["username"] = cred.username
        if cred.rest_expiry is not None:
            out["rest_expiry"] = utc(cred.rest_expiry)
            out["rest_expires_in_s"] = int(cred.rest_expiry - now)
    return out


def to_json(
    ev: Evidence, findings: list[Finding], ignored: list[Finding], summary: str, exit_code: int
) -> dict[str, Any]:
    config = ev.config
    return {
        "tool": "iceward doctor",
        "version": __version__,
        "checked_at": utc(ev.now),
        "elapsed_s": ev.elapsed_s,
        "summary": summary,
        "exit_code": exit_code,
        "findings": [f.as_dict() for f in findings],
        "ignored": [f.as_dict() for f in ignored],
        "source": to_jsonable(ev.source),
        "config": mask(config.raw) if not isinstance(config.raw, str) else config.raw[:2000],
        "config_issues": to_jsonable(config.issues),
        "urls": [_url_json(u, ev.now) for u in config.urls],
        "resolution": to_jsonable(ev.resolutions),
        "probes": to_jsonable(ev.probes),
        "datapath": to_jsonable(ev.datapaths),
        "security": None if ev.security is None else to_jsonable(ev.security),
    }


# -- terminal -------------------------------------------------------------------------------------


def _cell(ok: bool | None, text: str) -> Text:
    mark, style = _MARK[ok]
    return Text.assemble((mark, style), " ", text)


def _stun_cell(p: Probe) -> Text:
    if p.mapped is not None:
        return _cell(True, f"{fmt_addr(p.mapped)} {p.stun_rtt_ms} ms")
    if p.address is None:
        return _cell(False, "no address")
    if p.outcome in ("unreachable", "skipped"):
        return _cell(False, short_error(p))
    if p.stun_error:
        return _cell(False, p.stun_error[:40])
    return _cell(None, "-")


_SHORT = (
    ("ICMP port unreachable", "port unreachable"),
    ("connection refused", "connection refused"),
    ("no answer", "no answer"),
    ("DNS:", "does not resolve"),
    ("no route", "no route"),
    ("TLS handshake", "TLS handshake failed"),
    ("closed the connection", "connection closed"),
)


def short_error(p: Probe) -> str:
    """A table-sized version of the probe's error; the findings carry the full text."""
    if p.outcome in ("auth", "refused") and p.error_code is not None:
        return f"{p.error_code} {'credential refused' if p.outcome == 'auth' else 'refused'}"
    error = p.error or p.stun_error or "no answer"
    for needle, short in _SHORT:
        if needle in error:
            return short
    return error[:40]


def _turn_cell(p: Probe) -> Text:
    if p.scheme not in ("turn", "turns"):
        return _cell(None, "-")
    if p.outcome == "ok":
        relayed = ", ".join(fmt_addr(r) for r in p.relayed) or "?"
        return _cell(True, f"relayed {relayed} ({p.allocate_ms} ms)")
    return _cell(False, short_error(p))


def _notes(p: Probe) -> Text:
    notes = []
    if p.tls is not None:
        if not p.tls.checked:
            notes.append(("certificate not checked (--insecure)", "yellow"))
        elif p.tls.verified:
            notes.append((f"cert ✓ until {p.tls.not_after[:10]}", "green"))
        else:
            notes.append((f"cert ✗ {p.tls.error}", "red"))
    if p.implied:
        notes.append(("not in the config", "dim"))
    if p.software:
        notes.append((p.software, "dim"))
    text = Text()
    for i, (note, style) in enumerate(notes):
        if i:
            text.append("; ")
        text.append(note, style=style)
    return text


Cell = Text | str


@dataclass(slots=True)
class Rows:
    """A table's title, headers and rows; the first column is a URL. Rendered as a table when
    every cell fits the console unbroken (a URL or ``address:port`` split in the middle misleads
    whoever copies it), else stacked: each URL on its own line, its rows under it."""

    title: str
    headers: tuple[str, ...]
    #: Short labels for the stacked form ("" for none), one per header after the first.
    labels: tuple[str, ...] = ()
    rows: list[tuple[Cell, ...]] = field(default_factory=list)

    def add(self, *cells: Cell) -> None:
        self.rows.append(cells)

    def widths(self, console: Console) -> list[int] | None:
        """Column widths in which no word is broken, or None when the console is too narrow."""
        lows, highs = [], []
        for index, header in enumerate(self.headers):
            cells = [Text(header), *(_text(row[index]) for row in self.rows)]
            sizes = [Measurement.get(console, console.options, cell) for cell in cells]
            lows.append(max(m.minimum for m in sizes))
            highs.append(max(m.maximum for m in sizes))
        room = console.width - (3 * len(self.headers) + 1)  # borders and padding
        if sum(lows) > room:
            return None
        if sum(highs) <= room:
            return highs
        spare, wants = room - sum(lows), [h - low for low, h in zip(lows, highs, strict=True)]
        return [low + spare * w // sum(wants) for low, w in zip(lows, wants, strict=True)]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        widths = self.widths(console)
        if widths is not None:
            table = Table(title=self.title, title_justify="left", expand=False)
            for header, width in zip(self.headers, widths, strict=True):
                table.add_column(header, width=width, overflow="fold")
            for row in self.rows:
                table.add_row(*row)
            yield table
            return
        yield Text(self.title, style="italic")
        previous: str | None = None
        for row in self.rows:
            head = _text(row[0]).plain
            if head != previous:
                yield Text(head, style="bold", overflow="fold")
                previous = head
            line = Text()
            labels = self.labels or self.headers[1:]
            for label, cell in zip(labels, row[1:], strict=True):
                text = _text(cell)
                if text.plain.strip("·✓✗ ") in ("", "-"):
                    continue
                if line:
                    line.append(" · ", style="dim")
                if label:
                    line.append(f"{label} ", style="dim")
                line.append_text(text)
            yield Padding(line, (0, 0, 0, 2))


def _text(cell: Cell) -> Text:
    return cell if isinstance(cell, Text) else Text(cell)


def probe_table(ev: Evidence) -> Rows:
    rows = Rows(
        "URL \N{MULTIPLICATION SIGN} transport",
        ("URL", "via", "address", "STUN Binding", "TURN Allocate", "notes"),
        ("via", "to", "STUN", "TURN", ""),
    )
    for p in ev.probes:
        rows.add(
            Text(p.url),
            p.transport.upper(),
            Text(p.target),
            _stun_cell(p),
            _turn_cell(p),
            _notes(p),
        )
    return rows


def datapath_table(ev: Evidence) -> Rows:
    rows = Rows(
        "Relay data path (two allocations relaying to each other)",
        ("via", "relayed A ↔ B", "crossed A→B / back", "loss", "RTT p50 / p95", "jitter"),
        ("relayed", "crossed A→B / back:", "loss", "RTT p50 / p95:", "jitter"),
    )
    for dp in ev.datapaths:
        if dp.setup_error:
            state = None if dp.not_tested else False
            rows.add(Text(dp.url), "-", _cell(state, dp.setup_error), "-", "-", "-")
            continue
        rows.add(
            Text(dp.url),
            Text(f"{fmt_addr(dp.relayed_a)} ↔ {fmt_addr(dp.relayed_b)}"),
            _cell(not dp.blocked, f"{dp.a_to_b}/{dp.sent} / {dp.b_to_a}/{dp.sent}"),
            f"{dp.loss:.0%}",
            f"{dp.p50_ms} / {dp.p95_ms} ms" if dp.p50_ms is not None else "-",
            f"{dp.jitter_ms} ms" if dp.jitter_ms is not None else "-",
        )
    return rows


def security_table(ev: Evidence) -> Rows:
    rows = Rows(
        "Peer policy (--security: CreatePermission only, no payload)",
        ("via", "peer", "what it is", "answer"),
        ("peer", "", ""),
    )
    if not ev.security:
        rows.add("-", "-", "-", _cell(None, "not tested: no TURN allocation succeeded"))
    for scan in ev.security or []:
        if scan.error:
            rows.add(Text(scan.url), "-", "-", _cell(None, scan.error))
        for c in scan.checks:
            rows.add(
                Text(scan.url),
                Text(c.peer),
                Text(c.label),
                Text(c.answer, style="bold red" if c.accepted else "green"),
            )
    return rows


def finding_block(f: Finding) -> Group:
    head = Text.assemble(
        (f"{f.severity.upper():7}", _STYLE[f.severity]), " ", (f.code, "bold"), "  ", f.title
    )
    rows: list[Text] = [head]
    if f.subject:
        rows.append(Text(f"        about: {f.subject}", style="dim"))
    for line in f.evidence:
        rows.append(Text(f"        • {line}"))
    if f.fix and f.fix != "—":
        rows.append(Text.assemble("        fix: ", (f.fix, "bold")))
    return Group(*rows)


def served_config(console: Console, ev: Evidence, max_lines: int = 40) -> None:
    """What the backend handed out (credentials masked): a wrong config is a root cause."""
    src = ev.source
    skew = "" if src.clock_skew_s is None else f"; its clock {src.clock_skew_s:+g} s vs this one"
    console.print(
        Text(
            f"Config served by {src.method or 'GET'} {src.location} (HTTP {src.http_status}, "
            f"{src.content_type or 'no Content-Type'}{skew}):",
            style="bold",
        )
    )
    raw = ev.config.raw
    text = raw if isinstance(raw, str) else json.dumps(mask(raw), indent=2, ensure_ascii=False)
    lines = text.splitlines() or [""]
    if len(lines) > max_lines:
        lines = [*lines[:max_lines], f"… {len(lines) - max_lines} more lines (--json has all)"]
    console.print(Text("\n".join(lines), style="dim"))


def render(
    console: Console, ev: Evidence, findings: list[Finding], ignored: list[Finding], summary: str
) -> None:
    config = ev.config
    console.print()
    if ev.source.kind == "url":
        served_config(console, ev)
    if config.urls:
        console.print(probe_table(ev))
    if ev.datapaths:
        console.print(datapath_table(ev))
    if ev.security is not None:
        console.print(security_table(ev))
    creds = {u.server_index: u.credential for u in config.turn_urls if u.credential}
    for index, cred in sorted(creds.items()):
        if cred and cred.rest_expiry is not None:
            left = cred.rest_expiry - ev.now
            state = f"expires in {duration(left)}" if left > 0 else f"expired {duration(left)} ago"
            console.print(
                Text(
                    f"iceServers[{index}] username {cred.username!r}: TURN REST "
                    f"credential, {state} ({utc(cred.rest_expiry)})",
                    style="dim",
                )
            )
    console.print()
    if findings:
        console.print(Text(f"Findings ({len(findings)}), most likely cause first:", style="bold"))
        for f in findings:
            console.print(finding_block(f))
    else:
        console.print(Text("No findings.", style="bold green"))
    if ignored:
        console.print(
            Text("Ignored (--ignore): " + ", ".join(sorted({f.code for f in ignored})), style="dim")
        )
    errors = sum(1 for f in findings if f.severity == "error")
    verdict_style = "bold red" if errors else "bold green"
    console.print()
    console.print(Text.assemble(("Verdict: ", "bold"), (summary, verdict_style)))
    stamp = datetime.datetime.fromtimestamp(ev.now, datetime.UTC).strftime("%H:%M:%S UTC")
    console.print(
        Text(
            f"checked {stamp} in {ev.elapsed_s} s from this machine; --json for the full report",
            style="dim",
        )
    )
