"""The data store: API keys, static users, shared secrets, the credential issuance log and the
calls browsers report (telemetry).

SQLite in the data dir by default; any SQLAlchemy URL (PostgreSQL) with ``--database``. The CLI
and the running server share it: the server verifies API keys against it on every request and
re-reads users and secrets when the store's revision changes, so ``iceward keys revoke`` or
``iceward users add`` act on a running server at once.

The SQLite file holds shared secrets in the clear (HMAC needs them) and users' long-term keys: it
is created 0600 in a 0700 data dir (see :mod:`iceward.datadir`). A store that fails (a corrupted
file, a deleted data dir) is reported by :meth:`Store.check` and logged once per outage by its
:class:`StoreHealth`, recovery too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import string
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from iceward.datadir import FILE_MODE, ensure_private_dir
from iceward.stun.constants import ALGORITHM_MD5, ALGORITHM_SHA256
from iceward.stun.integrity import long_term_key
from iceward.stun.message import StunError

ISSUANCE_LOG_LIMIT = 1000
#: Calls kept: the oldest go first (the dashboard's window is 30 days).
CALL_LOG_LIMIT = 1_000_000
KEY_PREFIX = "iwk_"

log = logging.getLogger("iceward.store")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class UserRow(Base):
    __tablename__ = "users"
    name: Mapped[str] = mapped_column(String(512), primary_key=True)
    realm: Mapped[str] = mapped_column(String(763))
    md5_key: Mapped[str] = mapped_column(String(32))
    sha256_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SecretRow(Base):
    __tablename__ = "secrets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    value: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    retired_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class IssuanceRow(Base):
    __tablename__ = "issuance"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    request_id: Mapped[str] = mapped_column(String(64))
    user: Mapped[str] = mapped_column(String(256))
    api_key: Mapped[str] = mapped_column(String(100))
    ttl: Mapped[int] = mapped_column(Integer)
    ice_servers: Mapped[str] = mapped_column(Text)
    #: The fleet's nodes behind the URLs (JSON ``[{id, region}]``), None outside a fleet.
    nodes: Mapped[str | None] = mapped_column(Text, nullable=True)


#: Columns added since a table was first made: ``create_all`` makes missing tables only, so a
#: store made by an older iceward gains these at open (nullable, no data to move).
ADDED_COLUMNS: tuple[tuple[str, str], ...] = (("issuance", "nodes"),)

#: The PostgreSQL advisory lock held while tables are made or upgraded: the nodes of a fleet
#: starting together would otherwise race in CREATE TABLE (a duplicate ``pg_type`` row).
SCHEMA_LOCK = 0x1CE3A2D


@contextmanager
def schema_change(engine: Engine) -> Iterator[Connection]:
    """One transaction that makes or upgrades tables, one process at a time on PostgreSQL
    (SQLite's own file lock serialises its writers)."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        yield conn


class ReportRow(Base):
    """A browser test page report shared with support (no credentials in it)."""

    __tablename__ = "test_reports"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    summary: Mapped[str] = mapped_column(String(500), default="")
    body: Mapped[str] = mapped_column(Text)


class TokenUseRow(Base):
    """How many records a telemetry token has posted (the token itself is verified by HMAC)."""

    __tablename__ = "telemetry_token_uses"
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[int] = mapped_column(Integer)


class CallRow(Base):
    """One PeerConnection's outcome as a browser reported it, judged by the analyzer's rules."""

    __tablename__ = "calls"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: Unix seconds the record arrived (an integer: the dashboard buckets it by hour and day).
    at: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[str] = mapped_column(String(64))
    call_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    outcome: Mapped[str] = mapped_column(String(32))
    path: Mapped[str | None] = mapped_column(String(32), nullable=True)
    relay_protocol: Mapped[str | None] = mapped_column(String(8), nullable=True)
    cause: Mapped[str | None] = mapped_column(String(64), nullable=True)
    region: Mapped[str | None] = mapped_column(String(64), nullable=True)
    node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    browser: Mapped[str] = mapped_column(String(32))
    time_to_connected: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: The record as received (no credentials) and the findings, for the call's page.
    record: Mapped[str] = mapped_column(Text)
    findings: Mapped[str] = mapped_column(Text)

    #: Covering indexes: the dashboard's counts read these, never the rows.
    __table_args__ = (
        Index("ix_calls_tally", "at", "outcome", "region", "browser", "cause"),
        Index("ix_calls_ttc", "at", "time_to_connected"),
    )


class CallTagRow(Base):
    """A ``key=value`` tag of a call, with the call's time and outcome (counted without a join)."""

    __tablename__ = "call_tags"
    call: Mapped[str] = mapped_column(
        String(32), ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(160), primary_key=True)
    at: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(32))

    __table_args__ = (Index("ix_call_tags_tally", "at", "tag", "outcome"),)


class RevisionRow(Base):
    __tablename__ = "revision"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


def _aware(when: dt.datetime) -> dt.datetime:
    """SQLite hands datetimes back naive; they were stored in UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


_ID_ALPHABET = string.ascii_letters + string.digits


def new_report_id() -> str:
    """12 letters and digits (71 bits): short enough for a link, never mistaken for an option."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


def hash_api_key(key: str) -> str:
    """API keys are 32 random bytes: an unsalted SHA-256 is enough and allows lookup."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    admin: bool
    created_at: dt.datetime
    revoked_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class StoredUser:
    name: str
    realm: str
    md5_key: bytes
    sha256_key: bytes | None
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class StoredSecret:
    name: str
    value: str
    created_at: dt.datetime
    retired_at: dt.datetime | None


class StoreError(Exception):
    """A store operation that cannot be done (a duplicate name, an unknown one)."""


class StoreUnavailable(Exception):
    """The store cannot be used at all (its file is gone); SQLAlchemy errors mean the same."""


#: What a failing store raises: callers turn these into "store unavailable" (503), not a 500.
STORE_FAILURES: tuple[type[Exception], ...] = (SQLAlchemyError, StoreUnavailable)


def describe_failure(exc: BaseException) -> str:
    """One line naming what failed, without the SQL statement SQLAlchemy appends."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        text_ = str(exc.orig)
    else:
        text_ = str(exc).split("\n", 1)[0]
    return text_.strip() or type(exc).__name__


#: The extra of the iceward package that installs a database's driver.
DRIVER_EXTRAS = {"postgresql": "postgresql"}


def missing_driver(url: str, exc: ImportError) -> str:
    """What to install when ``create_engine(url)`` cannot import the database's driver."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    extra = DRIVER_EXTRAS.get(backend)
    if extra is None:
        return f"the database driver is not installed ({exc}): install the module {exc.name}"
    advice = f"the {backend} driver is not installed ({exc}): pip install 'iceward[{extra}]'"
    if parsed.get_driver_name() != "psycopg":
        advice += f", and name it in the URL: {backend}+psycopg://..."
    return advice


def database_url(data_dir: Path, url: str | None) -> str:
    """The URL given, else the SQLite file in ``data_dir`` (which is made or kept 0700)."""
    if url:
        return url
    ensure_private_dir(data_dir)
    return f"sqlite:///{data_dir / 'iceward.db'}"


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, None for other databases and in-memory ones."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


class StoreHealth:
    """Whether the store works, as last seen: a failure is logged once with its cause, and
    recovery once, however many requests or ticks see it in between."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self._failure: str | None = None
        self._lock = threading.Lock()

    @property
    def failure(self) -> str | None:
        return self._failure

    def failed(self, exc: BaseException | str) -> str:
        """Record a failure; returns its one-line description."""
        reason = exc if isinstance(exc, str) else describe_failure(exc)
        with self._lock:
            first = self._failure is None
            self._failure = reason
        if first:
            log.error("data store %s unavailable: %s", self.subject, reason)
        return reason

    def ok(self) -> None:
        with self._lock:
            was, self._failure = self._failure, None
        if was is not None:
            log.info("data store %s available again (it failed with: %s)", self.subject, was)


#: API keys remembered for :class:`KeySnapshot` (the most recently checked ones).
KEY_SNAPSHOT_SIZE = 10_000


class KeySnapshot:
    """The answers of the last good API key checks, for a database that is down: for
    ``grace`` seconds after the last check that reached it, a key checked before is answered
    as it was then (a key never seen is refused); after that the store's failure stands (503).
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._answers: dict[str, tuple[str, bool] | None] = {}
        self._good_at: float | None = None
        self._lock = threading.Lock()

    def remember(self, digest: str, answer: tuple[str, bool] | None) -> None:
        with self._lock:
            self._answers.pop(digest, None)
            self._answers[digest] = answer
            while len(self._answers) > KEY_SNAPSHOT_SIZE:
                del self._answers[next(iter(self._answers))]
            self._good_at = time.monotonic()

    def recall(self, digest: str) -> tuple[str, bool] | None:
        """The answer last seen; KeyError when the snapshot is too old (or there is none)."""
        with self._lock:
            if self._good_at is None or time.monotonic() - self._good_at > self.grace:
                raise KeyError(digest)
            return self._answers.get(digest)


class Store:
    def __init__(self, url: str, *, key_grace: float = 0.0) -> None:
        """``key_grace``: seconds API keys are answered from :class:`KeySnapshot` while the
        database is down (0: not at all)."""
        kwargs: dict[str, Any] = {}
        self.path = sqlite_path(url)
        self.keys = KeySnapshot(key_grace)
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        else:  # a server that restarted: pooled connections are tested before use
            kwargs["pool_pre_ping"] = True
        if self.path is not None and not self.path.exists():
            try:  # created private: SQLite gives its -journal/-wal/-shm files the same mode
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
            except FileExistsError:
                pass
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot create the database file {self.path}: {exc.strerror}"
                ) from None
        subject = self.path or make_url(url).render_as_string(hide_password=True)
        self.health = StoreHealth(str(subject))
        try:
            self.engine: Engine = create_engine(url, future=True, **kwargs)
        except ImportError as exc:  # the dialect's driver (psycopg, ...) is an extra
            raise StoreUnavailable(f"{self.health.subject}: {missing_driver(url, exc)}") from None
        if self.path is not None:
            self._watch_file(self.path)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        try:
            with schema_change(self.engine) as conn:
                Base.metadata.create_all(conn)
                self._add_columns(conn)
                # Under the same lock: two nodes both finding no row would both insert it.
                if conn.execute(select(RevisionRow.id).where(RevisionRow.id == 1)).first() is None:
                    conn.execute(insert(RevisionRow).values(id=1, value=0))
        except STORE_FAILURES as exc:  # one line naming the store, not SQLAlchemy's SQL dump
            self.engine.dispose()
            raise StoreUnavailable(f"{self.health.subject}: {describe_failure(exc)}") from None

    def _add_columns(self, conn: Connection) -> None:
        """:data:`ADDED_COLUMNS` missing from a store made by an older iceward."""
        inspector = inspect(conn)
        for table, column in ADDED_COLUMNS:
            present = {c["name"] for c in inspector.get_columns(table)}
            if column not in present:
                kind = Base.metadata.tables[table].c[column].type.compile(self.engine.dialect)
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))

    def _watch_file(self, path: Path) -> None:
        """Connections hold the file they opened: when it is deleted or replaced, a pooled
        connection would go on reading the old one. Each checkout checks the path still names
        the file the connection opened: missing, the store is unavailable (no empty database is
        made in its place); replaced (restored from a backup), the connection is reopened."""

        def identity() -> tuple[int, int] | None:
            try:
                info = os.stat(path)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise StoreUnavailable(f"database file {path}: {exc.strerror}") from None
            return info.st_dev, info.st_ino

        @event.listens_for(self.engine, "do_connect")
        def _before_connect(*_: Any) -> None:
            if identity() is None:
                raise StoreUnavailable(f"database file {path} is missing")

        @event.listens_for(self.engine, "connect")
        def _opened(_: Any, record: Any) -> None:
            record.info["file"] = identity()

        @event.listens_for(self.engine, "checkout")
        def _checkout(_: Any, record: Any, __: Any) -> None:
            now = identity()
            if now is None:
                raise StoreUnavailable(f"database file {path} is missing")
            if now != record.info.get("file"):
                raise DisconnectionError(f"database file {path} was replaced")

    def close(self) -> None:
        self.engine.dispose()

    def check(self) -> str | None:
        """None if the store answers a real query, else why not (also kept in :attr:`health`)."""
        try:
            with self._session() as s:
                if s.get(RevisionRow, 1) is None:
                    raise StoreUnavailable("its revision row is missing")
        except STORE_FAILURES as exc:
            return self.health.failed(exc)
        self.health.ok()
        return None

    def revision(self) -> int:
        with self._session() as s:
            row = s.get(RevisionRow, 1)
            return row.value if row else 0

    def _bump(self, s: Session) -> None:
        s.execute(
            update(RevisionRow).where(RevisionRow.id == 1).values(value=RevisionRow.value + 1)
        )

    # -- API keys ------------------------------------------------------------------------------
    def add_api_key(self, name: str, *, admin: bool = False) -> str:
        """Create a key; returns the key itself, shown once and never stored."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._session.begin() as s:
            if s.scalar(select(ApiKeyRow).where(ApiKeyRow.name == name)) is not None:
                raise StoreError(f"an API key named {name!r} exists")
            s.add(ApiKeyRow(name=name, key_hash=hash_api_key(key), admin=int(admin)))
        return key

    def list_api_keys(self) -> list[ApiKey]:
        with self._session() as s:
            rows = s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id)).all()
            return [ApiKey(r.name, bool(r.admin), r.created_at, r.revoked_at) for r in rows]

    def revoke_api_key(self, name: str) -> None:
        with self._session.begin() as s:
            row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.name == name))
            if row is None:
                raise StoreError(f"no API key named {name!r}")
            row.revoked_at = row.revoked_at or utcnow()

    def check_api_key(self, key: str, *, admin: bool = False) -> str | None:
        """The name of the live key ``key`` is (admin keys only when ``admin``), else None."""
        digest = hash_api_key(key)
        try:
            with self._session() as s:
                row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest))
        except STORE_FAILURES as exc:
            try:
                found = self.keys.recall(digest)
            except KeyError:
                raise exc from None
            self.health.failed(exc)
        else:
            live = (
                row is not None
                and row.revoked_at is None
                and hmac.compare_digest(row.key_hash, digest)
            )
            found = (row.name, bool(row.admin)) if row is not None and live else None
            self.keys.remember(digest, found)
        if found is None or (admin and not found[1]):
            return None
        return found[0]

    # -- static users --------------------------------------------------------------------------
    def add_user(self, name: str, password: str, realm: str) -> None:
        """Keys derived for ``realm``; StoreError when the name or password cannot be a TURN
        credential (RFC 8265 OpaqueString: no control characters)."""
        try:
            md5 = long_term_key(name, realm, password, ALGORITHM_MD5).hex()
            sha = long_term_key(name, realm, password, ALGORITHM_SHA256).hex()
        except StunError as exc:
            raise StoreError(str(exc)) from None
        with self._session.begin() as s:
            row = s.get(UserRow, name)
            if row is None:
                s.add(UserRow(name=name, realm=realm, md5_key=md5, sha256_key=sha))
            else:
                row.realm, row.md5_key, row.sha256_key = realm, md5, sha
            self._bump(s)

    def list_users(self) -> list[StoredUser]:
        with self._session() as s:
            rows = s.scalars(select(UserRow).order_by(UserRow.name)).all()
            return [
                StoredUser(
                    r.name,
                    r.realm,
                    bytes.fromhex(r.md5_key),
                    bytes.fromhex(r.sha256_key) if r.sha256_key else None,
                    r.created_at,
                )
                for r in rows
            ]

    def remove_user(self, name: str) -> None:
        with self._session.begin() as s:
            if s.execute(delete(UserRow).where(UserRow.name == name)).rowcount == 0:  # type: ignore[attr-defined]
                raise StoreError(f"no user named {name!r}")
            self._bump(s)

    # -- shared secrets ------------------------------------------------------------------------
    def add_secret(self, name: str, value: str | None = None) -> str:
        value = value or secrets.token_urlsafe(32)
        with self._session.begin() as s:
            if s.scalar(select(SecretRow).where(SecretRow.name == name)) is not None:
                raise StoreError(f"a secret named {name!r} exists")
            s.add(SecretRow(name=name, value=value))
            self._bump(s)
        return value

    def list_secrets(self) -> list[StoredSecret]:
        with self._session() as s:
            rows = s.scalars(select(SecretRow).order_by(SecretRow.id)).all()
            return [StoredSecret(r.name, r.value, r.created_at, r.retired_at) for r in rows]

    def retire_secret(self, name: str) -> None:
        with self._session.begin() as s:
            row = s.scalar(select(SecretRow).where(SecretRow.name == name))
            if row is None:
                raise StoreError(f"no secret named {name!r}")
            row.retired_at = row.retired_at or utcnow()
            self._bump(s)

    # -- issuance log --------------------------------------------------------------------------
    def log_issuance(
        self,
        request_id: str,
        user: str,
        api_key: str,
        ttl: int,
        ice_servers: list[dict[str, Any]],
        *,
        nodes: list[dict[str, str]] | None = None,
    ) -> None:
        with self._session.begin() as s:
            s.add(
                IssuanceRow(
                    request_id=request_id,
                    user=user,
                    api_key=api_key,
                    ttl=ttl,
                    ice_servers=json.dumps(ice_servers),
                    nodes=json.dumps(nodes) if nodes is not None else None,
                )
            )
            s.flush()
            newest = s.scalar(select(func.max(IssuanceRow.id))) or 0
            s.execute(delete(IssuanceRow).where(IssuanceRow.id <= newest - ISSUANCE_LOG_LIMIT))

    def recent_issuance(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._session() as s:
            rows = s.scalars(select(IssuanceRow).order_by(IssuanceRow.id.desc()).limit(limit))
            return [_issuance(r) for r in rows]

    # -- test page reports ---------------------------------------------------------------------
    def add_report(self, report: dict[str, Any], summary: str = "") -> str:
        """Store a report; returns its short id."""
        report_id = new_report_id()
        with self._session.begin() as s:
            s.add(ReportRow(id=report_id, summary=summary[:500], body=json.dumps(report)))
        return report_id

    def list_reports(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._session() as s:
            rows = s.scalars(
                select(ReportRow).order_by(ReportRow.created_at.desc()).limit(limit)
            ).all()
            return [
                {"id": r.id, "createdAt": _aware(r.created_at).isoformat(), "summary": r.summary}
                for r in rows
            ]

    def get_report(self, report_id: str) -> dict[str, Any] | None:
        with self._session() as s:
            row = s.get(ReportRow, report_id)
            if row is None:
                return None
            body: dict[str, Any] = json.loads(row.body)
            return {"id": row.id, "createdAt": _aware(row.created_at).isoformat(), **body}

    def prune_reports(self, max_age: dt.timedelta, max_count: int) -> int:
        """Drop reports older than ``max_age`` and all but the newest ``max_count``."""
        with self._session.begin() as s:
            removed = s.execute(
                delete(ReportRow).where(ReportRow.created_at < utcnow() - max_age)
            ).rowcount  # type: ignore[attr-defined]
            keep = select(ReportRow.id).order_by(ReportRow.created_at.desc()).limit(max_count)
            removed += s.execute(
                delete(ReportRow).where(ReportRow.id.not_in(keep.scalar_subquery()))
            ).rowcount  # type: ignore[attr-defined]
            return int(removed)

    # -- telemetry -----------------------------------------------------------------------------
    def token_use_counts(self, now: float, limit: int) -> dict[str, tuple[int, int]]:
        """Live telemetry tokens' use counts: request id -> (uses, expiry), the newest ``limit``."""
        q = (
            select(TokenUseRow.request_id, TokenUseRow.uses, TokenUseRow.expires_at)
            .where(TokenUseRow.expires_at >= int(now))
            .order_by(TokenUseRow.expires_at)
        )
        with self._session() as s:
            rows = list(s.execute(q))[-limit:]
            return {r: (int(u), int(e)) for r, u, e in rows}

    def add_calls(
        self,
        calls: list[tuple[dict[str, Any], list[str]]],
        token_uses: dict[str, tuple[int, int]],
        now: float,
    ) -> None:
        """Store judged calls (the columns of :class:`CallRow`, with their ``id``; their tags)
        and the use counts of their tokens (request id -> (uses, expiry)), in one transaction."""
        with self._session.begin() as s:
            s.execute(insert(CallRow), [call for call, _ in calls])
            tags = [
                {"call": c["id"], "tag": t, "at": c["at"], "outcome": c["outcome"]}
                for c, names in calls
                for t in dict.fromkeys(names)
            ]
            if tags:
                s.execute(insert(CallTagRow), tags)
            known = set(
                s.scalars(
                    select(TokenUseRow.request_id).where(TokenUseRow.request_id.in_(token_uses))
                )
            )
            fresh = [
                {"request_id": r, "uses": u, "expires_at": e}
                for r, (u, e) in token_uses.items()
                if r not in known
            ]
            if fresh:
                s.execute(insert(TokenUseRow), fresh)
            for request_id in known:
                uses = token_uses[request_id][0]
                s.execute(
                    update(TokenUseRow)
                    .where(TokenUseRow.request_id == request_id, TokenUseRow.uses < uses)
                    .values(uses=uses)
                )
            s.execute(delete(TokenUseRow).where(TokenUseRow.expires_at < int(now)))
            if secrets.randbelow(50) == 0:  # now and then, not on every batch
                self._prune_calls(s)

    def _prune_calls(self, s: Session) -> None:
        count = s.scalar(select(func.count()).select_from(CallRow)) or 0
        if count <= CALL_LOG_LIMIT:
            return
        cut = s.scalar(select(CallRow.at).order_by(CallRow.at.desc()).offset(CALL_LOG_LIMIT))
        if cut is not None:
            s.execute(delete(CallTagRow).where(CallTagRow.at <= cut))
            s.execute(delete(CallRow).where(CallRow.at <= cut))

    def list_calls(
        self, limit: int = 100, outcome: str | None = None, since: int | None = None
    ) -> list[dict[str, Any]]:
        """The newest calls first, without their records."""
        with self._session() as s:
            q = select(CallRow).order_by(CallRow.at.desc(), CallRow.id).limit(limit)
            if outcome is not None:
                q = q.where(CallRow.outcome == outcome)
            if since is not None:
                q = q.where(CallRow.at >= since)
            rows = list(s.scalars(q))
            tags = self._tags(s, [r.id for r in rows])
            return [_call_summary(r, tags.get(r.id, [])) for r in rows]

    def _tags(self, s: Session, ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        if ids:
            for call, tag in s.execute(
                select(CallTagRow.call, CallTagRow.tag).where(CallTagRow.call.in_(ids))
            ):
                out.setdefault(call, []).append(tag)
        return out

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        """One call with its record, findings and the issuance it was given (when still kept)."""
        with self._session() as s:
            row = s.get(CallRow, call_id)
            if row is None:
                return None
            doc = _call_summary(row, self._tags(s, [row.id]).get(row.id, []))
            doc["record"] = json.loads(row.record)
            doc["findings"] = json.loads(row.findings)
            issued = s.scalars(
                select(IssuanceRow)
                .where(IssuanceRow.request_id == row.request_id)
                .order_by(IssuanceRow.id.desc())
                .limit(1)
            ).first()
            doc["issuance"] = _issuance(issued) if issued is not None else None
            return doc

    def call_tally(self, since: int, bucket: int) -> list[tuple[Any, ...]]:
        """``(time bucket, region, browser, cause, outcome, count)`` of the calls since
        ``since``: one pass over a covering index feeds every count of the dashboard."""
        key = func.floor(CallRow.at / float(bucket))
        cols = (key, CallRow.region, CallRow.browser, CallRow.cause, CallRow.outcome)
        q = select(*cols, func.count()).where(CallRow.at >= since).group_by(*cols)
        with self._session() as s:
            return [tuple(r) for r in s.execute(q)]

    def tag_tally(self, since: int) -> list[tuple[Any, ...]]:
        """``(tag, outcome, count)`` of the calls since ``since``."""
        cols = (CallTagRow.tag, CallTagRow.outcome)
        q = select(*cols, func.count()).where(CallTagRow.at >= since).group_by(*cols)
        with self._session() as s:
            return [tuple(r) for r in s.execute(q)]

    def connect_time_histogram(self, since: int, width_ms: float) -> list[tuple[float, int]]:
        """``(bin start in ms, count)`` of the times to connected since ``since``."""
        key = func.floor(CallRow.time_to_connected / width_ms)
        q = (
            select(key, func.count())
            .where(CallRow.at >= since, CallRow.time_to_connected.is_not(None))
            .group_by(key)
        )
        with self._session() as s:
            return [(float(b) * width_ms, int(n)) for b, n in s.execute(q)]


def _issuance(r: IssuanceRow) -> dict[str, Any]:
    return {
        "at": _aware(r.at).isoformat(),
        "requestId": r.request_id,
        "user": r.user,
        "apiKey": r.api_key,
        "ttl": r.ttl,
        "iceServers": json.loads(r.ice_servers),
        **({"nodes": json.loads(r.nodes)} if r.nodes else {}),
    }


def _call_summary(r: CallRow, tags: list[str]) -> dict[str, Any]:
    return {
        "id": r.id,
        "at": dt.datetime.fromtimestamp(r.at, dt.UTC).isoformat(),
        "requestId": r.request_id,
        "callId": r.call_id,
        "outcome": r.outcome,
        "path": r.path,
        "relayProtocol": r.relay_protocol,
        "cause": r.cause,
        "region": r.region,
        "node": r.node,
        "browser": r.browser,
        "timeToConnectedMs": r.time_to_connected,
        "tags": sorted(tags),
    }
