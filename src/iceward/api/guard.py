"""What the HTTP API checks before it reads a request body: its size and, where needed, the key.

FastAPI reads and parses a body before it runs a route's dependencies, so a dependency cannot
refuse an unauthenticated 200 MB POST in time. :class:`RequestGuard` is a plain ASGI middleware
in front of the routes: it refuses by ``Content-Length`` (413), checks the API or admin key of the
routes that need one (401/403) without touching the body, and cuts a body off at the route's limit
while it streams (chunked bodies have no length to check up front). A refusal with a body still
on the way closes the connection, so the rest is never read. :data:`BODY_RULES` is the one table
of limits. It also applies a trusted proxy's ``X-Forwarded-Proto`` (see :mod:`iceward.api.client`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from prometheus_client import Counter
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iceward.api.client import ClientAddress

KiB = 1024
#: JSON API bodies: an ice-servers request, a user, a secret are a few hundred bytes.
JSON_BODY_LIMIT = 64 * KiB
#: A test page report with its getStats sample: the report upload's cap since it was written.
REPORT_BODY_LIMIT = 256 * KiB

#: A browser SDK call record (``/api/v1/telemetry``): the SDK keeps it well under this.
TELEMETRY_BODY_LIMIT = 32 * KiB

Auth = Literal["none", "api-key", "admin-key"]


@dataclass(frozen=True, slots=True)
class BodyRule:
    """Routes at ``path`` (a prefix when it ends with ``/``): body limit, key needed first."""

    path: str
    max_body: int
    auth: Auth = "none"

    def matches(self, path: str) -> bool:
        return path.startswith(self.path) if self.path.endswith("/") else path == self.path


#: Every route's body limit and the key it needs before its body is read; first match wins.
BODY_RULES: tuple[BodyRule, ...] = (
    BodyRule("/api/v1/reports", REPORT_BODY_LIMIT),
    BodyRule("/api/v1/telemetry", TELEMETRY_BODY_LIMIT),
    BodyRule("/api/v1/ice-servers", JSON_BODY_LIMIT, "api-key"),
    BodyRule("/admin/", JSON_BODY_LIMIT, "admin-key"),
    BodyRule("/", JSON_BODY_LIMIT),
)

#: Where the guard leaves the key it checked: ``(auth, key name)``, so routes do not check twice.
AUTH_SCOPE_KEY = "iceward.auth"

#: ``authenticate(scope, auth)``: the key's name, or an HTTPException (401/403) raised.
Authenticate = Callable[[Scope, Auth], Awaitable[str]]
#: ``on_error(exc)``: a (status, detail) answer for an exception, or None to let it propagate.
ErrorAnswer = Callable[[Exception], tuple[int, str] | None]


def rule_for(path: str) -> BodyRule:
    return next(r for r in BODY_RULES if r.matches(path))


class BodyTooLarge(HTTPException):
    def __init__(self, rule: BodyRule) -> None:
        super().__init__(
            413,
            f"request body larger than the {rule.max_body}-byte limit of {rule.path}",
            headers={"Connection": "close"},
        )
        self.limit = rule.max_body


class RequestGuard:
    """ASGI middleware: body limits and keys before the body (see the module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticate: Authenticate,
        refused: Counter,
        on_error: ErrorAnswer,
        client_address: ClientAddress,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.client_address = client_address
        self.refused = refused
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scheme = self.client_address.forwarded_scheme(scope)
        if scheme is not None:
            scope["scheme"] = scheme
        rule = rule_for(scope["path"])
        length: int | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length" and value.strip().isdigit():
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        pending = chunked or bool(length)
        if length is not None and length > rule.max_body:
            self.refused.labels("body_too_large").inc()
            exc = BodyTooLarge(rule)
            await _answer(send, 413, str(exc.detail), close=pending, limit=rule.max_body)
            return
        if rule.auth != "none" and scope["method"] != "OPTIONS":
            try:
                name = await self.authenticate(scope, rule.auth)
            except HTTPException as exc:
                reason = "forbidden" if exc.status_code == 403 else "unauthorized"
                self.refused.labels(reason).inc()
                await _answer(send, exc.status_code, str(exc.detail), close=pending)
                return
            except Exception as exc:
                answer = self.on_error(exc)
                if answer is None:
                    raise
                await _answer(send, *answer, close=pending)
                return
            scope[AUTH_SCOPE_KEY] = (rule.auth, name)

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > rule.max_body:
                    self.refused.labels("body_too_large").inc()
                    raise BodyTooLarge(rule)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge as exc:  # not turned into a response inside: answer here
            if started:
                raise
            await _answer(send, 413, str(exc.detail), close=True, limit=exc.limit)


async def _answer(
    send: Send, status: int, detail: str, *, close: bool, limit: int | None = None
) -> None:
    doc: dict[str, object] = {"detail": detail}
    if limit is not None:
        doc["limit"] = limit
    body = json.dumps(doc).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the body still on its way is not read: end the connection after the answer
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
