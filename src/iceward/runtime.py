"""Process set-up shared by ``iceward serve`` and its worker processes: event loop and logging.

A leaf (standard library only; uvloop when installed).
"""

from __future__ import annotations

import asyncio
import logging
import sys


def use_uvloop() -> None:
    """Make asyncio run on uvloop when it is installed (the default loop otherwise)."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


def setup_logging(level: str, worker: int | None = None) -> None:
    """Log to stderr at ``level`` (a name; INFO if unknown).

    A worker process tags every logger name ``[wN]`` and replaces any handler already set up.
    """
    tag = "" if worker is None else f"[w{worker}]"
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s %(name)s{tag} %(message)s",
        stream=sys.stderr,
        force=worker is not None,
    )
