"""Lab output: the connectivity matrix and the diagnosis matrix, as Rich tables, Markdown, JSON."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from iceward.lab.matrix import CONFIGS, CellResult


def _grid(results: list[CellResult]) -> tuple[list[str], list[str], dict[tuple[str, str], Any]]:
    rows: list[str] = []
    cols: list[str] = []
    cells: dict[tuple[str, str], CellResult] = {}
    for r in results:
        if r.row not in rows:
            rows.append(r.row)
        if r.column not in cols:
            cols.append(r.column)
        cells[(r.row, r.column)] = r
    return rows, cols, cells


def cell_text(r: CellResult) -> str:
    text = r.label()
    if r.connected and r.first_valid_ms is not None:
        text += f" {r.first_valid_ms} ms"
    if not r.ok:
        text += " (UNEXPECTED)"
    return text


def expected_cause(r: CellResult) -> str:
    cause = r.expected.get("cause")
    return str(cause) if cause else "—"


def wrong_cause(results: list[CellResult]) -> list[CellResult]:
    """Failing cells whose diagnosis (doctor, or analyze with --browser) missed the cause."""
    return [r for r in results if r.cause_ok is False or r.analyze_ok is False]


def render_rich(console: Console, results: list[CellResult]) -> None:
    rows, cols, cells = _grid(results)
    table = Table(
        title="iceward lab: connected? selected pair (site A / site B), time to first valid pair",
        show_lines=True,
    )
    table.add_column("site A / site B")
    for c in cols:
        table.add_column(c)
    for row in rows:
        out = [row]
        for c in cols:
            r = cells.get((row, c))
            if r is None:
                out.append("")
                continue
            style = ("green" if r.connected else "yellow") if r.ok else "bold red"
            out.append(f"[{style}]{cell_text(r)}[/{style}]")
        table.add_row(*out)
    console.print(table)
    failing = [r for r in results if not r.connected]
    browser = any(r.agent == "chromium" for r in results)
    if failing:
        diag = Table(title="failing cells: expected cause vs the cause found")
        names = ["cell", "expected cause", "doctor --nat (LANs)", "all doctor errors", "match"]
        if browser:
            names += ["analyze (dumps)", "match"]
        for name in names:
            diag.add_column(name)
        marks = {True: "[green]yes[/green]", False: "[bold red]no[/bold red]", None: "—"}
        for r in failing:
            line = [
                f"{r.row} {r.column}",
                expected_cause(r),
                r.doctor_cause or "—",
                ", ".join(dict.fromkeys(r.doctor_errors)) or "—",
                marks[r.cause_ok],
            ]
            if browser:
                line += [r.analyze_cause or "—", marks[r.analyze_ok]]
            diag.add_row(*line)
        console.print(diag)
    bad = [r for r in results if not r.ok]
    missed = wrong_cause(results)
    console.print(
        f"{len(results)} cells, {len(results) - len(bad)} as expected"
        + (f", [bold red]{len(bad)} unexpected[/bold red]" if bad else "")
        + (f", [bold red]{len(missed)} with the cause missed[/bold red]" if missed else "")
    )


def render_markdown(results: list[CellResult], header: str = "") -> str:
    rows, cols, cells = _grid(results)
    lines = ["# iceward lab matrix", ""]
    if header:
        lines += [header, ""]
    lines += [
        "Each cell: ✓ connected with the selected pair as `site A / site B` candidate types "
        "(relay protocol in brackets) and the time from the start of the checks to the first "
        "valid pair, or ✗ failed. `(UNEXPECTED)` marks a cell that differs from the ground truth.",
        "",
        "Columns: " + "; ".join(f"`{c}` = {CONFIGS[c]}" for c in cols) + ".",
        "",
        "| site A / site B | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for row in rows:
        out = [f"`{row}`"]
        for c in cols:
            r = cells.get((row, c))
            out.append(cell_text(r) if r else "")
        lines.append("| " + " | ".join(out) + " |")
    failing = [r for r in results if not r.connected]
    browser = any(r.agent == "chromium" for r in results)
    if failing:
        marks = {True: "yes", False: "**no**", None: "—"}
        lines += [
            "",
            "## Failing cells: expected cause vs the cause found",
            "",
            "`iceward doctor --nat` runs inside both LANs; the cause found is "
            "`symmetric-nat-no-turn` when either side names it, else site A's first error."
            + (
                " `iceward analyze` reads both sides' webrtc-internals dumps, same rule."
                if browser
                else ""
            ),
            "",
            "| cell | expected cause | doctor found | all doctor errors | match |"
            + (" analyze found | match |" if browser else ""),
            "|---|---|---|---|---|" + ("---|---|" if browser else ""),
        ]
        for r in failing:
            line = (
                f"| `{r.row}` {r.column} | {expected_cause(r)} | {r.doctor_cause or '—'} | "
                f"{', '.join(dict.fromkeys(r.doctor_errors)) or '—'} | {marks[r.cause_ok]} |"
            )
            if browser:
                line += f" {r.analyze_cause or '—'} | {marks[r.analyze_ok]} |"
            lines.append(line)
    bad = [r for r in results if not r.ok]
    missed = wrong_cause(results)
    lines += [
        "",
        f"{len(results)} cells, {len(results) - len(bad)} as expected; "
        f"{len(failing) - len(missed)} of {len(failing)} failing cells diagnosed as expected.",
    ]
    return "\n".join(lines) + "\n"


def to_json(results: list[CellResult], meta: dict[str, Any]) -> dict[str, Any]:
    return {
        **meta,
        "cells": [asdict(r) for r in results],
        "unexpected": [f"{r.row} {r.column}" for r in results if not r.ok],
        "cause_missed": [f"{r.row} {r.column}" for r in wrong_cause(results)],
    }
