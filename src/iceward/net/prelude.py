"""Before a stream connection gets a transport: its PROXY header, and its first byte.

Both are read from the accepted socket itself, so nothing after them is taken from the kernel's
buffer: what follows the header (a TLS ClientHello, a STUN request) is still there for the TLS
layer or the stream protocol. The header is consumed as :func:`proxyproto.parse` proves its bytes
belong to it (so every readiness consumes something and a slow sender costs no busy loop); the
first byte after it is only peeked. The whole prelude is bounded by one timer.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from iceward.net import proxyproto
from iceward.turn.allocation import Address


class Prelude:
    """Reads, on ``sock``, a PROXY header when ``expect_proxy`` and then, when ``peek_first``,
    peeks the first byte of the connection proper; calls ``done(self)`` or ``failed(self,
    reason)`` once: ``proxy_<why>`` (:class:`proxyproto.ProxyError`'s reasons, ``timeout``,
    ``closed``) while the header is awaited, then ``timeout`` or ``closed``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        peer: Address,
        *,
        expect_proxy: bool,
        peek_first: bool,
        timeout: float,
        done: Callable[[Prelude], None],
        failed: Callable[[Prelude, str], None],
    ) -> None:
        self.sock = sock
        #: The accepted peer, then the client the PROXY header named.
        self.peer = peer
        self.client = peer
        #: The first byte after any header (when asked for).
        self.first: int | None = None
        self._loop = loop
        self._header = bytearray()
        self._expect_proxy = expect_proxy
        self._peek_first = peek_first
        self._done = done
        self._failed = failed
        self._finished = False
        self._timer = loop.call_later(timeout, self._timed_out)
        loop.add_reader(sock.fileno(), self._readable)

    def _timed_out(self) -> None:
        self._finish("proxy_timeout" if self._expect_proxy else "timeout")

    def _readable(self) -> None:
        try:
            if self._expect_proxy and not self._read_header():
                return
            if self._peek_first:
                data = self.sock.recv(1, socket.MSG_PEEK)
                if not data:
                    self._finish("closed")
                    return
                self.first = data[0]
        except (BlockingIOError, InterruptedError):
            return
        except proxyproto.ProxyError as exc:
            self._finish(f"proxy_{exc.reason}")
            return
        except OSError:
            self._finish("proxy_closed" if self._expect_proxy else "closed")
            return
        self._finish(None)

    def _read_header(self) -> bool:
        """True once the header is read; ProxyError when it cannot be one."""
        have = len(self._header)
        ahead = self.sock.recv(proxyproto.MAX_HEADER - have, socket.MSG_PEEK)
        if not ahead:
            raise OSError("closed before the PROXY header ended")
        header = proxyproto.parse(bytes(self._header) + ahead)
        if header is None:
            self._header += self.sock.recv(len(ahead))
            if len(self._header) >= proxyproto.MAX_HEADER:
                raise proxyproto.ProxyError("too_long", "PROXY header never ends")
            return False
        taken = self.sock.recv(header.length - have)
        if len(taken) != header.length - have:  # peeked bytes are there: cannot happen
            raise OSError("PROXY header bytes went missing")
        self._expect_proxy = False
        if header.source is not None:
            self.client = header.source
        return True

    def _finish(self, reason: str | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._timer.cancel()
        self._loop.remove_reader(self.sock.fileno())
        if reason is None:
            self._done(self)
        else:
            self._failed(self, reason)

    def cancel(self) -> None:
        """Stop without calling back (the listener is closing); the socket is the caller's."""
        if not self._finished:
            self._finished = True
            self._timer.cancel()
            self._loop.remove_reader(self.sock.fileno())
