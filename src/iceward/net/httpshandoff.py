"""HTTPS on the TLS port with ``--workers N``: the workers relay, the supervisor serves HTTP.

A worker that reads, in a new connection's ClientHello, an ALPN asking for HTTP (what every
browser sends for ``https:``) gives the socket itself to the supervisor before any TLS byte is
consumed (SCM_RIGHTS over a Unix datagram socket, with the client's address, which may come
from a PROXY header). The supervisor makes the TLS handshake with the same certificate and hands
the connection to its HTTP server. Both halves are here: :class:`HttpsSender` in each worker,
:class:`HttpsIntake` in the supervisor.
"""

from __future__ import annotations

import array
import asyncio
import json
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from functools import partial

from iceward.net.fdlimit import Throttled
from iceward.net.tlsroute import HttpGate
from iceward.turn.allocation import Address

log = logging.getLogger("iceward.net")

#: Handshakes the supervisor runs at once for handed-over connections; beyond, closed at once.
MAX_PENDING = 1024
_MESSAGE = 512


class HttpsSender:
    """A worker's end: :meth:`send` gives a connection to the supervisor (True) or cannot."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self._failed = Throttled(log, logging.WARNING, "HTTPS connections not handed over")

    def send(self, conn: socket.socket, client: Address) -> bool:
        """The socket goes to the supervisor and is closed here, either way."""
        message = json.dumps([client[0], client[1]]).encode()
        rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [conn.fileno()]))
        try:
            self.sock.sendmsg([message], [rights], 0, self._name)
            return True
        except OSError as exc:  # the supervisor's queue is full, or it is gone
            self._failed.event(str(exc))
            return False
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


class HttpsIntake:
    """The supervisor's end: connections handed over by workers, served by ``http()``."""

    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        tls: ssl.SSLContext,
        http: Callable[[], asyncio.Protocol],
        timeout: float,
        max_per_source: int,
    ) -> None:
        """``timeout`` bounds the handshake and then the wait for the first request;
        ``max_per_source`` the connections open at once from one client IP."""
        self._loop = loop
        self.tls = tls
        self._http = http
        self._timeout = timeout
        self._max_per_source = max_per_source
        self._per_source: dict[str, int] = {}
        self._pending: set[asyncio.Task[None]] = set()
        #: Connections closed by a limit, by reason (``drop`` reasons for the metrics).
        self.counters: Counter[str] = Counter()
        self._over = Throttled(log, logging.WARNING, f"HTTPS handshakes over {MAX_PENDING}")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind(name)
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(64):
            try:
                message, fds, _, _ = socket.recv_fds(self.sock, _MESSAGE, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if len(fds) != 1:
                for fd in fds:
                    socket.socket(fileno=fd).close()
                continue
            conn = socket.socket(fileno=fds[0])
            try:
                host, port = json.loads(message)
                client = (str(host), int(port))
            except (ValueError, TypeError):
                conn.close()
                continue
            if len(self._pending) >= MAX_PENDING:
                self.counters["https_backlog"] += 1
                self._over.event(f"closed one from {client[0]}")
                conn.close()
                continue
            if self._per_source.get(client[0], 0) >= self._max_per_source:
                self.counters["connection_cap"] += 1
                conn.close()
                continue
            self._per_source[client[0]] = self._per_source.get(client[0], 0) + 1
            conn.setblocking(False)
            task = self._loop.create_task(self._serve(conn, client))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _serve(self, conn: socket.socket, client: Address) -> None:
        gate = HttpGate(self._http(), client, self._timeout, partial(self._closed, client[0]))
        try:
            await self._loop.connect_accepted_socket(
                lambda: gate, conn, ssl=self.tls, ssl_handshake_timeout=self._timeout
            )
        except Exception as exc:  # the handshake failed or timed out
            log.debug("HTTPS from %s:%s not set up: %r", *client, exc)
            conn.close()
            self.counters["tls_handshake"] += 1
            self._closed(client[0], None)

    def _closed(self, ip: str, reason: str | None) -> None:
        left = self._per_source.get(ip, 1) - 1
        if left > 0:
            self._per_source[ip] = left
        else:
            self._per_source.pop(ip, None)
        if reason is not None:
            self.counters[reason] += 1

    async def close(self) -> None:
        try:
            self._loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass
        self.sock.close()
        for task in list(self._pending):
            task.cancel()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
