"""One call record in, one judged call stored: what ``POST /api/v1/telemetry`` does.

In order, each refusal a 4xx with nothing stored and counted in
``iceward_telemetry_refused_total``: the rate per source, the JSON, any credential in it, the
schema, the token (HMAC, expiry), then the token's use count. Then the analyzer's rules judge the
record, with the credential expiries of the iceServers the issuance log says it was given, and
the outcome is stored and counted (``iceward_calls_total``, the time-to-connected histogram).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from iceward.analyze.telemetry import issued_expiries, judge
from iceward.api.metrics import ApiMetrics
from iceward.api.telemetrytoken import MAX_USES, check
from iceward.ratelimit import RateLimiter
from iceward.store import Store
from iceward.telemetry.schema import RecordIn, credential_field

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

    @classmethod
    def create(cls, store: Store, key: bytes, metrics: ApiMetrics, node: str | None) -> Ingest:
        return cls(store, key, metrics, node, RateLimiter(RATE, BURST))

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
        where = credential_field(raw)
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
        issued = self.store.issuance(token.request_id)
        _, findings, result = judge(record.for_analyzer(), issued_expiries(issued))
        if not self.store.use_token(token.request_id, token.expires_at, MAX_USES, now):
            detail = f"this telemetry token has posted its {MAX_USES} records"
            raise Refused(409, "token_used_up", detail)
        browser = browser_family(user_agent)
        call_id = self.store.add_call(
            {
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
        )
        m = self.metrics
        labels = (result.path or "", result.relay_protocol or "")
        m.calls.labels(result.outcome, *labels, result.cause or "").inc()
        if result.time_to_connected is not None:
            m.time_to_connected.labels(result.outcome, *labels).observe(
                result.time_to_connected / 1000
            )
        return {"id": call_id, "outcome": result.outcome, "cause": result.cause}
