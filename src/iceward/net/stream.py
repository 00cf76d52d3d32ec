"""TCP and TLS client connections: frame STUN and ChannelData messages out of the byte stream.

RFC 8656 section 12.5: over streams a ChannelData message is padded to a multiple of four bytes;
STUN messages carry their own length. Anything else on the stream is a protocol error and closes
the connection. A client that stops reading gets relayed data dropped, not buffered without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from iceward.net.udp import ClientEntry
from iceward.turn.allocation import FiveTuple

log = logging.getLogger("iceward.net")

#: Relayed data to a client whose socket buffer already holds this much is dropped.
MAX_WRITE_BACKLOG = 1 << 20
#: Buffered bytes allowed while waiting for the rest of one message (max message + header).
MAX_FRAME = 4 + 65535 + 3


class StreamConnection(asyncio.Protocol):
    """One client connection over TCP or TLS."""

    def __init__(
        self,
        kind: str,
        on_message: Callable[[StreamConnection, bytes], None],
        on_open: Callable[[StreamConnection], None],
        on_close: Callable[[StreamConnection], None],
    ) -> None:
        self.kind = kind
        self.five_tuple: FiveTuple | None = None
        self.channels: dict[int, ClientEntry] = {}
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._on_message = on_message
        self._on_open = on_open
        self._on_close = on_close
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # TLS transports are not subclasses
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.five_tuple = FiveTuple(self.kind, (peer[0], peer[1]), (local[0], local[1]))
        self._on_open(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed:
            self._closed = True
            self._on_close(self)

    def write(self, data: Any) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_WRITE_BACKLOG:
            return
        transport.write(data)

    def abort(self, why: str) -> None:
        log.info("closing %s: %s", self.five_tuple, why)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        size = len(buf)
        channels = self.channels
        while size - pos >= 4:
            first = buf[pos]
            if 0x40 <= first <= 0x7F:
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                total = 4 + length + (-length & 3)
                if size - pos < total:
                    break
                entry = channels.get((first << 8) | buf[pos + 1])
                if entry is not None:
                    counters = entry.counters
                    counters.packets_to_peer += 1
                    counters.bytes_to_peer += length
                    try:
                        entry.send(bytes(buf[pos + 4 : pos + 4 + length]), entry.peer)
                    except OSError:
                        pass
                else:
                    self._on_message(self, bytes(buf[pos : pos + 4 + length]))
            elif first < 0x40:
                if size - pos < 20:
                    break
                total = 20 + ((buf[pos + 2] << 8) | buf[pos + 3])
                if size - pos < total:
                    break
                self._on_message(self, bytes(buf[pos : pos + total]))
            else:
                self.abort("bytes that are neither STUN nor ChannelData")
                buf.clear()
                return
            pos += total
            if self._closed:
                return
        if pos:
            del buf[:pos]
        if len(buf) > MAX_FRAME:
            self.abort("oversized frame")
            buf.clear()
