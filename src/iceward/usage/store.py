"""Usage records, issued labels and byte quotas in the data store.

One node writes its batches here directly; in a fleet the nodes hand the same
:class:`~iceward.usage.record.UsageRecord` batches to a Redis stream (:mod:`iceward.usage.stream`)
and a consumer calls :meth:`UsageStore.write`. Writes are idempotent: a record is keyed by its
allocation and sequence number, so one written twice counts once.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Insert, and_, delete, func, insert, inspect, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from iceward.store import (
    STORE_FAILURES,
    Store,
    StoreError,
    StoreUnavailable,
    describe_failure,
    schema_change,
)
from iceward.usage.record import UsageRecord
from iceward.usage.tables import LabelRow, QuotaRow, UsageBase, UsageRow

#: Rows read for one report at most: a report over more is refused, not left to eat memory.
REPORT_ROW_LIMIT = 2_000_000

QUOTA_KINDS = ("user", "label")
QUOTA_PERIODS = ("day", "month")
QUOTA_ACTIONS = ("block", "notify")


@dataclass(frozen=True, slots=True)
class Quota:
    id: int
    kind: str
    subject: str
    limit_bytes: int
    period: str
    action: str
    webhook: str | None
    webhook_secret: str | None


def _quota(row: QuotaRow) -> Quota:
    return Quota(
        row.id, row.kind, row.subject, row.limit_bytes, row.period, row.action,
        row.webhook, row.webhook_secret,
    )  # fmt: skip


def _row(r: UsageRecord, label: str | None) -> dict[str, Any]:
    return {
        "allocation": r.allocation, "node": r.node, "region": r.region, "user": r.user,
        "username": r.username, "label": label, "transport": r.transport, "family": r.family,
        "started_at": r.started_at, "period_start": r.period_start, "period_end": r.period_end,
        "final": int(r.final), "reason": r.reason[:64], "bytes_to_peer": r.bytes_to_peer,
        "bytes_to_client": r.bytes_to_client, "packets_to_peer": r.packets_to_peer,
        "packets_to_client": r.packets_to_client, "peers": json.dumps(r.peers), "seq": r.seq,
    }  # fmt: skip


def _insert_new(s: Session, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows``, skipping any whose (allocation, seq) is already stored."""
    dialect = s.get_bind().dialect.name
    statement: Insert
    if dialect in ("postgresql", "sqlite"):
        module = postgresql if dialect == "postgresql" else sqlite
        statement = module.insert(UsageRow).on_conflict_do_nothing(
            index_elements=["allocation", "seq"]
        )
    else:  # any other SQL database: look first (the unique index still guards the race)
        keys = {(r["allocation"], r["seq"]) for r in rows}
        stored = {
            (a, n)
            for a, n in s.execute(
                select(UsageRow.allocation, UsageRow.seq).where(
                    UsageRow.allocation.in_({a for a, _ in keys})
                )
            ).all()
        }
        rows = [r for r in rows if (r["allocation"], r["seq"]) not in stored]
        statement = insert(UsageRow)
    if rows:
        s.execute(statement, rows)


class UsageStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._session = sessionmaker(store.engine, expire_on_commit=False)
        try:
            with schema_change(store.engine) as conn:
                UsageBase.metadata.create_all(conn)
                self._add_seq(conn)
        except STORE_FAILURES as exc:
            raise StoreUnavailable(f"{store.health.subject}: {describe_failure(exc)}") from None

    def _add_seq(self, conn: Connection) -> None:
        """The ``seq`` column and its unique key, in a table made by an older iceward (its rows
        keep NULL, which the key does not compare)."""
        if "seq" not in {c["name"] for c in inspect(conn).get_columns("usage_records")}:
            conn.execute(text("ALTER TABLE usage_records ADD COLUMN seq INTEGER"))
        for index in UsageBase.metadata.tables["usage_records"].indexes:
            index.create(conn, checkfirst=True)

    # -- labels --------------------------------------------------------------------------------
    def remember_label(self, username: str, label: str) -> None:
        with self._session.begin() as s:
            s.merge(LabelRow(username=username, label=label, issued_at=dt.datetime.now(dt.UTC)))

    def usernames_labelled(self, labels: Iterable[str]) -> dict[str, str]:
        """username -> label for every issued username carrying one of ``labels``."""
        wanted = list(labels)
        if not wanted:
            return {}
        with self._session() as s:
            rows = s.execute(
                select(LabelRow.username, LabelRow.label).where(LabelRow.label.in_(wanted))
            ).all()
        return {username: label for username, label in rows}

    # -- records -------------------------------------------------------------------------------
    def write(self, records: Sequence[UsageRecord]) -> int:
        """Store a batch in one transaction, each record labelled as its username was issued,
        skipping records already stored; returns how many were given."""
        if not records:
            return 0
        with self._session.begin() as s:
            names = {r.username for r in records}
            labels = dict(
                s.execute(
                    select(LabelRow.username, LabelRow.label).where(LabelRow.username.in_(names))
                ).all()
            )
            # One executemany, no ORM objects: a batch is thousands of rows on a busy node.
            _insert_new(s, [_row(r, labels.get(r.username)) for r in records])
        return len(records)

    def rows(self, since: float, until: float) -> list[UsageRow]:
        """Records whose period overlaps [since, until); StoreError past REPORT_ROW_LIMIT."""
        with self._session() as s:
            found = s.scalars(
                select(UsageRow)
                .where(UsageRow.period_end > since, UsageRow.period_start < until)
                .order_by(UsageRow.id)
                .limit(REPORT_ROW_LIMIT + 1)
            ).all()
        if len(found) > REPORT_ROW_LIMIT:
            raise StoreError(f"more than {REPORT_ROW_LIMIT} records: ask for a shorter period")
        return list(found)

    def consumed(self, kind: str, subject: str, since: float) -> int:
        """Bytes relayed both ways by a user or label in records ending after ``since``."""
        column = UsageRow.user if kind == "user" else UsageRow.label
        with self._session() as s:
            total = s.scalar(
                select(func.sum(UsageRow.bytes_to_peer + UsageRow.bytes_to_client)).where(
                    column == subject, UsageRow.period_end > since
                )
            )
        return int(total or 0)

    def prune(self, before: float, labels_before: dt.datetime) -> int:
        """Drop records that ended before ``before`` and labels issued before ``labels_before``."""
        with self._session.begin() as s:
            removed = s.execute(delete(UsageRow).where(UsageRow.period_end < before)).rowcount  # type: ignore[attr-defined]
            s.execute(delete(LabelRow).where(LabelRow.issued_at < labels_before))
        return int(removed)

    # -- quotas --------------------------------------------------------------------------------
    def set_quota(
        self,
        kind: str,
        subject: str,
        limit_bytes: int,
        period: str,
        action: str,
        webhook: str | None = None,
        webhook_secret: str | None = None,
    ) -> tuple[Quota, bool]:
        """Add or replace the quota on (kind, subject, period); returns it and whether it is
        new. A notify quota gets a random signing secret unless given one (or keeping its own)."""
        if kind not in QUOTA_KINDS or period not in QUOTA_PERIODS or action not in QUOTA_ACTIONS:
            raise StoreError("a quota is on a user or a label, per day or month, block or notify")
        if limit_bytes <= 0:
            raise StoreError("a quota's byte limit must be positive")
        if action == "notify" and not webhook:
            raise StoreError("a notify quota needs a webhook URL")
        with self._session.begin() as s:
            row = s.scalar(
                select(QuotaRow).where(
                    QuotaRow.kind == kind, QuotaRow.subject == subject, QuotaRow.period == period
                )
            )
            new = row is None
            if row is None:
                row = QuotaRow(
                    kind=kind, subject=subject, period=period,
                    created_at=dt.datetime.now(dt.UTC), notified_period="", notified_level=0,
                )  # fmt: skip
                s.add(row)
            secret = webhook_secret or row.webhook_secret
            if webhook and not secret:
                secret = secrets.token_urlsafe(32)
            row.limit_bytes, row.action = limit_bytes, action
            row.webhook, row.webhook_secret = webhook, secret if webhook else None
            s.flush()
            return _quota(row), new

    def quotas(self) -> list[Quota]:
        with self._session() as s:
            return [_quota(r) for r in s.scalars(select(QuotaRow).order_by(QuotaRow.id))]

    def remove_quota(self, kind: str, subject: str, period: str | None = None) -> int:
        """Remove the quotas on a user or label (of one period, if given); StoreError if none."""
        with self._session.begin() as s:
            where = and_(QuotaRow.kind == kind, QuotaRow.subject == subject)
            if period is not None:
                where = and_(where, QuotaRow.period == period)
            removed = int(s.execute(delete(QuotaRow).where(where)).rowcount)  # type: ignore[attr-defined]
        if removed == 0:
            raise StoreError(f"no quota on {kind} {subject!r}")
        return removed

    def remove_quota_id(self, quota_id: int) -> None:
        with self._session.begin() as s:
            if s.execute(delete(QuotaRow).where(QuotaRow.id == quota_id)).rowcount == 0:  # type: ignore[attr-defined]
                raise StoreError(f"no quota {quota_id}")

    def claim_notice(self, quota_id: int, period_key: str, level: int) -> bool:
        """True for the one caller (of every node) that moves this quota's notice to ``level``
        in ``period_key``; it then sends the notice."""
        with self._session.begin() as s:
            changed = s.execute(
                update(QuotaRow)
                .where(
                    QuotaRow.id == quota_id,
                    or_(
                        QuotaRow.notified_period != period_key,
                        QuotaRow.notified_level < level,
                    ),
                )
                .values(notified_period=period_key, notified_level=level)
            ).rowcount  # type: ignore[attr-defined]
        return bool(changed)
