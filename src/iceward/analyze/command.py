"""The ``analyze`` subcommand (registered on the main app by :func:`register`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from iceward.analyze.load import DEFAULT_MAX_BYTES, InputError, parse_size
from iceward.cliutil import fail


def analyze_fn(
    dump: Annotated[
        Path,
        typer.Argument(
            help="webrtc-internals dump, rtcstats dump, getStats() JSON or a test page report "
            "(plain or .gz).",
            show_default=False,
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the analysis as JSON instead of the report.")
    ] = False,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Also write a self-contained HTML report to this file."),
    ] = None,
    max_size: Annotated[
        str,
        typer.Option("--max-size", help="Refuse inputs larger than this once decompressed."),
    ] = f"{DEFAULT_MAX_BYTES // (1024 * 1024)}M",
) -> None:
    """Root cause from a chrome://webrtc-internals dump, an rtcstats dump or getStats() JSON.

    Exit status: 0 no problem found, 1 problems found (errors or warnings), 2 unusable input.
    """
    from iceward.analyze.api import analyze_path
    from iceward.analyze.report import render, to_json

    try:
        limit = parse_size(max_size)
    except ValueError as exc:
        raise fail(f"--max-size: {exc}") from None
    try:
        analysis = analyze_path(dump, limit)
    except InputError as exc:
        raise fail(str(exc)) from None
    except RecursionError:
        raise fail(f"{dump}: JSON nested too deeply to be a dump") from None
    except MemoryError:
        raise fail(f"{dump}: not enough memory to analyse it (try a smaller --max-size)") from None
    if html is not None:
        from iceward.analyze.html import render_html

        try:
            html.write_text(render_html(analysis), encoding="utf-8")
        except OSError as exc:
            raise fail(f"--html {html}: {exc.strerror or exc}") from None
    if as_json:
        sys.stdout.write(json.dumps(to_json(analysis), indent=2) + "\n")
    else:
        from rich.console import Console

        render(analysis, Console())
        if html is not None:
            typer.echo(f"HTML report written to {html}", err=True)
    raise typer.Exit(analysis.exit_code)


def register(app: typer.Typer) -> None:
    """Add the subcommand to ``app``."""
    app.command("analyze")(analyze_fn)
