"""Commands over the settings and the data store: ``keys``, ``users`` and ``secrets``.

:func:`load` and :func:`open_store` give a command its settings and store, or exit 2 with one
line naming what is wrong; the ``reports`` commands use them too. The three store groups share
their shape (add, list, and revoke/remove/retire), so they are built from one table, :data:`KINDS`;
only ``add`` differs enough per kind to be written out.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from iceward.cliutil import (
    ConfigOpt,
    DatabaseOpt,
    DataDirOpt,
    JsonOpt,
    Opt,
    fail,
    print_rows,
    settings_error,
)

if TYPE_CHECKING:
    from iceward.config import ServerSettings
    from iceward.store import Store

T = TypeVar("T")


def load(config: Path | None, **overrides: Any) -> ServerSettings:
    """The settings from ``config`` and ``overrides``; exit 2 when they do not validate."""
    from pydantic import ValidationError

    from iceward.config import load_settings

    try:
        return load_settings(config, **overrides)
    except (ValidationError, ValueError) as exc:
        raise settings_error(exc) from None


def open_store(
    config: Path | None, data_dir: Path | None, database: str | None
) -> tuple[Store, ServerSettings]:
    """The data store the settings name, and the settings; exit 2 when it cannot be opened."""
    from iceward.store import Store, database_url

    settings = load(config, data_dir=data_dir, database=database)
    try:
        return Store(database_url(settings.data_dir, settings.database)), settings
    except Exception as exc:
        raise fail(f"cannot open the data store: {exc}") from None


def store_call(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func(*args, **kwargs)``; a refusal of the store (StoreError) exits 2 with its message."""
    from iceward.store import StoreError

    try:
        return func(*args, **kwargs)
    except StoreError as exc:
        raise fail(str(exc)) from None


@dataclass(frozen=True)
class Kind:
    """One group of store commands: ``NAME add``, ``NAME list`` and ``NAME DROP``."""

    name: str
    help: str
    add: Callable[..., None]
    list_help: str
    #: The records to list; a column is the record's attribute of that name in snake_case.
    records: Callable[[Store], list[Any]]
    columns: tuple[str, ...]
    #: The command that takes a record out of use, its help, the store call, the word printed.
    drop: str
    drop_help: str
    dropper: Callable[[Store], Callable[[str], None]]
    dropped: str


def _row(record: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    row = {}
    for column in columns:
        value = getattr(record, re.sub(r"([A-Z])", lambda m: "_" + m[1].lower(), column))
        row[column] = value.isoformat() if isinstance(value, dt.datetime) else value
    return row


def _list_command(kind: Kind) -> Callable[..., None]:
    def list_command(
        json_out: JsonOpt = False,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
        database: DatabaseOpt = None,
    ) -> None:
        store, _ = open_store(config, data_dir, database)
        rows = [_row(r, kind.columns) for r in kind.records(store)]
        print_rows(rows, json_out, kind.columns)

    return list_command


def _drop_command(kind: Kind) -> Callable[..., None]:
    def drop_command(
        name: str,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
        database: DatabaseOpt = None,
    ) -> None:
        store, _ = open_store(config, data_dir, database)
        store_call(kind.dropper(store), name)
        typer.echo(f"{kind.dropped} {name}")

    return drop_command


def keys_add(
    name: str,
    admin: Annotated[bool, Opt("--admin", help="A key for the admin API.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    store, _ = open_store(config, data_dir, database)
    typer.echo(store_call(store.add_api_key, name, admin=admin))


def users_add(
    name: str,
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, help="Hashed into keys; never stored.")
    ],
    realm: Annotated[
        str | None, Opt("--realm", help="The server's realm [from --config, else iceward].")
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Add (or change) a static TURN user: its keys are derived for the server's realm."""
    if ":" in name:
        raise fail("user names cannot contain ':' (it separates REST expiry and user)")
    store, settings = open_store(config, data_dir, database)
    realm = realm or settings.realm
    store_call(store.add_user, name, password, realm)
    typer.echo(f"added {name} (realm {realm})")


def secrets_add(
    name: str,
    value: Annotated[str | None, Opt("--value", help="Default: a new random secret.")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Add a shared secret; new credentials are signed with the newest one.

    The secret is stored as it is (HMAC needs it), protected by permissions: the data dir is
    0700 and the database 0600 (tightened on start). With --database, protect that database.
    """
    store, _ = open_store(config, data_dir, database)
    typer.echo(store_call(store.add_secret, name, value))


KINDS = (
    Kind(
        name="keys",
        help="API keys for app backends (and --admin keys for the admin API).",
        add=keys_add,
        list_help="List API keys (never the keys themselves).",
        records=lambda store: store.list_api_keys(),
        columns=("name", "admin", "createdAt", "revokedAt"),
        drop="revoke",
        drop_help="Revoke an API key; a running server refuses it from the next request.",
        dropper=lambda store: store.revoke_api_key,
        dropped="revoked",
    ),
    Kind(
        name="users",
        help="Static TURN users, stored as long-term keys.",
        add=users_add,
        list_help="List static users stored in the data store.",
        records=lambda store: store.list_users(),
        columns=("name", "realm", "createdAt"),
        drop="remove",
        drop_help="Remove a static user; a running server refuses it within a second.",
        dropper=lambda store: store.remove_user,
        dropped="removed",
    ),
    Kind(
        name="secrets",
        help="TURN REST shared secrets: add, list, retire (rotation).",
        add=secrets_add,
        list_help="List shared secrets in the data store (names and dates, not values).",
        records=lambda store: store.list_secrets(),
        columns=("name", "createdAt", "retiredAt"),
        drop="retire",
        drop_help="Retire a secret: credentials signed with it stop validating.",
        dropper=lambda store: store.retire_secret,
        dropped="retired",
    ),
)


def register(app: typer.Typer) -> None:
    """Add the ``keys``, ``users`` and ``secrets`` groups to ``app``."""
    for kind in KINDS:
        group = typer.Typer(help=kind.help)
        group.command("add")(kind.add)
        group.command("list", help=kind.list_help)(_list_command(kind))
        group.command(kind.drop, help=kind.drop_help)(_drop_command(kind))
        app.add_typer(group, name=kind.name)
