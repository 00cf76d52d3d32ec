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

from iceward.net import proxyproto, sniff
from iceward.turn.allocation import Address

#: A TLS record's header and largest body: where a ClientHello's ALPN is looked for.
_HELLO_MAX = 5 + 16384
#: Seconds between two looks at a ClientHello that has not all arrived.
_PEEK_AGAIN = 0.02


class Prelude:
    """Reads, on ``sock``, a PROXY header when ``expect_proxy`` and then, when ``peek_first``,
    peeks the first byte of the connection proper (and, with ``read_hello``, a TLS ClientHello's
    ALPN names); calls ``done(self)`` or ``failed(self,
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
        read_hello: bool = False,
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
        #: A TLS ClientHello's ALPN names, when ``read_hello`` and the first byte is TLS.
        self.alpn: list[str] | None = None
        self._read_hello = read_hello
        self._retry: asyncio.TimerHandle | None = None
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
                if self._read_hello and self.first == sniff.TLS_HANDSHAKE:
                    ahead = self.sock.recv(_HELLO_MAX, socket.MSG_PEEK)
                    self.alpn = sniff.hello_alpn(ahead)
                    if self.alpn is None:  # the rest of the record is on its way
                        self._wait_for_more()
                        return
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

    def _wait_for_more(self) -> None:
        """Peeked bytes keep the socket readable: look again a little later, not at once."""
        self._loop.remove_reader(self.sock.fileno())
        self._retry = self._loop.call_later(_PEEK_AGAIN, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if not self._finished:
            self._loop.add_reader(self.sock.fileno(), self._readable)

    def _finish(self, reason: str | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._timer.cancel()
        if self._retry is not None:
            self._retry.cancel()
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
            if self._retry is not None:
                self._retry.cancel()
            self._loop.remove_reader(self.sock.fileno())
