"""A TCP or TLS client connection served by the native engine (:mod:`iceward.net.fastpath`).

asyncio still reads the socket: :meth:`NativeStream.input` lets the engine serve the ChannelData
frames at the front of what was read, for channels installed with this stream, and stops at the
first frame it does not serve (STUN, an unknown channel, garbage, a cut-off frame), which the
connection's own Python framing handles as before. Peer datagrams for the client are framed and
written by the engine on its own descriptor for the socket (a ``dup``, so the number cannot go to
another socket while an entry names it). Writes must stay in order: whenever Python's transport
holds bytes back (a STUN answer the socket did not take at once), the stream is held and the
engine hands every frame to :meth:`NativeStream._rest`, which writes it through the transport;
once the transport's buffer is empty again the engine writes directly.

Over TLS the engine reads what the TLS transport decrypted (the same way), and the stream stays
held: the engine frames each peer datagram and the frames of one poll for the connection come
back together, for one ``writelines`` of the transport (a record per frame, as some clients,
turnutils_uclient among them, read one message per record; one socket write for them all).
Kernel TLS, which would let the engine write the socket itself, is not used: the kernel here
has no ``tls`` module to test it against.
"""

from __future__ import annotations

import asyncio
import os
from functools import partial
from typing import Any

from iceward.net.fastpath import FastPath
from iceward.turn.allocation import Address


class NativeStream:
    """The engine's side of one TCP client connection."""

    __slots__ = ("_encrypted", "_fast", "_transport", "_write", "fd", "input")

    def __init__(
        self,
        fast: FastPath,
        transport: asyncio.BaseTransport,
        write: Any,
        client: Address,
        encrypted: bool = False,
    ) -> None:
        """``write`` is the connection's own ``writelines`` (its backlog limit applies);
        ``client`` is the key of its entries (the connection's five-tuple client);
        ``encrypted``: TLS."""
        sock = transport.get_extra_info("socket")
        self.fd = os.dup(sock.fileno())
        self._fast = fast
        self._transport = transport
        self._write = write
        self._encrypted = encrypted
        #: ``input(buffer, pos) -> pos``: serve the frames from pos on, say where it stopped.
        self.input = partial(fast.engine.stream_input, self.fd, client)
        try:
            fast.add_stream(self.fd, self._rest)
            if encrypted:  # never written by the engine: TLS is the transport's
                fast.hold_stream(self.fd, True)
        except BaseException:
            os.close(self.fd)
            raise

    @staticmethod
    def usable(transport: asyncio.BaseTransport | None) -> bool:
        """An open transport over a socket whose descriptor can be shared."""
        if transport is None or transport.is_closing():
            return False
        sock = transport.get_extra_info("socket")
        return sock is not None and sock.fileno() >= 0

    def wrote(self) -> None:
        """Python wrote to the transport: if bytes are waiting there, frames go through it."""
        if not self._encrypted and self._transport.get_write_buffer_size():  # type: ignore[attr-defined]
            self._fast.hold_stream(self.fd, True)

    def _rest(self, frames: list[bytes], _: Any) -> None:
        self._write(frames)
        if self._encrypted:
            return
        transport = self._transport
        if not transport.is_closing() and not transport.get_write_buffer_size():  # type: ignore[attr-defined]
            self._fast.hold_stream(self.fd, False)

    def close(self) -> None:
        """Entries uninstalled (counts taken), then the descriptor closed."""
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        try:
            self._fast.remove_stream(fd)
        finally:
            os.close(fd)
