"""Issuing TURN credentials over HTTP: mint, then log the exact iceServers handed out.

Every route that hands out credentials (the app backend's, the TURN REST API's, the test page's)
goes through :func:`issue`, so each answer is logged with a request id and the user id, the
credential redacted, and kept in the store's issuance log.
"""

import logging
import time
import uuid
from typing import Any

from fastapi import HTTPException, Response
from starlette.concurrency import run_in_threadpool

from iceward.api.control import ServerControl
from iceward.diagnose.iceurl import Transport, read_url
from iceward.fleet.issuer import Placement
from iceward.store import STORE_FAILURES, Store
from iceward.turn.credentials import RestCredential, ice_servers, mint_rest_credential
from iceward.usage.store import UsageStore

log = logging.getLogger("iceward.api")


def _transport(url: str) -> str | None:
    parsed = read_url(url)
    return parsed.transport if parsed is not None else None


def redact(servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**s, "credential": "<redacted>"} if "credential" in s else dict(s) for s in servers]


async def issue(
    service: ServerControl,
    store: Store,
    response: Response,
    *,
    user: str,
    issuer: str,
    ttl: int,
    transports: list[Transport] | None = None,
    region: str | None = None,
    request_id: str | None = None,
    placement: Placement | None = None,
    label: str | None = None,
    usage: UsageStore | None = None,
) -> tuple[list[dict[str, Any]], RestCredential]:
    """Mint a credential for ``user``, answer ``X-Request-ID``, log and record the answer. In
    a fleet, ``placement`` names the nodes whose URLs are handed out, best first; a ``label``
    is remembered with the username, and usage records of its allocations carry it."""
    secret = await service.secret_for_minting()
    if secret is None:
        raise HTTPException(503, "no shared secret configured: add one with `iceward secrets add`")
    if placement is not None:
        uris = [u for node in placement.nodes for u in node.all_urls()]
        region = placement.region
    else:
        uris = service.public_uris()
    if transports:
        uris = [u for u in uris if u.startswith("stun") or _transport(u) in transports]
    cred = mint_rest_credential(secret, user, ttl, time.time())
    servers = ice_servers(uris, cred.username, cred.password)
    request_id = request_id or uuid.uuid4().hex
    response.headers["X-Request-ID"] = request_id
    logged = redact(servers)
    nodes = [{"id": n.id, "region": n.region} for n in placement.nodes] if placement else None
    log.info(
        "issued request_id=%s by=%r user=%r label=%r ttl=%d region=%r nodes=%s iceServers=%s",
        request_id, issuer, user, label, ttl, region, [n["id"] for n in nodes or []], logged,
    )  # fmt: skip
    try:  # the answer stands when the database is down: the log line above records it
        if label is not None and usage is not None:
            await run_in_threadpool(usage.remember_label, cred.username, label)
        await run_in_threadpool(
            store.log_issuance, request_id, user, issuer, ttl, logged, nodes=nodes
        )
    except STORE_FAILURES as exc:
        store.health.failed(exc)
    return servers, cred
