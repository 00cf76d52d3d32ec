"""HTTP-01: ``GET /.well-known/acme-challenge/{token}`` answers the key authorization the
ACME client wrote for that token (:meth:`AcmeFiles.put_http`), 404 for any other."""

from __future__ import annotations

from fastapi import APIRouter, Response

from iceward.autocert.files import AcmeFiles
from iceward.config import ServerSettings


def router_for(settings: ServerSettings) -> APIRouter | None:
    """The route when ``--acme-challenge http-01`` asks for it, else None."""
    if not settings.acme or settings.acme_challenge != "http-01":
        return None
    return challenge_router(AcmeFiles.of(settings.data_dir))


def challenge_router(files: AcmeFiles) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/.well-known/acme-challenge/{token}")
    def answer(token: str) -> Response:
        body = files.http_answer(token)
        if body is None:
            return Response(status_code=404)
        return Response(body, media_type="application/octet-stream")

    return router
