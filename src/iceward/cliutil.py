"""What every ``iceward`` command module shares: the usage-error exit, option types, row tables.

A leaf: typer, rich and the standard library only, so that every command module (``doctor`` and
``analyze`` included) can import it. Loading the settings or the data store for a command is
:mod:`iceward.storecli`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from pydantic import ValidationError

Opt = typer.Option

ConfigOpt = Annotated[Path | None, Opt("--config", help="TOML settings file.")]
DataDirOpt = Annotated[Path | None, Opt("--data-dir", help="Where state is kept.")]
DatabaseOpt = Annotated[str | None, Opt("--database", help="SQLAlchemy URL.")]
JsonOpt = Annotated[bool, Opt("--json")]


def fail(message: str, command: str = "") -> typer.Exit:
    """Print ``iceward[ COMMAND]: error: MESSAGE`` on stderr; return the Exit(2) to raise."""
    prog = f"iceward {command}" if command else "iceward"
    typer.echo(f"{prog}: error: {message}", err=True)
    return typer.Exit(2)


def settings_error(exc: ValidationError | ValueError) -> typer.Exit:
    """:func:`fail` with settings that do not validate: one line per wrong setting."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            lines.append(f"{where.replace('_', '-')}: {err['msg']}")
        return fail("invalid settings:\n  " + "\n  ".join(lines))
    return fail(str(exc))


def print_rows(rows: list[dict[str, Any]], json_out: bool, columns: Sequence[str]) -> None:
    """Print ``rows`` as a JSON array, or as a table of ``columns`` (None shown empty)."""
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    Console().print(table)
