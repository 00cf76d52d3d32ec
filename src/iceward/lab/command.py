"""The ``lab`` subcommands (registered on the main app by :func:`register`).

Exit codes: 0 every cell as expected, 1 some cell differs from the ground truth (or a failing
cell's diagnosis missed the cause), 2 usage error or no root.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from iceward.cliutil import Opt, fail

lab_app = typer.Typer(
    help="Real kernel NAT in network namespaces: which ICE setups connect behind which networks "
    "(root required).",
    no_args_is_help=True,
)

DEFAULT_ROWS = ",".join(
    ["restricted/restricted", "symmetric/symmetric", "firewall/restricted"]
)  # the quick default; `--rows full` runs every row


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _require_root() -> None:
    from iceward.lab.topology import LabError, check_root

    try:
        check_root()
    except LabError as exc:
        raise fail(str(exc), command="lab") from None


@lab_app.command("run")
def run(
    rows: Annotated[
        str,
        Opt(
            "--rows",
            help="Comma-separated SITE_A/SITE_B profile pairs, or 'full'. Profiles: none, "
            "full-cone, restricted, symmetric, cgnat, cgnat-symmetric, firewall.",
        ),
    ] = DEFAULT_ROWS,
    cols: Annotated[
        str,
        Opt(
            "--cols",
            help="Comma-separated ICE configurations: none, stun, turn-udp, turn-all, relay-only.",
        ),
    ] = "none,stun,turn-udp,turn-all,relay-only",
    parallel: Annotated[int, Opt("--parallel", min=1, max=64, help="Cells at once.")] = 4,
    out: Annotated[
        Path | None,
        Opt("--out", help="Output directory [./iceward-lab-YYYYmmdd-HHMMSS]."),
    ] = None,
    server: Annotated[
        str, Opt("--server", help="STUN/TURN server in the internet namespace: iceward|coturn.")
    ] = "iceward",
    deadline: Annotated[
        float, Opt("--deadline", min=1.0, max=120.0, help="Seconds ICE may take per cell.")
    ] = 10.0,
    delay_ms: Annotated[
        int, Opt("--delay-ms", min=0, help="netem delay on site A's WAN link (ms).")
    ] = 0,
    loss: Annotated[
        float, Opt("--loss", min=0, max=100, help="netem loss on site A's WAN (%).")
    ] = 0,
    doctor: Annotated[
        bool, Opt("--doctor/--no-doctor", help="Run iceward doctor inside failing cells.")
    ] = True,
    json_out: Annotated[bool, Opt("--json", help="Print the JSON report to stdout.")] = False,
    browser: Annotated[
        bool,
        Opt(
            "--browser",
            help="Debian's Chromium (Playwright) as the agents instead of aioice; keeps each "
            "side's webrtc-internals dump and runs iceward analyze on failing cells.",
        ),
    ] = False,
    run_id: Annotated[
        str | None, Opt("--run-id", hidden=True, help="Namespace name prefix part (tests).")
    ] = None,
) -> None:
    """Run the matrix: print it, write matrix.md, matrix.json and per-cell logs."""
    from iceward.lab.matrix import CONFIGS, FULL_ROWS, LabOptions, parse_row, run_matrix
    from iceward.lab.report import render_markdown, render_rich, to_json
    from iceward.lab.topology import Netem, cleanup_all

    row_list = FULL_ROWS if rows == "full" else _split(rows)
    col_list = _split(cols)
    try:
        for row in row_list:
            parse_row(row)
    except ValueError as exc:
        raise fail(str(exc), command="lab") from None
    unknown = [c for c in col_list if c not in CONFIGS]
    if unknown or not col_list or not row_list:
        raise fail(f"--cols: choose from {', '.join(CONFIGS)}", command="lab")
    if server not in ("iceward", "coturn"):
        raise fail("--server: iceward or coturn", command="lab")
    _require_root()
    if (
        server == "coturn"
        and subprocess.run(["which", "turnserver"], capture_output=True, check=False).returncode
    ):
        raise fail("--server coturn needs turnserver (Debian package coturn)", command="lab")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = out or Path(f"iceward-lab-{stamp}")
    outdir.mkdir(parents=True, exist_ok=True)
    stream = sys.stderr if json_out else sys.stdout
    console = Console(stderr=json_out, highlight=False, width=None if stream.isatty() else 160)
    opts = LabOptions(
        outdir / "cells",
        server=server,
        deadline=deadline,
        doctor=doctor,
        netem=(Netem(delay_ms, loss), Netem()),
        browser=browser,
    )
    if browser:
        from iceward.lab.browser import chromium_path

        if chromium_path() is None:
            raise fail("--browser needs chromium (Debian package chromium)", command="lab")
        try:
            import playwright  # noqa: F401
        except ImportError:
            raise fail(
                "--browser needs the playwright package (pip install playwright)", command="lab"
            ) from None
    if run_id:
        if not run_id.isalnum() or len(run_id) > 12:
            raise fail("--run-id: up to 12 letters and digits", command="lab")
        opts.run_id = run_id
    total = len(row_list) * len(col_list)
    done: list[int] = []

    def progress(result: object) -> None:
        done.append(1)
        from iceward.lab.matrix import CellResult

        assert isinstance(result, CellResult)
        mark = "ok" if result.ok else "UNEXPECTED"
        console.print(
            f"[{len(done)}/{total}] {result.row} {result.column}: {result.label()} "
            f"({result.duration_s} s, {mark})"
        )

    started = time.monotonic()
    try:
        results = asyncio.run(run_matrix(row_list, col_list, opts, parallel, progress))
    except KeyboardInterrupt:
        cleanup_all()
        typer.echo("iceward lab: interrupted; namespaces removed", err=True)
        raise typer.Exit(130) from None
    finally:
        cleanup_all()
    elapsed = round(time.monotonic() - started, 1)
    header = (
        f"`iceward lab run --rows {rows} --cols {cols} --parallel {parallel} --server {server}"
        f"{' --browser' if browser else ''}` — {total} cells in {elapsed} s, "
        f"agents: {'chromium' if browser else 'aioice'}"
    )
    meta = {
        "server": server,
        "agents": "chromium" if browser else "aioice",
        "rows": row_list,
        "cols": col_list,
        "parallel": parallel,
        "elapsed_s": elapsed,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    report = to_json(results, meta)
    (outdir / "matrix.json").write_text(json.dumps(report, indent=2) + "\n")
    (outdir / "matrix.md").write_text(render_markdown(results, header))
    if json_out:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        render_rich(console, results)
        console.print(f"written: {outdir / 'matrix.md'}, {outdir / 'matrix.json'}, {outdir}/cells/")
    raise typer.Exit(1 if report["unexpected"] or report["cause_missed"] else 0)


@lab_app.command("nat")
def nat(
    profiles: Annotated[
        str, Opt("--profiles", help="Comma-separated site profiles [all of them].")
    ] = "none,full-cone,restricted,symmetric,cgnat,cgnat-symmetric,firewall",
    parallel: Annotated[int, Opt("--parallel", min=1, max=64)] = 4,
    out: Annotated[Path | None, Opt("--out", help="Output directory.")] = None,
    json_out: Annotated[bool, Opt("--json", help="Print JSON to stdout.")] = False,
) -> None:
    """Check RFC 5780 NAT classification (iceward doctor --nat) behind every profile."""
    from dataclasses import asdict

    from rich.table import Table

    from iceward.lab.matrix import LabOptions, run_nat_checks
    from iceward.lab.topology import PROFILES, cleanup_all

    names = _split(profiles)
    bad = [n for n in names if n not in PROFILES]
    if bad or not names:
        raise fail(f"--profiles: choose from {', '.join(PROFILES)}", command="lab")
    _require_root()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = out or Path(f"iceward-lab-nat-{stamp}")
    try:
        results = asyncio.run(run_nat_checks(names, LabOptions(outdir), parallel))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        cleanup_all()
    (outdir / "nat.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    lines = [
        "# RFC 5780 classification behind each lab profile",
        "",
        "`iceward doctor --nat` run inside the LAN namespace against "
        "`iceward serve --alternate-address` (mapping / filtering).",
        "",
        "| profile | expected | found | ok |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| `{r.profile}` | {r.expected_mapping} / {r.expected_filtering} | "
            f"{r.mapping} / {r.filtering} | {'yes' if r.ok else '**no**'} |"
        )
    (outdir / "nat.md").write_text("\n".join(lines) + "\n")
    if json_out:
        sys.stdout.write(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    else:
        table = Table(title="RFC 5780 classification by iceward doctor --nat, per profile")
        for col in ("profile", "expected mapping / filtering", "found", "ok"):
            table.add_column(col)
        for r in results:
            table.add_row(
                r.profile,
                f"{r.expected_mapping} / {r.expected_filtering}",
                f"{r.mapping} / {r.filtering}",
                "[green]yes[/green]" if r.ok else "[bold red]no[/bold red] " + "; ".join(r.notes),
            )
        Console(highlight=False, width=None if sys.stdout.isatty() else 160).print(table)
    raise typer.Exit(0 if all(r.ok for r in results) else 1)


@lab_app.command("shell")
def shell(
    site: Annotated[
        str,
        typer.Argument(
            help="Profile of the site: none, full-cone, restricted, symmetric, cgnat, "
            "cgnat-symmetric, firewall."
        ),
    ],
    server: Annotated[str, Opt("--server", help="iceward|coturn.")] = "iceward",
    command: Annotated[
        str | None, Opt("--command", "-c", help="Run this instead of an interactive shell.")
    ] = None,
) -> None:
    """Open a shell in a LAN namespace behind SITE, with the lab's STUN/TURN server reachable."""
    from iceward.lab.ca import make_lab_ca
    from iceward.lab.matrix import READY_SCRIPT, SECRET, ice_config, server_argv
    from iceward.lab.topology import (
        PROFILES,
        SERVER_IP,
        LabError,
        Topology,
        cleanup_all,
        install_cleanup,
        new_run_id,
        register_process,
        stop_process,
    )
    from iceward.turn.credentials import mint_rest_credential

    if site not in PROFILES:
        raise fail(
            f"unknown site profile {site!r} (choose from {', '.join(PROFILES)})", command="lab"
        )
    _require_root()
    install_cleanup()
    workdir = Path(f"/tmp/iceward-lab-shell-{new_run_id()}")
    ca = make_lab_ca(workdir / "ca")
    topo = Topology(f"iwl{new_run_id()}s", (PROFILES[site], PROFILES["none"]))
    code = 0
    try:
        topo.build()
        log = (workdir / "server.log").open("wb")
        proc = subprocess.Popen(
            [*topo.exec_prefix(topo.inet), *server_argv(server, workdir, ca)],
            stdout=log,
            stderr=log,
        )
        register_process(proc)
        subprocess.run(
            [*topo.exec_prefix(topo.inet), sys.executable, "-c", READY_SCRIPT, SERVER_IP],
            check=False,
            timeout=30,
        )
        cred = mint_rest_credential(SECRET, "shell", 24 * 3600, time.time())
        config = {"iceServers": ice_config("turn-all", (cred.username, cred.password))}
        (workdir / "ice-servers.json").write_text(json.dumps(config, indent=2))
        lan = topo.sites[0].lan_ns
        typer.echo(
            f"# namespace {lan} behind {PROFILES[site].title}; server log {workdir}/server.log\n"
            f"# iceServers: {workdir}/ice-servers.json (CA: {ca.ca_cert})\n"
            f"# the peer site (public) is namespace {topo.sites[1].lan_ns}; exit to tear down",
            err=True,
        )
        env = dict(os.environ)
        env["ICEWARD_LAB_ICE_SERVERS"] = str(workdir / "ice-servers.json")
        env["ICEWARD_LAB_CA"] = str(ca.ca_cert)
        argv = [*topo.exec_prefix(lan)]
        argv += ["sh", "-c", command] if command else [env.get("SHELL", "/bin/bash")]
        code = subprocess.run(argv, env=env, check=False).returncode
        stop_process(proc)
    except LabError as exc:
        raise fail(str(exc), command="lab") from None
    finally:
        topo.destroy()
        cleanup_all()
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add the subcommands to ``app``."""
    app.add_typer(lab_app, name="lab")
