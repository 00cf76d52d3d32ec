"""The ``test-link`` and ``reports`` subcommands, registered on the main app by ``register``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the subcommands to ``app``."""
