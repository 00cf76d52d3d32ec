"""Admin routes over usage: the report, and byte quotas (list with what each has used, set,
remove). Per-user and per-label figures are served here, never as metric labels."""

# No ``from __future__ import annotations``: FastAPI resolves the routes' dependency annotations
# at runtime, and they name a local alias.
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from iceward.store import StoreError
from iceward.units import parse_size
from iceward.usage.quotas import quota_doc, quotas_with_use
from iceward.usage.report import summarize, window
from iceward.usage.store import UsageStore

By = Literal["user", "label", "region", "node", "transport", "day"]


class QuotaIn(BaseModel):
    user: str | None = Field(None, min_length=1, max_length=512)
    label: str | None = Field(None, min_length=1, max_length=128)
    bytes: int | str = Field(description="A number of bytes, or a size: 10GB, 500MB, 2GiB.")
    period: Literal["day", "month"]
    action: Literal["block", "notify"]
    webhook: str | None = Field(None, max_length=2000, pattern=r"^https?://")
    webhookSecret: str | None = Field(None, min_length=16, max_length=128)


def usage_router(
    usage: UsageStore,
    admin: Callable[[Request], Awaitable[str]],
    region_prices: dict[str, float] | None = None,
) -> APIRouter:
    """``region_prices``: money per GB of a region's bytes in reports (``--region-price``)."""
    router = APIRouter(tags=["usage"])
    Admin = Annotated[str, Depends(admin)]

    @router.get("/admin/v1/usage")
    async def usage_report(
        _: Admin,
        since: Annotated[str, Query(max_length=40, description="30d, 12h, or a date")] = "30d",
        until: Annotated[str | None, Query(max_length=40)] = None,
        by: By = "user",
        price_per_gb: Annotated[float | None, Query(alias="pricePerGb", ge=0, le=1e6)] = None,
    ) -> dict[str, Any]:
        """Relayed bytes each way, allocation-minutes, peak concurrency, transport shares and
        cost, per user, label, region, node, transport or day."""
        try:
            start, end = window(since, until, time.time())
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        try:
            rows = await run_in_threadpool(usage.rows, start, end)
        except StoreError as exc:
            raise HTTPException(422, str(exc)) from None
        return summarize(rows, by, start, end, price_per_gb, region_prices)  # type: ignore[arg-type]

    @router.get("/admin/v1/quotas")
    async def list_quotas(_: Admin) -> list[dict[str, Any]]:
        return await run_in_threadpool(quotas_with_use, usage, time.time())

    @router.post("/admin/v1/quotas", status_code=201)
    async def set_quota(body: QuotaIn, response: Response, _: Admin) -> dict[str, Any]:
        """Add or replace the quota on a user or label for a period; a notify quota's signing
        secret is returned (generated unless given)."""
        if (body.user is None) == (body.label is None):
            raise HTTPException(422, "name a user or a label (one of them)")
        try:
            limit = body.bytes if isinstance(body.bytes, int) else parse_size(body.bytes)
            kind, subject = ("user", body.user) if body.user else ("label", body.label)
            assert subject is not None
            quota, new = await run_in_threadpool(
                usage.set_quota, kind, subject, limit, body.period, body.action,
                body.webhook, body.webhookSecret,
            )  # fmt: skip
        except (ValueError, StoreError) as exc:
            raise HTTPException(422, str(exc)) from None
        response.status_code = 201 if new else 200
        return {**quota_doc(quota), "webhookSecret": quota.webhook_secret}

    @router.delete("/admin/v1/quotas/{quota_id}", status_code=204)
    async def remove_quota(quota_id: int, _: Admin) -> Response:
        try:
            await run_in_threadpool(usage.remove_quota_id, quota_id)
        except StoreError as exc:
            raise HTTPException(404, str(exc)) from None
        return Response(status_code=204)

    return router
