"""A TLS connection on the shared port handed to TURN or to HTTP once it is known which.

The router is the TLS transport's first protocol. ALPN decides at the end of the handshake;
without it the first decrypted bytes do (see :mod:`iceward.net.sniff`). Then the transport is
given to the chosen protocol (``set_protocol``, ``connection_made``, the bytes read so far) and
the router steps aside. Until then the TURN side already holds the connection, so the owner's
sweep closes one that says nothing within the connection timeout, as for any stream. HTTP gets
the connection through an :class:`HttpGate`, which keeps those bounds for it: the first request
within the connection timeout, and the connection counted against its source until it closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from iceward.net import sniff
from iceward.net.stream import StreamConnection

log = logging.getLogger("iceward.net")

#: Given the TURN connection being left, the HTTP side to serve it with (None: no HTTP here).
HttpHandoff = Callable[[StreamConnection], "HttpGate | None"]


class TlsRouter(asyncio.Protocol):
    def __init__(self, turn: StreamConnection, to_http: HttpHandoff) -> None:
        self.turn = turn
        self._to_http = to_http
        self._transport: Any = None
        self._buf = b""
        self._routed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self.turn.connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        route = sniff.route_alpn(alpn)
        if route is not None:
            self._route(route)

    def data_received(self, data: bytes) -> None:
        if self._routed:  # bytes that came in the same read as the deciding ones
            self._transport.get_protocol().data_received(data)
            return
        self._buf += data
        route = sniff.route_bytes(self._buf)
        if route is not None:
            self._route(route)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.turn.connection_lost(exc)

    def _route(self, route: sniff.Route) -> None:
        self._routed = True
        transport, data, self._buf = self._transport, self._buf, b""
        if route == "turn":
            transport.set_protocol(self.turn)
            if data:
                self.turn.data_received(data)
            return
        http = self._to_http(self.turn)
        if http is None:
            self.turn.refused = "no_http"
            transport.set_protocol(self.turn)
            self.turn.abort("HTTP asked for where no HTTP API is served")
            return
        hand_to_http(transport, http, data)


def hand_to_http(transport: Any, gate: HttpGate, data: bytes = b"") -> None:
    """Give ``transport`` to HTTP through ``gate``, with the bytes already read."""
    transport.set_protocol(gate)
    gate.connection_made(transport)
    if data:
        gate.data_received(data)


class HttpGate(asyncio.Protocol):
    """Between a TLS transport and the HTTP server's protocol for one connection.

    The HTTP server sees ``client`` as the peer (when a PROXY header named one); a connection
    that sends nothing within ``timeout`` is closed (the HTTP server would wait for its first
    request for ever); ``closed(reason)`` is called once at the end (``connection_timeout`` or
    None), so the owner counts the connection against its source for as long as it is open.
    """

    def __init__(
        self,
        http: asyncio.Protocol,
        client: tuple[str, int],
        timeout: float,
        closed: Callable[[str | None], None],
        tls: Any = None,
    ) -> None:
        """``tls``: the SSL context to report when the transport itself has none (bytes that
        were decrypted elsewhere), so the HTTP server knows its scheme is https."""
        self._http = http
        self._client = client
        self._tls = tls
        self._timeout = timeout
        self._closed = closed
        self._transport: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._reason: str | None = None
        self._ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)
        peer = transport.get_extra_info("peername")
        shown: Any = transport
        if self._tls is not None or (
            self._client[0] and (not peer or tuple(peer[:2]) != self._client)
        ):
            shown = ClientTransport(transport, self._client, self._tls)
        self._http.connection_made(shown)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._http.data_received(data)

    def eof_received(self) -> bool | None:
        return self._http.eof_received()

    def pause_writing(self) -> None:
        self._http.pause_writing()

    def resume_writing(self) -> None:
        self._http.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._http.connection_lost(exc)
        if not self._ended:
            self._ended = True
            self._closed(self._reason)

    def _expire(self) -> None:
        self._timer = None
        self._reason = "connection_timeout"
        self._transport.abort()


class ClientTransport:
    """A transport that names ``client`` as its peer (the one a PROXY header gave) and hides its
    socket, so an HTTP server that asks either sees the client, not the load balancer; all else
    is the transport's own."""

    def __init__(self, transport: Any, client: tuple[str, int], tls: Any = None) -> None:
        self._transport = transport
        self._client = client
        self._tls = tls

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._client
        if name == "socket":
            return default
        if name == "sslcontext" and self._tls is not None:
            return self._tls
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
