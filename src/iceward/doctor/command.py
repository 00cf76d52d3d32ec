"""The ``doctor`` subcommand (registered on the main app by :func:`register`).

Exit codes: 0 no error findings, 1 error findings, 2 usage or input error (one clear line).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from iceward.cliutil import Opt, fail
from iceward.diagnose.findings import CODES
from iceward.doctor.certs import ca_file_problem, client_context
from iceward.doctor.config import load_config
from iceward.doctor.fetch import InputError, fetch_config, read_ice_servers
from iceward.doctor.report import RichProgress, render, to_json
from iceward.doctor.rules import RuleOptions, duration, evaluate, outlives_call, summarize
from iceward.doctor.runner import NoProgress, Options, ProgressSink, run_ladder


def doctor(
    ice_servers: Annotated[
        str | None,
        Opt(
            "--ice-servers",
            metavar="FILE|-|JSON",
            help="iceServers JSON: a file, '-' for stdin, or inline. An array, an object with "
            "iceServers, or an RTCConfiguration.",
        ),
    ] = None,
    credentials_url: Annotated[
        str | None,
        Opt(
            "--credentials-url",
            metavar="URL",
            help="Ask the app's backend for the config, exactly as browsers receive it (query "
            "values such as API keys are masked in the output).",
        ),
    ] = None,
    method: Annotated[
        str,
        Opt(
            "--method",
            metavar="GET|POST",
            help="HTTP method for --credentials-url (POST when --data is given).",
            show_default=False,
        ),
    ] = "",
    data: Annotated[
        str | None,
        Opt(
            "--data",
            "-d",
            metavar="JSON|@FILE",
            help='JSON body to POST to --credentials-url, e.g. \'{"user": "u1", "ttl": 3600}\' '
            "for iceward's POST /api/v1/ice-servers.",
        ),
    ] = None,
    header: Annotated[
        list[str] | None,
        Opt(
            "--header",
            "-H",
            metavar="'NAME: VALUE'",
            help="HTTP header for --credentials-url (repeatable), e.g. 'Authorization: Bearer "
            "KEY' (masked in the output).",
        ),
    ] = None,
    json_out: Annotated[bool, Opt("--json", help="Print one JSON report to stdout.")] = False,
    timeout: Annotated[
        float,
        Opt(
            "--timeout",
            min=0.1,
            max=60.0,
            help="Seconds each network operation may take; the whole run is bounded by it.",
        ),
    ] = 5.0,
    ca_file: Annotated[
        Path | None,
        Opt(
            "--ca-file",
            exists=True,
            dir_okay=False,
            help="Trust this CA (PEM) for turns: and https:, instead of the system's.",
        ),
    ] = None,
    insecure: Annotated[
        bool, Opt("--insecure", help="Do not verify turns:/https: certificates (self-signed labs).")
    ] = False,
    security: Annotated[
        bool,
        Opt(
            "--security",
            help="Also ask the relay for permissions toward loopback, metadata and private "
            "addresses (for the server's owner; no payload is sent).",
        ),
    ] = False,
    call_length: Annotated[
        float,
        Opt(
            "--call-length",
            min=0,
            metavar="SECONDS",
            help="A REST credential expiring sooner than this is reported.",
        ),
    ] = 3600.0,
    max_relay_rtt: Annotated[
        float,
        Opt(
            "--max-relay-rtt",
            min=0,
            metavar="MS",
            help="Round trip through the relay above this is reported.",
        ),
    ] = 300.0,
    nat: Annotated[
        bool,
        Opt(
            "--nat",
            help="Also classify this network's NAT (RFC 5780 mapping and filtering; the STUN "
            "server needs a second address, e.g. iceward serve --alternate-address).",
        ),
    ] = False,
    ignore: Annotated[
        list[str] | None,
        Opt(
            "--ignore",
            metavar="CODE",
            help="Waive a finding code (repeatable): still shown, no longer fails the run.",
        ),
    ] = None,
) -> None:
    """Probe an iceServers config from here and name the root cause of "ICE failed".

    Exit codes: 0 no error finding (warnings and waived findings allowed), 1 an error finding,
    2 usage or input error (one line on stderr), 130 interrupted.
    """
    if (ice_servers is None) == (credentials_url is None):
        raise fail(
            "give exactly one of --ice-servers FILE|-|JSON and --credentials-url URL",
            command="doctor",
        )
    waived = set(ignore or [])
    unknown = sorted(waived - set(CODES))
    if unknown:
        raise fail(
            f"--ignore: unknown finding code {', '.join(unknown)} (codes: {', '.join(CODES)})",
            command="doctor",
        )
    if ca_file is not None and not insecure:
        problem = ca_file_problem(ca_file)
        if problem:
            raise fail(f"--ca-file {ca_file}: {problem}", command="doctor")
    try:
        if ice_servers is not None:
            if header or method or data is not None:
                raise InputError("--header, --method and --data apply to --credentials-url only")
            text, source = read_ice_servers(ice_servers)
        else:
            assert credentials_url is not None
            text, source = fetch_config(
                credentials_url,
                header or [],
                timeout,
                client_context(ca_file, insecure),
                method=method or ("POST" if data is not None else "GET"),
                data=data,
            )
    except InputError as exc:
        raise fail(str(exc), command="doctor") from None

    console = Console(stderr=json_out, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 120  # logs and tickets: wide enough for the tables
    progress: ProgressSink
    rich_progress = None
    if json_out and not sys.stderr.isatty():
        progress = NoProgress()
    else:
        progress = rich_progress = RichProgress(console)
    config = load_config(text)
    progress.stage(f"checking the config from {source.location}")
    turn, stun = len(config.turn_urls), len(config.stun_urls)
    progress.line(
        f"{config.server_count} iceServers entries: {stun} STUN and {turn} usable TURN "
        f"URL(s), {len(config.issues)} problem(s)",
        not any(i.severity == "error" for i in config.issues) and bool(config.urls),
    )
    for cred in {
        u.credential.username: u.credential for u in config.turn_urls if u.credential
    }.values():
        if cred.rest_expiry is not None:
            left = cred.rest_expiry - time.time()
            progress.line(
                f"REST username {cred.username!r} "
                + (f"expires in {duration(left)}" if left > 0 else f"expired {duration(left)} ago"),
                outlives_call(left, call_length),
            )
    options = Options(timeout, ca_file, insecure, security)
    try:
        evidence = asyncio.run(run_ladder(config, source, options, progress))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        if rich_progress is not None:
            rich_progress.close()
    findings = evaluate(evidence, RuleOptions(call_length, max_relay_rtt))
    nat_report = None
    if nat:
        from iceward.diagnose.findings import rank
        from iceward.doctor import nat as nat_discovery

        where = nat_discovery.target(config.urls)
        if where is not None:
            nat_report = nat_discovery.discover(where, timeout)
            findings = rank(findings + nat_discovery.findings(nat_report, bool(config.turn_urls)))
    kept = [f for f in findings if f.code not in waived]
    waived_findings = [f for f in findings if f.code in waived]
    summary = summarize(evidence, kept)
    code = 1 if any(f.severity == "error" for f in kept) else 0
    if json_out:
        report = to_json(evidence, kept, waived_findings, summary, code)
        if nat:
            report["nat"] = None if nat_report is None else nat_report.as_dict()
        sys.stdout.write(
            json.dumps(
                report,
                indent=2,
                ensure_ascii=False,
            )
            + "\n"
        )
    else:
        render(console, evidence, kept, waived_findings, summary)
        if nat:
            if nat_report is None:
                console.print("NAT: no UDP STUN/TURN URL to run RFC 5780 discovery against")
            else:
                console.print(
                    f"NAT: mapping {nat_report.mapping}, filtering {nat_report.filtering} "
                    f"(mapped {nat_report.as_dict()['mapped']}); " + "; ".join(nat_report.notes)
                )
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add the subcommand to ``app``."""
    app.command("doctor")(doctor)
