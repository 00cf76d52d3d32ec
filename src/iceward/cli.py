"""The ``iceward`` command line: one Typer app.

Exit codes everywhere: 0 healthy, 1 problems found, 2 usage or input error (a clear message on
stderr, never a traceback).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import time
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Union, get_args, get_origin

import typer
from pydantic import ValidationError

from iceward import __version__, storecli
from iceward.cliutil import Opt, TidyGroup, fail, settings_error
from iceward.config import (
    ServerSettings,
    ensure_secret,
    flag_of,
    load_settings,
    metavar_of,
    unknown_variables,
)
from iceward.runtime import setup_logging, use_uvloop
from iceward.turn.credentials import ice_servers, mint_rest_credential

if TYPE_CHECKING:
    from iceward.server.serve import Server

app = typer.Typer(
    cls=TidyGroup,  # --help shows INTEGER, TEXT, PATH..., not <int>, <list[str]>, <bool>
    add_completion=False,
    no_args_is_help=True,
    help="STUN/TURN server and WebRTC connectivity diagnostics.",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            is_eager=True,  # before the group asks for a command ("Missing command.")
            expose_value=False,
            callback=_print_version,
        ),
    ] = False,
) -> None:
    pass


def serve(config: Path | None = None, **given: Any) -> None:
    """Run the STUN/TURN server (UDP, TCP, TLS) and print ready-to-paste iceServers."""
    try:
        settings = load_settings(config, **given)
    except (ValidationError, ValueError) as exc:
        raise settings_error(exc) from None
    for warning in unknown_variables():
        typer.echo(f"iceward serve: warning: {warning}", err=True)
    setup_logging(settings.log_level, log_format=settings.log_format)
    use_uvloop()
    try:
        asyncio.run(_serve(settings))
    except OSError as exc:
        raise fail(f"cannot start: {exc}") from None
    except KeyboardInterrupt:
        pass


def _switch(flag: str) -> str:
    """An on/off setting's pair of flags: ``--name/--no-name``."""
    return f"{flag}/--no-{flag[2:]}"


def _serve_options() -> inspect.Signature:
    """`serve`'s options, one per setting, read off :class:`ServerSettings`: a new setting is
    one edit there. Every option defaults to None ("not given"), so the environment and the
    TOML file still apply; the help shows the setting's own default."""
    params = [
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Path | None, Opt("--config", help="TOML file with any of these settings.")
            ],
        )
    ]
    for name, field in ServerSettings.model_fields.items():
        kind: Any = field.annotation
        if get_origin(kind) in (UnionType, Union):
            kind = next(a for a in get_args(kind) if a is not type(None))
        default = field.get_default(call_default_factory=True)
        shown = ",".join(default) if isinstance(default, list) else default
        if isinstance(default, bool):
            shown = "on" if default else "off"
        help_text = field.description or ""
        if shown not in (None, "") and name != "data_dir" and "[" not in help_text:
            help_text += f" [{shown}]"
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    kind | None,
                    Opt(
                        _switch(flag_of(name)) if kind is bool else flag_of(name),
                        help=help_text.replace("[", "\\["),
                        show_default=False,
                        metavar=metavar_of(name),
                    ),
                ],
            )
        )
    return inspect.Signature(params)


serve.__signature__ = _serve_options()  # type: ignore[attr-defined]
app.command()(serve)


async def _serve(settings: ServerSettings) -> None:
    from iceward.server.serve import run

    try:
        await run(settings, _print_ready)
    finally:
        if settings.ready_file is not None:
            settings.ready_file.unlink(missing_ok=True)


def _print_ready(server: Server) -> None:
    uris = server.public_uris()
    secret = server.minting_secret()
    if secret:
        cred = mint_rest_credential(secret, "iceward", 24 * 3600, time.time())
        servers = ice_servers(uris, cred.username, cred.password)
        note = "REST credential valid 24 h; mint more with `iceward credentials`"
        if server.plan.users:
            note += f"; static users ({', '.join(u.name for u in server.plan.users)}) work too"
    else:
        user = server.plan.users[0]
        password = user.secret if isinstance(user.secret, str) else "0x" + user.secret.hex()
        servers = ice_servers(uris, user.name, password)
        note = f"static user {user.name}"
    typer.echo(json.dumps({"iceServers": servers}, indent=2))
    typer.echo(f"# iceServers above: {note}", err=True)
    if server.http_address is not None:
        host, port = server.http_address
        typer.echo(
            f"# HTTP API: http://{host}:{port}/docs (credentials for app backends: "
            "`iceward keys add NAME`, then POST /api/v1/ice-servers)",
            err=True,
        )
    from iceward.net.listeners import may_bind_port

    https = server.http_address is not None
    typer.echo(tls_port_note(server.endpoints.tls_port, https, may_bind_port(443)), err=True)
    sys.stdout.flush()
    if server.plan.settings.ready_file is not None:
        _write_ready_file(server, server.plan.settings.ready_file)


def tls_port_note(port: int, https: bool, may_bind_443: bool) -> str:
    """What the TLS port offers (``https``: the HTTP API too), and why ``turns:`` is not on 443
    when it is not."""
    if not port:
        return "# no turns: (TLS is off): networks that pass only TLS on 443 cannot relay"
    shared = "TURN over TLS, TURN over TCP" + (" and HTTPS" if https else "")
    if port == 443:
        return f"# turns: on 443 ({shared} on that one port)"
    if may_bind_443:
        why = "this process may bind 443: add --tls-port 443"
    else:
        why = (
            "binding 443 needs root or CAP_NET_BIND_SERVICE (systemd: AmbientCapabilities="
            "CAP_NET_BIND_SERVICE; or: sudo setcap cap_net_bind_service=+ep "
            f"{os.path.realpath(sys.executable)})"
        )
    return (
        f"# turns: on port {port} ({shared}), not 443: networks that pass only 443 (corporate "
        f"firewalls) cannot reach it; {why}"
    )


def _write_ready_file(server: Server, path: Path) -> None:
    """What was bound, for scripts and tests that ask for port 0: written whole (renamed into
    place) once every listener and worker is up; removed when the server stops."""
    http = server.http_address
    doc = {
        "pid": os.getpid(),
        "port": server.endpoints.port,
        "tls_port": server.endpoints.tls_port or None,
        "http": f"{http[0]}:{http[1]}" if http is not None else None,
    }
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(doc) + "\n")
    os.replace(partial, path)


@app.command()
def credentials(
    user: Annotated[str, Opt("--user", help="The user id the credential is for.")] = "",
    ttl: Annotated[int, Opt("--ttl", help="Seconds the credential stays valid.", min=1)] = 86400,
    secret: Annotated[
        str | None, Opt("--secret", help="Shared secret; default: the one in --data-dir.")
    ] = None,
    data_dir: Annotated[Path | None, Opt("--data-dir")] = None,
    uri: Annotated[list[str] | None, Opt("--uri", help="URI to list (repeatable).")] = None,
    host: Annotated[str, Opt("--host", help="Host for the default URIs.")] = "127.0.0.1",
    port: Annotated[int, Opt("--port")] = 3478,
    tls_port: Annotated[int, Opt("--tls-port", help="0 leaves turns: out.")] = 5349,
) -> None:
    """Mint a TURN REST API credential: JSON with username, password, ttl, uris, iceServers."""
    if secret is None:
        settings = storecli.load(None, data_dir=data_dir)
        path = settings.data_dir / "rest-secret"
        if not path.exists():
            raise fail(f"no --secret given and no secret in {settings.data_dir} (run `serve` once)")
        secret = ensure_secret(settings.data_dir)
    if uri:
        uris = list(uri)
    else:
        from iceward.server.plan import Endpoints

        uris = Endpoints(host, port, tls_port).uris()
    bad = [u for u in uris if not u.startswith(("stun:", "stuns:", "turn:", "turns:"))]
    if bad:
        raise fail(f"not a STUN/TURN URI: {', '.join(bad)}")
    cred = mint_rest_credential(secret, user, ttl, time.time())
    out = {
        "username": cred.username,
        "password": cred.password,
        "ttl": cred.ttl,
        "uris": uris,
        "iceServers": ice_servers(uris, cred.username, cred.password),
    }
    typer.echo(json.dumps(out, indent=2))


def _register_subcommands() -> None:
    from iceward.analyze.command import register as register_analyze
    from iceward.coturn.command import register as register_coturn
    from iceward.doctor.command import register as register_doctor
    from iceward.draincli import register as register_drain
    from iceward.firewall import register as register_firewall
    from iceward.fleet.command import register as register_fleet
    from iceward.lab.command import register as register_lab
    from iceward.storecli import register as register_store
    from iceward.telemetry.command import register as register_calls
    from iceward.testpage.command import register as register_testpage
    from iceward.top import register as register_top
    from iceward.usagecli import register as register_usage

    register_store(app)
    register_doctor(app)
    register_analyze(app)
    register_lab(app)
    register_testpage(app)
    register_calls(app)
    register_coturn(app)
    register_firewall(app)
    register_top(app)
    register_drain(app)
    register_fleet(app)
    register_usage(app)


_register_subcommands()


def main() -> None:
    app()
