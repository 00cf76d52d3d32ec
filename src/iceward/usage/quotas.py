"""Byte quota periods and notices: when a period starts, what a notice says and how it is signed.

A notice is a JSON POST signed with the quota's secret: header ``X-Iceward-Signature:
t=<unix time>,sha256=<hex HMAC-SHA256(secret, "<t>." + body)>``. The receiver recomputes it
over the raw body and refuses a stale ``t`` (replays).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from typing import Any

from iceward.usage.store import Quota, UsageStore

#: Percentages of a quota at which a notify quota posts its webhook.
NOTICE_LEVELS = (80, 100)
SIGNATURE_HEADER = "X-Iceward-Signature"


def period_start(period: str, now: float) -> tuple[float, str]:
    """The Unix time the current day or month began (UTC) and its key (``2026-11-30``)."""
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    if period == "month":
        first = today.replace(day=1)
        key = first.strftime("%Y-%m")
    else:
        first, key = today, today.isoformat()
    return dt.datetime.combine(first, dt.time(), dt.UTC).timestamp(), key


def notice_body(quota: Quota, used: int, level: int, period_key: str, now: float) -> bytes:
    doc: dict[str, Any] = {
        "event": "quota.threshold",
        "quota": quota.id,
        quota.kind: quota.subject,
        "period": quota.period,
        "periodKey": period_key,
        "level": level,
        "usedBytes": used,
        "limitBytes": quota.limit_bytes,
        "action": quota.action,
        "at": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The value of :data:`SIGNATURE_HEADER` for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},sha256={mac.hexdigest()}"


def verify(secret: str, body: bytes, header: str, now: float, tolerance: float = 300) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` and is at most ``tolerance`` s old."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), header.strip())


def quota_doc(quota: Quota, used: int | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": quota.id,
        quota.kind: quota.subject,
        "bytes": quota.limit_bytes,
        "period": quota.period,
        "action": quota.action,
        "webhook": quota.webhook,
    }
    if used is not None:
        doc["usedBytes"] = used
    return doc


def quotas_with_use(usage: UsageStore, now: float) -> list[dict[str, Any]]:
    """Every quota with the bytes its subject relayed in its current period."""
    out = []
    for quota in usage.quotas():
        start, _ = period_start(quota.period, now)
        out.append(quota_doc(quota, usage.consumed(quota.kind, quota.subject, start)))
    return out
