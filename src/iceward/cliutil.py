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
from typer.core import TyperGroup

if TYPE_CHECKING:
    from pydantic import ValidationError

Opt = typer.Option

ConfigOpt = Annotated[Path | None, Opt("--config", help="TOML settings file.")]
DataDirOpt = Annotated[Path | None, Opt("--data-dir", help="Where state is kept.")]
DatabaseOpt = Annotated[str | None, Opt("--database", help="SQLAlchemy URL.")]
JsonOpt = Annotated[bool, Opt("--json")]


#: Typer's names of value types, as the placeholders click has always shown.
_TYPE_WORDS = {
    "int": "INTEGER",
    "float": "FLOAT",
    "str": "TEXT",
    "bool": "BOOLEAN",
    "path": "PATH",
    "file": "FILE",
    "directory": "DIRECTORY",
}


def placeholder(param: Any, ctx: Any) -> str | None:
    """The word ``--help`` shows for a parameter's value: nothing for a flag, INTEGER, TEXT,
    PATH... for a type (Typer would print ``<int>``, ``<list[str]>``), a choice's values as
    they are; None when this Typer has no such notion (then it shows click's own words)."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    display = getattr(param, "display_type", None)
    if display is None:
        return None
    label = str(display(ctx))
    if label.startswith("<") and label.endswith(">"):
        label = label[1:-1]
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    label = label.removesuffix(" range")  # the range itself is shown beside it
    return label if "|" in label else _TYPE_WORDS.get(label, label.upper())


def tidy_placeholders(command: Any, ctx: Any) -> None:
    """Give every option of ``command`` (and of its subcommands, and its ``--help``) a
    :func:`placeholder` where it has no metavar of its own; an argument keeps its name and
    shows the word as its type."""
    if getattr(command, "_iceward_tidy", False):
        return
    command._iceward_tidy = True
    params = list(getattr(command, "params", []))
    help_option = getattr(command, "get_help_option", None)
    if help_option is not None:
        params.append(help_option(ctx))
    for param in params:
        if param is None or getattr(param, "metavar", "") is not None:
            continue
        word = placeholder(param, ctx)
        if word is None:
            continue
        if getattr(param, "param_type_name", "") == "option":
            param.metavar = word
        elif hasattr(param, "display_type_rich"):
            setattr(param, "display_type_rich", lambda ctx, word=word: word)  # noqa: B010
    for sub in getattr(command, "commands", {}).values():
        tidy_placeholders(sub, ctx)


class TidyGroup(TyperGroup):
    """The app's command group: :func:`tidy_placeholders` on itself and each command it
    hands out, whoever registered it."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            tidy_placeholders(command, ctx)
        return command

    def get_params(self, ctx: Any) -> Any:
        tidy_placeholders(self, ctx)
        return super().get_params(ctx)


def fail(message: str, command: str = "") -> typer.Exit:
    """Print ``iceward[ COMMAND]: error: MESSAGE`` on stderr; return the Exit(2) to raise."""
    prog = f"iceward {command}" if command else "iceward"
    typer.echo(f"{prog}: error: {message}", err=True)
    return typer.Exit(2)


def settings_error(exc: ValidationError | ValueError) -> typer.Exit:
    """:func:`fail` with settings that do not validate, on one line: each wrong setting and
    what is wrong (``iceward.config.load_settings`` says so already; a ValidationError from
    elsewhere is put the same way)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            cause = (err.get("ctx") or {}).get("error")
            message = str(cause) if isinstance(cause, Exception) else err["msg"]
            parts.append(f"{where.replace('_', '-')}: {message}")
        return fail("; ".join(parts))
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
