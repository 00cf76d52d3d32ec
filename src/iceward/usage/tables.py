"""The usage tables: records, the labels issued usernames carry, byte quotas.

They live in the server's data store (SQLite by default, any SQLAlchemy URL with ``--database``)
beside :mod:`iceward.store`'s tables, declared apart so the store knows nothing of usage.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UsageBase(DeclarativeBase):
    pass


class UsageRow(UsageBase):
    """What one allocation relayed over one period: an interim record, or its final one.

    Counters are the period's own (deltas), so any set of rows adds up without double counting;
    ``started_at`` is the allocation's start, the same on all its rows."""

    __tablename__ = "usage_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Unique over nodes and restarts: node, process boot id, allocation id.
    allocation: Mapped[str] = mapped_column(String(120))
    node: Mapped[str] = mapped_column(String(64))
    region: Mapped[str] = mapped_column(String(64), default="")
    user: Mapped[str] = mapped_column(String(512))
    username: Mapped[str] = mapped_column(String(600))
    label: Mapped[str | None] = mapped_column(String(128), nullable=True)
    transport: Mapped[str] = mapped_column(String(8))
    family: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[float] = mapped_column(Float)
    period_start: Mapped[float] = mapped_column(Float)
    period_end: Mapped[float] = mapped_column(Float)
    final: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(String(64), default="")
    bytes_to_peer: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_to_client: Mapped[int] = mapped_column(BigInteger, default=0)
    packets_to_peer: Mapped[int] = mapped_column(BigInteger, default=0)
    packets_to_client: Mapped[int] = mapped_column(BigInteger, default=0)
    #: JSON list of the peer hosts the allocation had permissions for (at most PEERS_KEPT).
    peers: Mapped[str] = mapped_column(Text, default="[]")
    #: The record's number within its allocation; NULL in rows of an older iceward.
    seq: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (
        Index("usage_records_key", "allocation", "seq", unique=True),
        Index("usage_records_end", "period_end"),
        Index("usage_records_user", "user", "period_end"),
        Index("usage_records_label", "label", "period_end"),
    )


class LabelRow(UsageBase):
    """The label an app backend passed with an issued username (``POST /api/v1/ice-servers``)."""

    __tablename__ = "usage_labels"
    username: Mapped[str] = mapped_column(String(600), primary_key=True)
    label: Mapped[str] = mapped_column(String(128), index=True)
    issued_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class QuotaRow(UsageBase):
    """A byte quota on a user or a label for a day or a month."""

    __tablename__ = "usage_quotas"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    subject: Mapped[str] = mapped_column(String(512))
    limit_bytes: Mapped[int] = mapped_column(BigInteger)
    period: Mapped[str] = mapped_column(String(8))
    action: Mapped[str] = mapped_column(String(8))
    webhook: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    webhook_secret: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: The period (``2026-11-30`` or ``2026-11``) and the percentage last notified in it: a
    #: node claims a notice by moving them forward, so one notice goes out per level.
    notified_period: Mapped[str] = mapped_column(String(16), default="")
    notified_level: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("usage_quotas_subject", "kind", "subject", "period", unique=True),)
