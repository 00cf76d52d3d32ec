"""One call record in, one judged call stored: what ``POST /api/v1/telemetry`` does.

In order, each refusal a 4xx with nothing stored and counted in
``iceward_telemetry_refused_total``: the rate per source, the JSON, any credential in it, the
schema, the token (HMAC, expiry), then the token's use count. Then the analyzer's rules judge the
record, with the expiry of the credential it was issued (carried by the token), and the outcome
is stored (in batches, :mod:`iceward.telemetry.writer`) and counted (``iceward_calls_total``,
the time-to-connected histogram).
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from iceward.analyze.telemetry import judge
from iceward.api.metrics import ApiMetrics
from iceward.api.telemetrytoken import MAX_USES, check
from iceward.ratelimit import RateLimiter
from iceward.store import Store
from iceward.telemetry.schema import RecordIn, credential_field, may_carry_credentials
from iceward.telemetry.writer import CallWriter, TokenUses

#: Records per second per source address, and the burst (a page posts one per PeerConnection).
RATE, BURST = 2.0, 20


class Refused(Exception):
    """A record refused: HTTP status, the counter's reason, one line for the sender."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


def browser_family(user_agent: str) -> str:
    """The browser family of a User-Agent (the order matters: Edge and Opera say Chrome too)."""
    for marker, family in (
        ("Edg/", "edge"), ("OPR/", "opera"), ("Firefox/", "firefox"),
        ("Chrome/", "chrome"), ("Chromium/", "chrome"), ("Safari/", "safari"),
    ):  # fmt: skip
        if marker in user_agent:
            return family
    return "other"


@dataclass
class Ingest:
    store: Store
    key: bytes
    metrics: ApiMetrics
    node: str | None
    limiter: RateLimiter
    tokens: TokenUses
    writer: CallWriter
    #: Call ids: a random prefix per process and a counter (the random source costs a system
    #: call; the ids need to be unique, not secret: the call pages need the admin key).
    _prefix: str = field(default_factory=lambda: secrets.token_hex(5))
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def next_id(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"

    @classmethod
    def create(
        cls,
        store: Store,
        key: bytes,
        metrics: ApiMetrics,
        node: str | None,
        limiter: RateLimiter | None = None,
    ) -> Ingest:
        return cls(
            store, key, metrics, node, limiter or RateLimiter(RATE, BURST),
            TokenUses(store, MAX_USES, time.time()), CallWriter(store),
        )  # fmt: skip

    def accept(
        self, body: bytes, source: str, user_agent: str, now: float, mono: float
    ) -> dict[str, Any]:
        """Store the record; its id and outcome. Raises :class:`Refused` (nothing stored)."""
        try:
            return self._accept(body, source, user_agent, now, mono)
        except Refused as exc:
            self.metrics.telemetry_refused.labels(exc.reason).inc()
            raise

    def _accept(
        self, body: bytes, source: str, user_agent: str, now: float, mono: float
    ) -> dict[str, Any]:
        if not self.limiter.allow(source, mono):
            raise Refused(429, "rate_limited", "too many call records from this address")
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError):
            raise Refused(422, "malformed", "the body is not JSON") from None
        where = credential_field(raw) if may_carry_credentials(body) else None
        if where is not None:
            raise Refused(422, "credentials", f"a call record must not carry credentials ({where})")
        try:
            record = RecordIn.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "body"
            detail = f"malformed call record: {loc}: {first['msg']}"
            raise Refused(422, "malformed", detail) from None
        token = check(self.key, record.token, now)
        if token is None:
            raise Refused(401, "bad_token", "invalid or expired telemetry token")
        _, findings, result = judge(record.for_analyzer(), [token.credential_expires_at])
        uses = self.tokens.take(token.request_id, token.expires_at, now)
        if uses is None:
            detail = f"this telemetry token has posted its {MAX_USES} records"
            raise Refused(409, "token_used_up", detail)
        browser = browser_family(user_agent)
        call_id = self.next_id()
        queued = self.writer.submit(
            {
                "id": call_id,
                "at": int(now),
                "request_id": token.request_id,
                "call_id": record.callId,
                "outcome": result.outcome,
                "path": result.path,
                "relay_protocol": result.relay_protocol,
                "cause": result.cause,
                "region": token.region,
                "node": self.node,
                "browser": browser,
                "time_to_connected": result.time_to_connected,
                "record": record.model_dump_json(exclude={"token"}, exclude_none=True),
                "findings": json.dumps([f.as_dict() for f in findings]),
            },
            [f"{k}={v}" for k, v in record.tags.items()],
            token.request_id,
            uses,
        )
        if not queued:
            raise Refused(503, "store_busy", "the data store is behind; try again later")
        m = self.metrics
        labels = (result.path or "", result.relay_protocol or "")
        m.calls.labels(result.outcome, *labels, result.cause or "").inc()
        if result.time_to_connected is not None:
            m.time_to_connected.labels(result.outcome, *labels).observe(
                result.time_to_connected / 1000
            )
        return {"id": call_id, "outcome": result.outcome, "cause": result.cause}
