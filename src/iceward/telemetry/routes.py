"""HTTP routes of telemetry, mounted beside the API's by the server.

- ``GET /sdk/iceward.js``: the browser SDK, an ES module (``iceward.watch(pc, {...})``);
- ``POST /api/v1/telemetry``: one call record, authorised by the ``telemetryToken`` of the
  ice-servers answer (:mod:`iceward.telemetry.ingest`); the body limit is the request guard's;
- ``GET /dashboard`` and ``GET /dashboard/calls/{id}`` (admin key): failure rate, relay share,
  causes, time to connected, and each call rendered as ``iceward analyze --html`` renders;
- ``GET /admin/v1/calls`` and ``GET /admin/v1/calls/{id}``: the same as JSON (``iceward calls``).
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations at runtime.
import base64
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from iceward.api.client import ClientAddress
from iceward.api.metrics import ApiMetrics
from iceward.store import Store
from iceward.telemetry.dashboard import render_call, render_dashboard
from iceward.telemetry.ingest import Ingest, Refused

SDK = "iceward.js"
CALL_ID = Annotated[str, Path(max_length=32, pattern=r"^[A-Za-z0-9]+$")]


def sdk_text() -> str:
    return resources.files("iceward.telemetry").joinpath("static", SDK).read_text("utf-8")


def create_router(
    store: Store,
    *,
    key: bytes,
    metrics: ApiMetrics,
    admin: Callable[[Request], Awaitable[str]],
    client_address: ClientAddress,
    node: str | None,
) -> APIRouter:
    router = APIRouter()
    ingest = Ingest.create(store, key, metrics, node)
    sdk = sdk_text()
    Admin = Annotated[str, Depends(admin)]

    async def viewer(request: Request) -> str:
        """The admin key as a Bearer token, or as the password of HTTP Basic: a browser asks
        for it once (any user name), the same key and address checks as the admin API."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                password = base64.b64decode(value, validate=True).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                password = ""
            request.scope["headers"] = [
                (k, v) for k, v in request.scope["headers"] if k != b"authorization"
            ] + [(b"authorization", f"Bearer {password}".encode())]
        try:
            return await admin(request)
        except HTTPException as exc:
            if exc.status_code != 401:
                raise
            challenge = {"WWW-Authenticate": 'Basic realm="iceward dashboard", charset="UTF-8"'}
            raise HTTPException(401, exc.detail, headers=challenge) from None

    Viewer = Annotated[str, Depends(viewer)]

    @router.get("/sdk/iceward.js", include_in_schema=False)
    async def sdk_module() -> Response:
        return Response(
            sdk,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=3600", "Access-Control-Allow-Origin": "*"},
        )

    @router.post("/api/v1/telemetry", status_code=201, tags=["telemetry"])
    async def post_telemetry(request: Request) -> JSONResponse:
        """One call record from the browser SDK (``telemetryToken`` in the body: sendBeacon
        cannot set headers). 201 with the call's id and outcome, or a 4xx and nothing stored."""
        body = await request.body()  # at most the guard's limit for this route
        try:
            answer = await run_in_threadpool(
                ingest.accept,
                body,
                client_address(request.scope),
                request.headers.get("user-agent", "")[:500],
                time.time(),
                time.monotonic(),
            )
        except Refused as exc:
            return JSONResponse({"detail": exc.detail}, exc.status)
        return JSONResponse(answer, 201)

    @router.get("/admin/v1/calls", tags=["admin"])
    async def list_calls(
        _: Admin,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        outcome: Literal["connected-direct", "connected-relay", "failed", "not-connected"]
        | None = None,
    ) -> list[dict[str, Any]]:
        """The newest calls first: outcome, path, relay protocol, cause, region, browser."""
        return await run_in_threadpool(store.list_calls, limit, outcome)

    @router.get("/admin/v1/calls/{call_id}", tags=["admin"])
    async def get_call(call_id: CALL_ID, _: Admin) -> dict[str, Any]:
        """One call: its record, findings and the iceServers it was issued."""
        call = await run_in_threadpool(store.get_call, call_id)
        if call is None:
            raise HTTPException(404, "no such call")
        return call

    @router.get("/dashboard", include_in_schema=False)
    async def dashboard(
        _: Viewer, by: Annotated[Literal["hour", "day"], Query()] = "hour"
    ) -> HTMLResponse:
        html = await run_in_threadpool(render_dashboard, store, by, time.time())
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @router.get("/dashboard/calls/{call_id}", include_in_schema=False)
    async def call_page(call_id: CALL_ID, _: Viewer) -> HTMLResponse:
        call = await run_in_threadpool(store.get_call, call_id)
        if call is None:
            raise HTTPException(404, "no such call")
        return HTMLResponse(render_call(call), headers={"Cache-Control": "no-store"})

    return router
