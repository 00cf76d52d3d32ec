"""The ``iceward`` command line: one Typer app.

Exit codes everywhere: 0 healthy, 1 problems found, 2 usage or input error (a clear message on
stderr, never a traceback).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from iceward import __version__
from iceward.config import ServerSettings, ensure_secret, load_settings
from iceward.turn.credentials import ice_servers, mint_rest_credential

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="STUN/TURN server and WebRTC connectivity diagnostics.",
)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"iceward: error: {message}", err=True)
    return typer.Exit(2)


def _settings_error(exc: ValidationError | ValueError) -> typer.Exit:
    if isinstance(exc, ValidationError):
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            lines.append(f"{where.replace('_', '-')}: {err['msg']}")
        return _fail("invalid settings:\n  " + "\n  ".join(lines))
    return _fail(str(exc))


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def _event_loop_policy() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit(0)


Opt = typer.Option


@app.command()
def serve(
    config: Annotated[
        Path | None, Opt("--config", help="TOML file with any of these settings.")
    ] = None,
    listen: Annotated[
        list[str] | None, Opt("--listen", help="Address to listen on (repeatable).")
    ] = None,
    port: Annotated[int | None, Opt("--port", help="UDP and TCP port [3478].")] = None,
    tls_port: Annotated[int | None, Opt("--tls-port", help="TLS port, 0 disables [5349].")] = None,
    cert: Annotated[Path | None, Opt("--cert", help="TLS certificate chain (PEM).")] = None,
    key: Annotated[Path | None, Opt("--key", help="TLS private key (PEM).")] = None,
    relay_ip: Annotated[list[str] | None, Opt("--relay-ip", help="Address relays bind to.")] = None,
    relay_ports: Annotated[str | None, Opt("--relay-ports", help="LOW-HIGH [49152-65535].")] = None,
    external_ip: Annotated[
        str | None, Opt("--external-ip", help="PUBLIC[/PRIVATE]: the relayed address to advertise.")
    ] = None,
    realm: Annotated[str | None, Opt("--realm", help="Authentication realm [iceward].")] = None,
    secret: Annotated[
        list[str] | None,
        Opt("--secret", help="TURN REST shared secret (repeatable, for rotation)."),
    ] = None,
    user: Annotated[list[str] | None, Opt("--user", help="NAME:PASSWORD or NAME:0xKEY.")] = None,
    allow_peer: Annotated[
        list[str] | None, Opt("--allow-peer", help="Open a denied peer range (CIDR, repeatable).")
    ] = None,
    deny_peer: Annotated[list[str] | None, Opt("--deny-peer", help="Deny a peer range.")] = None,
    data_dir: Annotated[Path | None, Opt("--data-dir", help="Where state is kept.")] = None,
    max_allocations_per_user: Annotated[
        int | None, Opt("--user-quota", help="Allocations per user, 0 = unlimited.")
    ] = None,
    max_allocations: Annotated[int | None, Opt("--total-quota", help="Allocations in all.")] = None,
    max_permissions: Annotated[
        int | None, Opt("--max-permissions", help="Permissions per allocation.")
    ] = None,
    default_lifetime: Annotated[int | None, Opt("--default-lifetime")] = None,
    max_lifetime: Annotated[int | None, Opt("--max-lifetime")] = None,
    log_level: Annotated[str | None, Opt("--log-level")] = None,
) -> None:
    """Run the STUN/TURN server (UDP, TCP, TLS) and print ready-to-paste iceServers."""
    try:
        settings = load_settings(
            config,
            listen=listen,
            port=port,
            tls_port=tls_port,
            cert=cert,
            key=key,
            relay_ip=relay_ip,
            relay_ports=relay_ports,
            external_ip=external_ip,
            realm=realm,
            secret=secret,
            user=user,
            allow_peer=allow_peer,
            deny_peer=deny_peer,
            data_dir=data_dir,
            max_allocations_per_user=max_allocations_per_user,
            max_allocations=max_allocations,
            max_permissions=max_permissions,
            default_lifetime=default_lifetime,
            max_lifetime=max_lifetime,
            log_level=log_level,
        )
    except (ValidationError, ValueError) as exc:
        raise _settings_error(exc) from None
    _setup_logging(settings.log_level)
    _event_loop_policy()
    try:
        asyncio.run(_serve(settings))
    except OSError as exc:
        raise _fail(f"cannot start: {exc}") from None
    except KeyboardInterrupt:
        pass


async def _serve(settings: ServerSettings) -> None:
    from iceward.net.service import TurnService

    service = TurnService(settings)
    await service.start()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def stop() -> None:
        if not stopping:
            logging.getLogger("iceward.server").info("stopping")
            stopping.append(loop.create_task(service.stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    _print_ready(service)
    await service.wait_stopped()


def _print_ready(service: Any) -> None:
    uris = service.endpoints.uris()
    secrets = service.credentials.secrets
    if secrets:
        cred = mint_rest_credential(secrets[0], "iceward", 24 * 3600, time.time())
        servers = ice_servers(uris, cred.username, cred.password)
        note = "REST credential valid 24 h; mint more with `iceward credentials`"
    else:
        name = service.credentials.usernames[0]
        password = next(
            u.partition(":")[2] for u in service.settings.user if u.partition(":")[0] == name
        )
        servers = ice_servers(uris, name, password)
        note = f"static user {name}"
    typer.echo(json.dumps({"iceServers": servers}, indent=2))
    typer.echo(f"# iceServers above: {note}", err=True)
    sys.stdout.flush()


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
        try:
            settings = load_settings(None, data_dir=data_dir)
        except (ValidationError, ValueError) as exc:
            raise _settings_error(exc) from None
        path = settings.data_dir / "rest-secret"
        if not path.exists():
            raise _fail(
                f"no --secret given and no secret in {settings.data_dir} (run `serve` once)"
            )
        secret = ensure_secret(settings.data_dir)
    if uri:
        uris = list(uri)
    else:
        from iceward.net.service import Endpoints

        uris = Endpoints(host, port, tls_port).uris()
    bad = [u for u in uris if not u.startswith(("stun:", "stuns:", "turn:", "turns:"))]
    if bad:
        raise _fail(f"not a STUN/TURN URI: {', '.join(bad)}")
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
    from iceward.doctor.command import register as register_doctor

    register_doctor(app)
    register_analyze(app)


_register_subcommands()


def main() -> None:
    app()
