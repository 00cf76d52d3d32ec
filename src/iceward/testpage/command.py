"""The ``test-link`` and ``reports`` subcommands, registered on the main app by ``register``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from iceward.cliutil import ConfigOpt, DatabaseOpt, DataDirOpt, JsonOpt, Opt, fail, print_rows
from iceward.storecli import load, open_store

reports_app = typer.Typer(help="Browser test page reports shared with support.")


def test_link(
    ttl: Annotated[int, Opt("--ttl", help="Seconds the link stays valid.", min=60)] = 3600,
    base_url: Annotated[
        str | None, Opt("--base-url", help="The HTTP API as users reach it [from --http].")
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Print a link to the browser test page with a short-lived token (no API key in it)."""
    from iceward.testpage.tokens import MAX_TTL, ensure_key, mint_token

    if ttl > MAX_TTL:
        raise fail(f"--ttl is at most {MAX_TTL} seconds")
    settings = load(config, data_dir=data_dir)
    if base_url is None:
        bind = settings.http_bind
        if bind is None:
            raise fail("the HTTP API is off (--http); give --base-url")
        host, port = bind
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        base_url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    token = mint_token(ensure_key(settings.data_dir), ttl)
    typer.echo(f"{base_url.rstrip('/')}/test?t={token}")


@reports_app.command("list")
def reports_list(
    json_out: JsonOpt = False,
    limit: Annotated[int, Opt("--limit", min=1)] = 100,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """List stored reports, newest first."""
    store, _ = open_store(config, data_dir, database)
    print_rows(store.list_reports(limit), json_out, ["id", "createdAt", "summary"])


@reports_app.command("show")
def reports_show(
    report_id: Annotated[str, typer.Argument(metavar="ID")],
    json_out: Annotated[
        bool, Opt("--json", help="The report as stored (iceward analyze reads it).")
    ] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Show one report: verdict, findings, the URL x transport table, browser facts."""
    store, _ = open_store(config, data_dir, database)
    report = store.get_report(report_id)
    if report is None:
        raise fail(f"no report {report_id!r}")
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    _render(report)
    errors = [f for f in report.get("findings", []) if f.get("severity") == "error"]
    raise typer.Exit(1 if errors else 0)


def _render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]Report {report['id']}[/bold]  {report['createdAt']}")
    console.print(f"[bold]Verdict:[/bold] {report.get('summary', '')}")
    for f in report.get("findings", []):
        colour = {"error": "red", "warning": "yellow"}.get(f["severity"], "cyan")
        subject = f" ({f['subject']})" if f.get("subject") else ""
        console.print(f"[{colour}]{f['severity']:7}[/{colour}] {f['code']}{subject}: {f['title']}")
        for line in f.get("evidence", []):
            console.print(f"          {line}", markup=False)
        if f.get("fix") and f["fix"] != "—":
            console.print(f"          fix: {f['fix']}", markup=False)
    table = Table("URL", "transport", "status", "host", "srflx", "relay", "data path", "errors")
    for row in report.get("rows", []):
        dp = row.get("datapath")
        path = ""
        if dp:
            path = f"{dp['delivered']}/{dp['sent']}"
            if dp.get("rttP50") is not None:
                path += f" p50 {dp['rttP50']:.0f} ms p95 {dp['rttP95']:.0f} ms"
        errors = ", ".join(f"{e['code']} {e['meaning']}" for e in row.get("errors", []))
        table.add_row(
            row["url"], row["transport"], row["status"], str(row["host"]), str(row["srflx"]),
            str(row["relay"]), path, errors,
        )  # fmt: skip
    console.print(table)
    facts = report.get("facts", {})
    console.print(
        f"Browser: {facts.get('userAgent', '')}\n"
        f"getUserMedia: {facts.get('getUserMedia')}, mDNS host candidates: "
        f"{facts.get('mdnsHost')}, IPv6: {facts.get('ipv6')}",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    """Add the subcommands to ``app``."""
    app.command("test-link")(test_link)
    app.add_typer(reports_app, name="reports")
