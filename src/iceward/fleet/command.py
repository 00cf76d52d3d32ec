"""``iceward fleet``: every node of a fleet as one node sees it (``GET /admin/v1/fleet``):
region, state, load, heartbeat age; a Rich table, or ``--json``.

Exit codes: 0 shown; 2 the node cannot be read (down, not in a fleet, a refused key), in one
line.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from iceward.cliutil import Opt, fail
from iceward.top import AdminKey, TopError, admin_api


def _rate(bps: float) -> str:
    for unit, size in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= size:
            return f"{bps / size:.1f} {unit}"
    return f"{bps:.0f} bit/s"


def render(doc: dict[str, Any]) -> Table:
    redis = doc.get("redis", "?")
    title = f"fleet at {doc.get('cluster', '?')} as node {doc.get('nodeId', '?')} sees it"
    caption = f"Redis {redis}" + (f": {doc['reason']}" if doc.get("reason") else "")
    table = Table(title=title, caption=caption)
    for column in ("node", "region", "state", "allocations", "to peer", "to client"):
        table.add_column(column, justify="right" if column.startswith(("alloc", "to")) else "left")
    for column in ("free ports", "cpu", "heartbeat", "version"):
        table.add_column(column, justify="right")
    for node in doc.get("nodes", []):
        load = node.get("load", {})
        state = node.get("state", "?")
        if not node.get("fresh", True):
            state += " (stale)"
        table.add_row(
            node["id"] + (" *" if node.get("self") else ""),
            node.get("region", ""),
            state,
            str(load.get("allocations", 0)),
            _rate(float(load.get("toPeerBps", 0))),
            _rate(float(load.get("toClientBps", 0))),
            str(load.get("freePorts", 0)),
            f"{100 * float(load.get('cpu', 0)):.0f}%",
            f"{float(node.get('age', 0)):.1f} s ago",
            node.get("version", ""),
        )
    return table


def fleet(
    admin_url: Annotated[
        str,
        Opt("--admin-url", "--url", help="A node's HTTP API.", metavar="URL"),
    ] = "http://127.0.0.1:8080",
    admin_key: AdminKey = None,
    json_out: Annotated[bool, Opt("--json", help="The fleet as JSON.")] = False,
) -> None:
    """Every node of the fleet: region, state, load, heartbeat age (from a node's admin API).

    Exit codes: 0 shown, 2 the node cannot be read (one line)."""
    api = admin_api(admin_url, admin_key, "fleet")
    try:
        doc = api.get_json("/admin/v1/fleet")
    except TopError as exc:
        raise fail(str(exc), "fleet") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise fail(f"{api.url} answered something else than iceward's fleet view", "fleet")
    if json_out:
        typer.echo(json.dumps(doc, indent=2))
    else:
        Console().print(render(doc))


def register(app: typer.Typer) -> None:
    app.command("fleet")(fleet)
