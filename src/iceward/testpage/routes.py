"""HTTP routes of the browser connectivity test page, mounted beside the API's by the server.

- ``GET /`` links to ``GET /test``, the page itself (static assets under ``/test/static/``);
- ``GET /test/findings.json``: the findings vocabulary (codes, severities, titles, fixes), so the
  page and the doctor speak the same words; ``GET /test/policy.json``: the thresholds and the
  internal address table the page judges with (the doctor's and the peer policy's);
- ``GET /api/v1/test-ice-servers?t=TOKEN``: short-lived TURN credentials for a test-link token
  (``iceward test-link``, ``POST /admin/v1/test-links``), never an API key in a link;
- ``POST /api/v1/reports`` stores a report (validated, size capped by the API's request guard,
  rate limited per client address) and returns its short link; ``GET /api/v1/reports/{id}`` is
  the JSON (``iceward analyze`` reads it); ``GET /reports/{id}`` renders it for support.
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations at runtime.
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool

from iceward.api.client import ClientAddress
from iceward.api.control import ServerControl
from iceward.api.guard import REPORT_BODY_LIMIT
from iceward.api.issue import issue
from iceward.diagnose.findings import CODES, LONG_LIVED_CREDENTIAL_S
from iceward.ratelimit import RateLimiter
from iceward.store import Store
from iceward.testpage.tokens import DEFAULT_TTL, MAX_TTL, check_token, ensure_key, mint_token
from iceward.turn.policy import DEFAULT_DENIED

MAX_REPORT_BYTES = REPORT_BODY_LIMIT  # enforced for every route by iceward.api.guard
REPORT_RETENTION = dt.timedelta(days=30)
MAX_REPORTS = 1000
TEST_CREDENTIAL_TTL = 900
STATIC_TYPES = {"test.js": "text/javascript", "test.css": "text/css"}
FORMAT = "iceward-test-report"


def static_text(name: str) -> str:
    return resources.files("iceward.testpage").joinpath("static", name).read_text("utf-8")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FindingIn(_Strict):
    code: str
    severity: Literal["error", "warning", "info"]
    title: str = Field(max_length=300)
    evidence: list[Annotated[str, Field(max_length=1000)]] = Field(default=[], max_length=50)
    fix: str = Field("", max_length=300)
    subject: str | None = Field(None, max_length=500)

    @field_validator("code")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in CODES:
            raise ValueError(f"unknown finding code {value!r}")
        return value


class CandidateErrorIn(_Strict):
    code: int = Field(ge=0, le=999)
    text: str = Field("", max_length=300)
    meaning: str = Field("", max_length=300)
    url: str = Field("", max_length=500)


class DatapathIn(_Strict):
    connected: bool
    sent: int = Field(ge=0, le=100_000)
    delivered: int = Field(ge=0, le=100_000)
    lost: int = Field(ge=0, le=100_000)
    rttP50: float | None = Field(None, ge=0)
    rttP95: float | None = Field(None, ge=0)
    selected: str | None = Field(None, max_length=300)
    error: str | None = Field(None, max_length=500)


class RowIn(_Strict):
    url: str = Field(max_length=500)
    kind: Literal["stun", "turn"]
    transport: Literal["udp", "tcp", "tls"]
    status: Literal["ok", "warn", "fail", "skip"]
    host: int = Field(0, ge=0, le=1000)
    srflx: int = Field(0, ge=0, le=1000)
    relay: int = Field(0, ge=0, le=1000)
    relayProtocol: str | None = Field(None, max_length=10)
    relayAddress: str | None = Field(None, max_length=100)
    errors: list[CandidateErrorIn] = Field(default=[], max_length=50)
    datapath: DatapathIn | None = None
    note: str = Field("", max_length=500)


class FactsIn(_Strict):
    userAgent: str = Field("", max_length=500)
    getUserMedia: Literal["granted", "denied", "not-asked", "unavailable"] = "not-asked"
    mdnsHost: bool = False
    ipv6: bool = False
    hostCandidates: int = Field(0, ge=0, le=10_000)
    widenedGathering: bool | None = None


class AllPolicyIn(_Strict):
    connected: bool
    selected: str | None = Field(None, max_length=300)
    error: str | None = Field(None, max_length=500)


class ReportIn(_Strict):
    format: Literal["iceward-test-report"]
    version: Literal[1]
    createdAt: str = Field(max_length=64)
    source: Literal["token", "pasted", "url"]
    summary: str = Field(max_length=500)
    #: The one sentence for the end user ("Calls from this network will connect.").
    answer: str = Field("", max_length=300)
    urls: list[Annotated[str, Field(max_length=500)]] = Field(max_length=64)
    findings: list[FindingIn] = Field(max_length=100)
    rows: list[RowIn] = Field(max_length=64)
    facts: FactsIn
    allPolicy: AllPolicyIn | None = None
    getStats: list[dict[str, Any]] = Field(default=[], max_length=3000)


def _has_secret(value: Any, depth: int = 0) -> bool:
    """Whether a credential slipped into the report (the page never sends one)."""
    if depth > 20:
        return True
    if isinstance(value, dict):
        return any(
            str(k).lower() in ("credential", "password", "username") or _has_secret(v, depth + 1)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return any(_has_secret(v, depth + 1) for v in value)
    return False


def create_router(
    service: ServerControl,
    store: Store,
    *,
    admin: Callable[[Request], Awaitable[str]],
    client_address: ClientAddress,
    report_rate: float = 0.2,
    report_burst: int = 5,
) -> APIRouter:
    router = APIRouter()
    key = ensure_key(service.data_dir)
    report_limiter = RateLimiter(report_rate, report_burst)
    token_limiter = RateLimiter(1.0, 10)

    def page() -> HTMLResponse:
        return HTMLResponse(
            static_text("test.html"),
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )

    @router.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<title>iceward</title></head><body><h1>iceward</h1><ul>"
            '<li><a href="/test">Browser connectivity test</a></li>'
            '<li><a href="/docs">HTTP API documentation</a></li></ul></body></html>'
        )

    @router.get("/test", include_in_schema=False)
    async def test_page() -> HTMLResponse:
        return page()

    @router.get("/reports/{report_id}", include_in_schema=False)
    async def report_page(report_id: str) -> HTMLResponse:
        return page()

    @router.get("/test/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC_TYPES:
            raise HTTPException(404, "no such file")
        return Response(static_text(name), media_type=STATIC_TYPES[name])

    @router.get("/test/findings.json", tags=["test page"])
    async def findings() -> list[dict[str, str]]:
        """The findings vocabulary shared by the doctor, the analyzer and the test page."""
        return [
            {"code": s.code, "severity": s.severity, "title": s.title, "fix": s.fix}
            for s in CODES.values()
        ]

    @router.get("/test/policy.json", tags=["test page"])
    async def policy() -> dict[str, Any]:
        """The thresholds and tables the page judges with, the doctor's and the server's own:
        how long a credential may live (static-credentials), and which address ranges are
        internal (the peer policy's table; IPv4 inside IPv6 is unwrapped as the server does)."""
        return {
            "longLivedCredentialS": LONG_LIVED_CREDENTIAL_S,
            "internalRanges": [list(pair) for pair in DEFAULT_DENIED],
        }

    @router.get("/api/v1/test-ice-servers", tags=["test page"])
    async def test_ice_servers(
        response: Response,
        t: Annotated[str, Query(min_length=1, max_length=200)],
    ) -> dict[str, Any]:
        """TURN credentials for the test page, authorised by a test-link token."""
        expiry = check_token(key, t)
        if expiry is None:
            raise HTTPException(401, "invalid or expired test link: ask for a new one")
        if not token_limiter.allow(t, time.monotonic()):
            raise HTTPException(429, "rate limit exceeded for this test link")
        servers, _ = await issue(
            service, store, response, user="test-page", issuer="test-link",
            ttl=TEST_CREDENTIAL_TTL, request_id=t.rpartition(".")[0],
        )  # fmt: skip
        return {"iceServers": servers, "ttl": TEST_CREDENTIAL_TTL}

    class TestLinkIn(BaseModel):
        ttl: int = Field(DEFAULT_TTL, ge=60, le=MAX_TTL)

    @router.post("/admin/v1/test-links", status_code=201, tags=["admin"])
    async def new_test_link(
        request: Request, _: Annotated[str, Depends(admin)], body: TestLinkIn | None = None
    ) -> dict[str, Any]:
        """A test page link with a short-lived token (no API key in it)."""
        ttl = body.ttl if body else DEFAULT_TTL
        token = mint_token(key, ttl)
        base = str(request.base_url).rstrip("/")
        expires = dt.datetime.fromtimestamp(int(token.partition(".")[0]), dt.UTC)
        return {"url": f"{base}/test?t={token}", "token": token, "expiresAt": expires.isoformat()}

    @router.post("/api/v1/reports", status_code=201, tags=["test page"])
    async def post_report(request: Request) -> JSONResponse:
        """Store a test page report for support; returns its id and link."""
        if not report_limiter.allow(client_address(request.scope), time.monotonic()):
            raise HTTPException(429, "too many reports from this address; try again in a minute")
        body = await request.body()  # at most MAX_REPORT_BYTES: the guard cuts it off there
        try:
            report = ReportIn.model_validate_json(body)
        except ValidationError as exc:
            errors = [
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in exc.errors()[:10]
            ]
            return JSONResponse({"detail": "malformed report", "errors": errors}, 422)
        data = report.model_dump(mode="json")
        if _has_secret(data["getStats"]):
            raise HTTPException(422, "the report must not contain credentials")
        report_id = await run_in_threadpool(store.add_report, data, report.summary)
        await run_in_threadpool(store.prune_reports, REPORT_RETENTION, MAX_REPORTS)
        base = str(request.base_url).rstrip("/")
        return JSONResponse({"id": report_id, "url": f"{base}/reports/{report_id}"}, 201)

    @router.get("/api/v1/reports/{report_id}", tags=["test page"])
    async def get_report(
        report_id: Annotated[str, Path(max_length=32)],
        download: bool = False,
    ) -> JSONResponse:
        """A stored report as JSON; ``iceward analyze`` accepts the download."""
        report = await run_in_threadpool(store.get_report, report_id)
        if report is None:
            raise HTTPException(404, "no such report (reports are kept 30 days)")
        headers = {}
        if download:
            headers["Content-Disposition"] = (
                f'attachment; filename="iceward-report-{report_id}.json"'
            )
        return JSONResponse(report, headers=headers)

    return router
