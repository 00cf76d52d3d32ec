"""The HTTP side of a server: the API's routes and the test page's, side by side, served by an
embedded uvicorn on the server's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from iceward.api.app import create_app
from iceward.api.control import ServerControl
from iceward.autocert.http01 import router_for
from iceward.config import ServerSettings
from iceward.fleet.issuer import FleetIssuer
from iceward.server.plan import node_id_of
from iceward.store import Store
from iceward.telemetry.routes import create_router as telemetry_router
from iceward.testpage.routes import create_router as testpage_router

log = logging.getLogger("iceward.server")


def build_app(
    control: ServerControl,
    store: Store,
    settings: ServerSettings,
    fleet: FleetIssuer | None = None,
) -> FastAPI:
    app = create_app(
        control,
        store,
        cors_origins=settings.cors_origin,
        admin_networks=settings.admin_allow,
        rate=settings.api_rate,
        burst=settings.api_burst,
        default_ttl=settings.credential_ttl,
        trusted_proxies=settings.trusted_proxy,
        fleet=fleet,
        region_prices=settings.region_prices,
    )
    acme = router_for(settings)
    if acme is not None:
        app.include_router(acme)
    app.include_router(
        testpage_router(
            control,
            store,
            admin=app.state.admin_key,
            client_address=app.state.client_address,
        )
    )
    app.include_router(
        telemetry_router(
            store,
            key=app.state.telemetry_key,
            metrics=app.state.metrics,
            admin=app.state.admin_key,
            client_address=app.state.client_address,
            node=node_id_of(settings),
        )
    )
    return app


class HttpServer:
    """The HTTP API of one server, bound before anything else could take its port."""

    def __init__(self, bind: tuple[str, int], text: str) -> None:
        """``text`` is the setting as the user wrote it, for error messages."""
        self.bind = bind
        self.text = text
        self.address: tuple[str, int] | None = None
        self._server: _EmbeddedUvicorn | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, app: FastAPI) -> None:
        host, port = self.bind
        # Bind here so a busy port is an OSError for the caller, not uvicorn's sys.exit.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(f"HTTP API cannot listen on {self.text}: {exc.strerror}") from None
        # proxy_headers off: uvicorn would believe X-Forwarded-For from any loopback peer; the
        # API decides who the client is itself (iceward.api.client, --trusted-proxy).
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            log_config=None,  # its records go through the process's handler (text or json)
            access_log=False,
            lifespan="off",
            proxy_headers=False,
        )
        server = self._server = _EmbeddedUvicorn(config)
        self._task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._task.done():
                self._task.result()
                raise OSError(f"HTTP API could not listen on {self.text}")
            await asyncio.sleep(0.01)
        bound: Any = server.servers[0].sockets[0]
        self.address = bound.getsockname()[:2]
        log.info("HTTP API on http://%s:%d", host, self.address[1])

    def protocol(self) -> asyncio.Protocol:
        """A fresh HTTP/1.1 protocol of this server for one connection accepted elsewhere (HTTPS
        on the TLS port): the same app, limits and shutdown as the connections it accepts."""
        server = self._server
        assert server is not None and server.started, "the HTTP server is not started"
        config = server.config
        protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=server.server_state, app_state=server.lifespan.state
        )
        return protocol

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if self._task is not None:
                await self._task


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside the server's own loop: the process's signal handling stays ours."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
