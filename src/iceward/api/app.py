"""The HTTP API served by ``iceward serve``: credentials for app backends, admin, metrics.

App backends call ``POST /api/v1/ice-servers`` with an API key after authorising their user and
pass the answer to the browser; TURN REST API clients (Janus's ``turn_rest_api``) call
``GET /api/v1/turn``. Admin routes answer only loopback callers by default and need an admin key.

Before any body is read, :class:`iceward.api.guard.RequestGuard` enforces each route's body limit
and checks the key of the routes that need one. The client's address (admin allow-list, rate
limits) is decided in one place, :class:`iceward.api.client.ClientAddress`. A failing data store
answers 503 naming it, never a 500; ``/readyz`` queries it for real.
"""

# No ``from __future__ import annotations`` here: FastAPI resolves the dependency annotations of
# the routes defined inside create_app at runtime, and they name local functions.
import asyncio
import datetime as dt
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from iceward import __version__
from iceward.api.client import ClientAddress
from iceward.api.control import ServerControl
from iceward.api.guard import AUTH_SCOPE_KEY, Auth, BodyTooLarge, RequestGuard
from iceward.api.issue import issue
from iceward.api.metrics import FleetCollector, make_registry
from iceward.api.telemetrytoken import ensure_key as telemetry_key
from iceward.api.telemetrytoken import mint as mint_telemetry_token
from iceward.api.usage import usage_router
from iceward.diagnose.iceurl import Transport
from iceward.fleet.choose import MAX_COUNT
from iceward.fleet.issuer import FleetIssuer
from iceward.ratelimit import RateLimiter
from iceward.store import STORE_FAILURES, Store, StoreError
from iceward.usage.store import UsageStore

log = logging.getLogger("iceward.api")

#: Seconds /readyz waits for the store's answer before it calls the store not ready.
READY_STORE_TIMEOUT = 2.0
STORE_UNAVAILABLE = "the data store is unavailable; try again later (the server log has the cause)"


class IceServersRequest(BaseModel):
    user: str = Field(min_length=1, max_length=256, description="Your app's id for the user.")
    ttl: int | None = Field(None, ge=60, le=7 * 86400, description="Seconds; default 86400.")
    transports: list[Transport] | None = Field(
        None, description="Only URLs for these transports (stun: is always kept)."
    )
    region: str | None = Field(
        None, max_length=64, description="The region whose nodes to hand out (in a fleet)."
    )
    clientIp: str | None = Field(
        None,
        max_length=64,
        description="The end user's address as the backend saw it: its region, when no region "
        "is given (--region-map, --geoip).",
    )
    label: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="Your customer or project id: usage records and byte quotas go by it.",
    )
    count: int = Field(
        1,
        ge=1,
        le=MAX_COUNT,
        description="Nodes whose URLs to hand out, best first (in a fleet).",
    )

    @field_validator("clientIp")
    @classmethod
    def _check_ip(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value.strip())
        return value


class NodeRef(BaseModel):
    id: str
    region: str


class IceServer(BaseModel):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class IceServersResponse(BaseModel):
    iceServers: list[IceServer]
    ttl: int
    expiresAt: str
    telemetryToken: str = Field(
        description="For the browser SDK (/sdk/iceward.js): posts this call's record to"
        " /api/v1/telemetry, joined to these iceServers. Short-lived, a few records at most."
    )
    #: The fleet's nodes behind the URLs, in their order (only in a fleet).
    nodes: list[NodeRef] | None = None


class TurnRestResponse(BaseModel):
    username: str
    password: str
    ttl: int
    uris: list[str]


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=512, pattern=r"^[^:]+$")
    password: str = Field(min_length=1, max_length=512)


class SecretIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    value: str | None = Field(None, min_length=16, max_length=256)


def create_app(
    service: ServerControl,
    store: Store,
    *,
    cors_origins: list[str] | None = None,
    admin_networks: list[str] | None = None,
    rate: float = 10.0,
    burst: int = 20,
    default_ttl: int = 86400,
    trusted_proxies: list[str] | None = None,
    fleet: FleetIssuer | None = None,
    region_prices: dict[str, float] | None = None,
) -> FastAPI:
    app = FastAPI(
        title="iceward",
        version=__version__,
        description="Ephemeral TURN credentials, admin and metrics of an iceward server.",
    )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming each field and what is wrong, without echoing the input back: it may be a
        password, or a value (a non-finite float) that JSON cannot even carry."""
        detail = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    def store_failure(exc: Exception) -> tuple[int, str] | None:
        """A failing store answers 503 (logged once by the store's health), not a 500."""
        if not isinstance(exc, STORE_FAILURES):
            return None
        store.health.failed(exc)
        return 503, STORE_UNAVAILABLE

    async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        answer = store_failure(exc)
        assert answer is not None
        return JSONResponse({"detail": answer[1]}, status_code=answer[0])

    for failure in STORE_FAILURES:
        app.add_exception_handler(failure, store_unavailable)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail, "limit": exc.limit}, status_code=413, headers=exc.headers
        )

    usage = UsageStore(store)
    api_metrics = make_registry()
    registry, collector = api_metrics.registry, api_metrics.collector
    if fleet is not None:
        registry.register(FleetCollector(fleet.figures))
    api_requests = api_metrics.api_requests
    limiter = RateLimiter(rate, burst)
    admin_nets = [ipaddress.ip_network(n, strict=False) for n in (admin_networks or [])]
    client_address = ClientAddress(trusted_proxies or [])
    token_key = telemetry_key(service.data_dir)

    def bearer(headers: Any) -> str:
        header = headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "missing API key (Authorization: Bearer ...)")
        return str(token.strip())

    async def authenticate(scope: Any, auth: Auth) -> str:
        """The name of the key the request shows for ``auth``; else HTTPException 401/403.
        The guard calls it before the body is read; the routes' dependencies reuse its answer."""
        done = scope.get(AUTH_SCOPE_KEY)
        if done is not None and done[0] == auth:
            return str(done[1])
        request = Request(scope)
        if auth == "admin-key":
            try:
                ip = ipaddress.ip_address(client_address(scope))
            except ValueError:
                raise HTTPException(403, "admin API refused for this address") from None
            if not (ip.is_loopback or any(ip in net for net in admin_nets)):
                raise HTTPException(403, "admin API refused for this address")
            name = await run_in_threadpool(store.check_api_key, bearer(request.headers), admin=True)
            if name is None:
                raise HTTPException(401, "invalid or revoked admin key")
            return name
        name = await run_in_threadpool(store.check_api_key, bearer(request.headers))
        if name is None:
            raise HTTPException(401, "invalid or revoked API key")
        return name

    # The guard sits inside CORS (its refusals carry the CORS headers a browser needs to read
    # them) and outside the routes (it runs before FastAPI reads any body).
    app.add_middleware(
        RequestGuard,
        authenticate=authenticate,
        refused=api_metrics.http_refused,
        on_error=store_failure,
        client_address=client_address,
    )
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Request-ID"],
        )

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        api_requests.labels(path, str(response.status_code)).inc()
        return response

    async def app_key(request: Request) -> str:
        name = await authenticate(request.scope, "api-key")
        if not limiter.allow(name, time.monotonic()):
            raise HTTPException(429, "rate limit exceeded for this API key")
        return name

    async def admin_key(request: Request) -> str:
        return await authenticate(request.scope, "admin-key")

    @app.post(
        "/api/v1/ice-servers",
        response_model=IceServersResponse,
        response_model_exclude_none=True,
        tags=["credentials"],
    )
    async def post_ice_servers(
        body: IceServersRequest, response: Response, key: Annotated[str, Depends(app_key)]
    ) -> dict[str, Any]:
        """Fresh TURN REST credentials and the iceServers array to hand to the browser."""
        ttl = body.ttl or default_ttl
        placement = None
        if fleet is not None:
            placement = fleet.place(region=body.region, client_ip=body.clientIp, count=body.count)
        servers, cred = await issue(
            service, store, response, user=body.user, issuer=key, ttl=ttl,
            transports=body.transports, region=body.region, placement=placement,
            label=body.label, usage=usage,
        )  # fmt: skip
        expires = dt.datetime.fromtimestamp(cred.expires_at, dt.UTC)
        token = mint_telemetry_token(
            token_key, response.headers["X-Request-ID"], ttl, time.time(), body.region
        )
        answer: dict[str, Any] = {
            "iceServers": servers,
            "ttl": ttl,
            "expiresAt": expires.isoformat(),
            "telemetryToken": token,
        }
        if placement is not None:
            answer["nodes"] = [{"id": n.id, "region": n.region} for n in placement.nodes]
        return answer

    @app.get("/api/v1/turn", response_model=TurnRestResponse, tags=["credentials"])
    async def get_turn(
        response: Response,
        service_name: Annotated[Literal["turn"], Query(alias="service")],
        key: Annotated[str, Query(min_length=1, max_length=200)],
        username: Annotated[str, Query(min_length=1, max_length=256)] = "user",
        ttl: Annotated[int | None, Query(ge=60, le=7 * 86400)] = None,
    ) -> dict[str, Any]:
        """The TURN REST API draft's endpoint (draft-uberti-behave-turn-rest-00)."""
        name = await run_in_threadpool(store.check_api_key, key)
        if name is None:
            raise HTTPException(401, "invalid or revoked API key")
        if not limiter.allow(name, time.monotonic()):
            raise HTTPException(429, "rate limit exceeded for this API key")
        lifetime = ttl or default_ttl
        servers, cred = await issue(
            service, store, response, user=username, issuer=name, ttl=lifetime
        )
        return {
            "username": cred.username,
            "password": cred.password,
            "ttl": lifetime,
            "uris": [u for s in servers for u in s["urls"]],
        }

    # -- admin ---------------------------------------------------------------------------------
    Admin = Annotated[str, Depends(admin_key)]

    @app.get("/admin/v1/allocations", tags=["admin"])
    async def list_allocations(_: Admin) -> list[dict[str, Any]]:
        """Active allocations with live traffic counters."""
        return await service.allocation_report()

    @app.delete("/admin/v1/allocations/{allocation_id}", status_code=204, tags=["admin"])
    async def delete_allocation(allocation_id: int, _: Admin) -> Response:
        if not await service.delete_allocation(allocation_id):
            raise HTTPException(404, "no such allocation")
        return Response(status_code=204)

    @app.get("/admin/v1/workers", tags=["admin"])
    async def list_workers(_: Admin) -> list[dict[str, Any]]:
        """The relaying processes: index, pid, up, restarts, relay port slice."""
        return service.worker_status()

    @app.get("/admin/v1/fleet", tags=["admin"])
    async def show_fleet(_: Admin) -> dict[str, Any]:
        """Every node of the fleet as last read: region, state, load, heartbeat age."""
        if fleet is None:
            raise HTTPException(404, "this server is not in a fleet (serve --cluster)")
        return fleet.fleet()

    @app.get("/admin/v1/users", tags=["admin"])
    async def list_users(_: Admin) -> list[dict[str, Any]]:
        users = await run_in_threadpool(store.list_users)
        return [
            {"name": u.name, "realm": u.realm, "createdAt": u.created_at.isoformat()} for u in users
        ]

    @app.post("/admin/v1/users", status_code=201, tags=["admin"])
    async def add_user(body: UserIn, _: Admin) -> dict[str, str]:
        try:
            await run_in_threadpool(store.add_user, body.name, body.password, service.realm)
        except StoreError as exc:
            raise HTTPException(422, str(exc)) from None
        await service.store_changed()
        return {"name": body.name}

    @app.delete("/admin/v1/users/{name}", status_code=204, tags=["admin"])
    async def remove_user(name: str, _: Admin) -> Response:
        try:
            await run_in_threadpool(store.remove_user, name)
        except StoreError as exc:
            raise HTTPException(404, str(exc)) from None
        await service.store_changed()
        return Response(status_code=204)

    @app.get("/admin/v1/secrets", tags=["admin"])
    async def list_secrets(_: Admin) -> list[dict[str, Any]]:
        rows = await run_in_threadpool(store.list_secrets)
        return [
            {
                "name": r.name,
                "createdAt": r.created_at.isoformat(),
                "retiredAt": r.retired_at.isoformat() if r.retired_at else None,
            }
            for r in rows
        ]

    @app.post("/admin/v1/secrets", status_code=201, tags=["admin"])
    async def add_secret(body: SecretIn, _: Admin) -> dict[str, str]:
        try:
            await run_in_threadpool(store.add_secret, body.name, body.value)
        except StoreError as exc:
            raise HTTPException(409, str(exc)) from None
        await service.store_changed()
        return {"name": body.name}

    @app.post("/admin/v1/secrets/{name}/retire", status_code=204, tags=["admin"])
    async def retire_secret(name: str, _: Admin) -> Response:
        try:
            await run_in_threadpool(store.retire_secret, name)
        except StoreError as exc:
            raise HTTPException(404, str(exc)) from None
        await service.store_changed()
        return Response(status_code=204)

    async def drain_status() -> dict[str, Any]:
        doc = service.drain_status()
        doc["allocations"] = sum((await service.metrics_snapshot()).active.values())
        return doc

    @app.post("/admin/v1/drain", tags=["admin"])
    async def start_drain(_: Admin) -> dict[str, Any]:
        """Drain this node: new allocations are sent to an alternate server (300 Try Alternate),
        existing ones go on; it exits once the last has ended, or at --drain-timeout."""
        await service.drain()
        return await drain_status()

    @app.get("/admin/v1/drain", tags=["admin"])
    async def get_drain(_: Admin) -> dict[str, Any]:
        """``state`` (serving or draining), since, deadline, allocations left."""
        return await drain_status()

    @app.get("/admin/v1/issuance", tags=["admin"])
    async def recent_issuance(
        _: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[dict[str, Any]]:
        """The most recent credential responses, credentials redacted."""
        return await run_in_threadpool(store.recent_issuance, limit)

    app.include_router(usage_router(usage, admin_key, region_prices))

    # What other routers mounted beside these (the test page) need: one admin check, one
    # decision about the client's address.
    app.state.admin_key = admin_key
    app.state.client_address = client_address
    app.state.metrics = api_metrics
    app.state.telemetry_key = token_key

    # -- observability -------------------------------------------------------------------------
    @app.get("/metrics", tags=["observability"], include_in_schema=False)
    async def metrics() -> Response:
        collector.snapshot = await service.metrics_snapshot()
        api_metrics.draining.set(service.drain_status()["state"] == "draining")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["observability"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["observability"])
    async def readyz() -> JSONResponse:
        """200 when listening, a worker is up, the store answers a real query and the node is not
        draining; else 503 with the reason (load balancers stop sending to a draining node)."""
        listening = service.listening
        state = service.drain_status()["state"]
        up, total = service.workers_up()
        try:
            store_error = await asyncio.wait_for(
                run_in_threadpool(store.check), READY_STORE_TIMEOUT
            )
        except TimeoutError:
            store_error = store.health.failed(f"no answer within {READY_STORE_TIMEOUT:g} s")
        reasons = []
        if not listening:
            reasons.append("not listening")
        if up == 0:
            reasons.append("no worker up")
        if store_error is not None:
            reasons.append(f"data store {store.health.subject}: {store_error}")
        if state == "draining":
            reasons.append("draining")
        doc: dict[str, Any] = {
            "status": "not ready" if reasons else "ready",
            "state": state,
            "listeners": listening,
            "workers": {"up": up, "total": total},
            "store": store_error is None,
        }
        if fleet is not None:  # a Redis outage is said, not a reason to take the node out
            doc["fleet"] = fleet.status()
        if reasons:
            doc["reason"] = "; ".join(reasons)
        return JSONResponse(doc, status_code=503 if reasons else 200)

    return app
