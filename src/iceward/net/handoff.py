"""EVEN-PORT reservations across workers: the reserved socket moves to the worker that needs it.

A client may ask for an even port and a reservation of the next one (RFC 8656 EVEN-PORT, R bit),
then claim that reservation with the RESERVATION-TOKEN from *another* socket: that client
address may be steered to another worker than the one that holds the reserved port. Tokens start
with the index of the worker that made them. When an Allocate carrying another worker's token
arrives, this worker holds the request back, asks the owner over a Unix datagram socket, receives
the reserved socket itself (SCM_RIGHTS), adopts it, and only then hands the request to the core,
which allocates from it as if it had made the reservation. The owner answering "no such token",
or not answering within a second, lets the core answer 508 as it would for any unknown token.
"""

from __future__ import annotations

import array
import asyncio
import logging
import socket
from collections.abc import Callable

from iceward.net.relay import UdpRelayAllocator
from iceward.net.workerchannel import WorkerChannel
from iceward.turn.allocation import FiveTuple
from iceward.turn.server import claimed_reservation

log = logging.getLogger("iceward.server")

TIMEOUT = 1.0
#: Requests held back at once, and retransmissions kept per token.
MAX_WAITING = 256
MAX_PER_TOKEN = 8

_ASK, _HERE, _NONE = b"T", b"R", b"N"


class ReservationHandoff(WorkerChannel):
    """One worker's end: asks other workers for reservations, and gives its own away."""

    def __init__(
        self,
        base_name: str,
        index: int,
        count: int,
        allocator: UdpRelayAllocator,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[bytes, FiveTuple], None],
    ) -> None:
        """``base_name`` + index is each worker's abstract Unix socket name; ``deliver`` hands a
        held-back request to the core."""
        self._allocator = allocator
        self._deliver = deliver
        self._waiting: dict[bytes, list[tuple[bytes, FiveTuple]]] = {}
        self._timers: dict[bytes, asyncio.TimerHandle] = {}
        super().__init__(base_name, "", index, count, loop)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._waiting.clear()
        super().close()

    def hold(self, data: bytes, five_tuple: FiveTuple) -> bool:
        """True when ``data`` is an Allocate claiming another worker's reservation: it will be
        delivered once the reserved socket is here (or the owner said no)."""
        token = claimed_reservation(data)
        if token is None:
            return False
        owner = token[0]
        if owner == self.index or owner >= self._count or self._allocator.has_reservation(token):
            return False
        waiting = self._waiting.get(token)
        if waiting is not None:  # a retransmission while we ask
            if len(waiting) < MAX_PER_TOKEN:
                waiting.append((data, five_tuple))
            return True
        if len(self._waiting) >= MAX_WAITING:
            return False
        self._waiting[token] = [(data, five_tuple)]
        try:
            self.sock.sendto(_ASK + token, self._name(owner))
        except OSError as exc:
            log.warning("cannot ask worker %d for a reservation: %s", owner, exc)
            self._loop.call_soon(self._finish, token)
            return True
        self._timers[token] = self._loop.call_later(TIMEOUT, self._finish, token)
        return True

    def _on_message(self, message: bytes, fds: list[int], sender: str | bytes) -> None:
        kind, token = message[:1], message[1:9]
        if kind == _ASK and len(token) == 8 and not fds:
            self._give(token, sender)
        elif kind == _HERE and len(fds) == 1 and len(message) == 10:
            sock = socket.socket(fileno=fds[0])
            if token in self._waiting:
                self._allocator.adopt(token, sock, message[9])
            else:
                sock.close()  # we gave up waiting: the port is free again
            self._finish(token)
        else:
            for fd in fds:
                socket.socket(fileno=fd).close()
            if kind == _NONE:
                self._finish(token)

    def _give(self, token: bytes, asker: str | bytes) -> None:
        reserved = self._allocator.give_away(token)
        try:
            if reserved is None:
                self.sock.sendto(_NONE + token, asker)
                return
            sock, family = reserved
            rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))
            # (socket.send_fds would drop the address.)
            self.sock.sendmsg([_HERE + token + bytes([family])], [rights], 0, asker)
        except OSError as exc:
            log.warning("cannot hand a reservation over: %s", exc)
        finally:
            if reserved is not None:
                reserved[0].close()

    def _finish(self, token: bytes) -> None:
        timer = self._timers.pop(token, None)
        if timer is not None:
            timer.cancel()
        for data, five_tuple in self._waiting.pop(token, []):
            self._deliver(data, five_tuple)
