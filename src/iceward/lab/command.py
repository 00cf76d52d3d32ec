"""The ``lab`` subcommands (registered on the main app by :func:`register`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the subcommands to ``app``."""
