"""The ``import-coturn`` subcommand (registered on the main app by :func:`register`).

Exit codes: 0 translated (what did not carry over is listed on stderr and in the file), 2 a
config that cannot be read or translated (the file and line are named).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from iceward.cliutil import Opt, fail
from iceward.coturn.convert import Result, translate
from iceward.coturn.parse import ImportFailure, read

COMMAND = "import-coturn"


def import_coturn(
    config: Annotated[
        Path,
        typer.Argument(metavar="TURNSERVER.CONF", help="coturn's config (/etc/turnserver.conf)."),
    ],
    output: Annotated[
        Path | None,
        Opt("--output", "-o", metavar="FILE",
            help="Write the TOML here (created 0600: it may hold secrets); default stdout."),
    ] = None,
    force: Annotated[bool, Opt("--force", help="Overwrite --output if it exists.")] = False,
) -> None:  # fmt: skip
    """Translate a coturn turnserver.conf into iceward settings (TOML for serve --config), and
    list what does not carry over, why, and what iceward does instead."""
    try:
        result = translate(read(config), config)
    except ImportFailure as exc:
        raise fail(str(exc), command=COMMAND) from None
    text = result.toml()
    if output is None:
        typer.echo(text, nl=False)
    else:
        try:
            _write_private(output, text, force)
        except FileExistsError:
            raise fail(f"{output} exists (--force overwrites it)", command=COMMAND) from None
        except OSError as exc:
            raise fail(f"cannot write {output}: {exc.strerror or exc}", command=COMMAND) from None
    _report(result, output)


def _write_private(path: Path, text: str, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def _report(result: Result, output: Path | None) -> None:
    counts = {
        kind: len({n.option for n in result.notes if n.kind == kind})
        for kind in ("built-in", "unsupported", "elsewhere", "unknown")
    }
    typer.echo(
        f"{result.source}: {len(result.settings)} setting(s) written; "
        f"{counts['built-in']} option(s) already iceward's behaviour, "
        f"{counts['unsupported'] + counts['elsewhere']} not carried over, "
        f"{counts['unknown']} unknown",
        err=True,
    )
    labels = {
        "unknown": "unknown",
        "unsupported": "not supported",
        "elsewhere": "done another way",
        "warning": "check",
        "differs": "differs",
    }
    for kind, options, text in result.reported():
        typer.echo(f"  {labels[kind]}: {options}: {text}", err=True)
    if output is not None:
        typer.echo(f"wrote {output}; start it with: iceward serve --config {output}", err=True)


def register(app: typer.Typer) -> None:
    """Add the subcommand to ``app``."""
    app.command(COMMAND)(import_coturn)
