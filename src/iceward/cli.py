"""The ``iceward`` command line: one Typer app.

Exit codes everywhere: 0 healthy, 1 problems found, 2 usage or input error (a clear message on
stderr, never a traceback).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

from iceward import __version__, storecli
from iceward.cliutil import Opt, fail, settings_error
from iceward.config import ServerSettings, ensure_secret, load_settings
from iceward.runtime import setup_logging, use_uvloop
from iceward.turn.credentials import ice_servers, mint_rest_credential

if TYPE_CHECKING:
    from iceward.server import Server

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="STUN/TURN server and WebRTC connectivity diagnostics.",
)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit(0)


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
        str | None, Opt("--external-ip", help="PUBLIC\\[/PRIVATE]: relayed address to advertise.")
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
    http: Annotated[
        str | None, Opt("--http", help="HTTP API HOST:PORT, or off [127.0.0.1:8080].")
    ] = None,
    public_url: Annotated[
        list[str] | None, Opt("--public-url", help="URL handed to clients (repeatable).")
    ] = None,
    database: Annotated[
        str | None, Opt("--database", help="SQLAlchemy URL [sqlite in the data dir].")
    ] = None,
    cors_origin: Annotated[
        list[str] | None, Opt("--cors-origin", help="Browser origin allowed to call the API.")
    ] = None,
    admin_allow: Annotated[
        list[str] | None, Opt("--admin-allow", help="Network allowed the admin API (CIDR).")
    ] = None,
    api_rate: Annotated[float | None, Opt("--api-rate", help="Requests/s per API key.")] = None,
    credential_ttl: Annotated[
        int | None, Opt("--credential-ttl", help="Default credential lifetime in seconds.")
    ] = None,
    max_credential_ttl: Annotated[
        int | None,
        Opt("--max-credential-ttl", help="Refuse REST credentials valid longer (s) [604800]."),
    ] = None,
    trusted_proxy: Annotated[
        list[str] | None,
        Opt("--trusted-proxy", help="Proxy (CIDR) whose X-Forwarded-For is believed."),
    ] = None,
    connection_timeout: Annotated[
        float | None,
        Opt("--connection-timeout", help="Seconds for TLS and a first request on TCP/TLS [10]."),
    ] = None,
    idle_timeout: Annotated[
        float | None,
        Opt("--idle-timeout", help="Close TCP/TLS connections idle without allocation (s) [60]."),
    ] = None,
    max_connections_per_source: Annotated[
        int | None,
        Opt("--max-connections-per-source", help="TCP/TLS connections per source IP [500]."),
    ] = None,
    max_auth_failures: Annotated[
        int | None,
        Opt("--max-auth-failures", help="Failed authentications per source IP per minute [60]."),
    ] = None,
    max_challenges: Annotated[
        int | None,
        Opt("--max-challenges", help="401 challenges per UDP source IP per second [500]."),
    ] = None,
    alternate_address: Annotated[
        str | None,
        Opt(
            "--alternate-address",
            help="RFC 5780: second IP[:PORT] for NAT behaviour discovery (CHANGE-REQUEST).",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        Opt("--workers", help="Relaying processes sharing the ports [one per core].", min=1),
    ] = None,
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
            http=http,
            public_url=public_url,
            database=database,
            cors_origin=cors_origin,
            admin_allow=admin_allow,
            api_rate=api_rate,
            credential_ttl=credential_ttl,
            max_credential_ttl=max_credential_ttl,
            trusted_proxy=trusted_proxy,
            connection_timeout=connection_timeout,
            idle_timeout=idle_timeout,
            max_connections_per_source=max_connections_per_source,
            max_auth_failures=max_auth_failures,
            max_challenges=max_challenges,
            alternate_address=alternate_address,
            workers=workers,
        )
    except (ValidationError, ValueError) as exc:
        raise settings_error(exc) from None
    setup_logging(settings.log_level)
    use_uvloop()
    try:
        asyncio.run(_serve(settings))
    except OSError as exc:
        raise fail(f"cannot start: {exc}") from None
    except KeyboardInterrupt:
        pass


async def _serve(settings: ServerSettings) -> None:
    from iceward.server import run

    await run(settings, _print_ready)


def _print_ready(server: Server) -> None:
    uris = server.public_uris()
    secret = server.minting_secret()
    if secret:
        cred = mint_rest_credential(secret, "iceward", 24 * 3600, time.time())
        servers = ice_servers(uris, cred.username, cred.password)
        note = "REST credential valid 24 h; mint more with `iceward credentials`"
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
    from iceward.doctor.command import register as register_doctor
    from iceward.lab.command import register as register_lab
    from iceward.storecli import register as register_store
    from iceward.testpage.command import register as register_testpage

    register_store(app)
    register_doctor(app)
    register_analyze(app)
    register_lab(app)
    register_testpage(app)


_register_subcommands()


def main() -> None:
    app()
