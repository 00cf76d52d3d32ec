"""``iceward calls``: the calls browsers reported, from the shell (the dashboard's data)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from iceward.cliutil import ConfigOpt, DatabaseOpt, DataDirOpt, JsonOpt, Opt, fail, print_rows
from iceward.storecli import open_store

calls_app = typer.Typer(help="Calls reported by the browser SDK (/sdk/iceward.js).")
OUTCOMES = ("connected-direct", "connected-relay", "failed", "not-connected")
COLUMNS = ["id", "at", "outcome", "relayProtocol", "cause", "region", "browser", "callId"]


@calls_app.command("list")
def calls_list(
    json_out: JsonOpt = False,
    limit: Annotated[int, Opt("--limit", min=1, max=100_000)] = 100,
    outcome: Annotated[
        str | None, Opt("--outcome", help="Only calls with this outcome: " + ", ".join(OUTCOMES))
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """List calls, newest first: outcome, relay protocol, the cause of a failure."""
    if outcome is not None and outcome not in OUTCOMES:
        raise fail(f"--outcome: {outcome!r} is none of " + ", ".join(OUTCOMES))
    store, _ = open_store(config, data_dir, database)
    print_rows(store.list_calls(limit, outcome), json_out, COLUMNS)


@calls_app.command("show")
def calls_show(
    call_id: Annotated[str, typer.Argument(metavar="ID")],
    json_out: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """One call: outcome, findings with their fixes, and the iceServers it was issued. Exit 1
    when it failed."""
    store, _ = open_store(config, data_dir, database)
    call = store.get_call(call_id) if len(call_id) <= 32 else None
    if call is None:
        raise fail(f"no call {call_id!r}")
    if json_out:
        typer.echo(json.dumps(call, indent=2))
    else:
        _render(call)
    raise typer.Exit(1 if call["outcome"] == "failed" else 0)


def _render(call: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    console.print(f"[bold]Call {call['id']}[/bold]  {call['at']}  {call['browser']}", markup=True)
    what = call["outcome"] + (f" over {call['relayProtocol']}" if call["relayProtocol"] else "")
    console.print(f"outcome: {what}" + (f", cause {call['cause']}" if call["cause"] else ""))
    for f in call["findings"]:
        console.print(f"{f['severity']:7} {f['code']}: {f['title']}", markup=False)
        for line in f.get("evidence", []):
            console.print(f"          {line}", markup=False)
        if f.get("fix") and f["fix"] != "—":
            console.print(f"          fix: {f['fix']}", markup=False)
    issued = call.get("issuance")
    if issued is None:
        console.print("issued iceServers: no longer in the issuance log", markup=False)
    else:
        console.print(f"issued iceServers (request {call['requestId']}):", markup=False)
        for server in issued["iceServers"]:
            console.print("  " + json.dumps(server), markup=False)


def register(app: typer.Typer) -> None:
    """Add the subcommands to ``app``."""
    app.add_typer(calls_app, name="calls")
