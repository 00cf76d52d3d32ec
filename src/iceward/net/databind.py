"""RFC 6062 ConnectionBind across workers: a data connection reaches the worker holding its peer.

With ``--workers N`` a client's data connection is steered by its own source port, so it may land
on a worker other than the one whose allocation holds the peer connection. CONNECTION-IDs say
their owner (``id % N``, see :class:`iceward.turn.tcprelay.PeerConnections`). A worker that reads
a ConnectionBind for another worker's id makes a Unix stream socket pair, sends one end and the
request (with the client's five-tuple) to the owner over an abstract Unix datagram socket
(SCM_RIGHTS), and from then on splices the client's connection (TCP, or TLS decrypted here) with
its end of the pair. The owner serves its end as a client connection of that five-tuple: the
request is authenticated and answered there (a 438 retried by the client comes down the same
pipe), then bound and spliced with the peer. An owner that cannot be reached leaves the request
to the local core, which answers 400 for an id it does not know.
"""

from __future__ import annotations

import array
import asyncio
import json
import logging
import socket
from collections.abc import Callable

from iceward.net.stream import StreamConnection
from iceward.net.tcprelay import Side
from iceward.net.workerchannel import WorkerChannel
from iceward.turn.allocation import FiveTuple, TrafficCounters
from iceward.turn.tcprelay import bound_connection_id

log = logging.getLogger("iceward.server")

#: Takes a pipe end from another worker: (socket, the client's five-tuple, its first request).
Adopt = Callable[[socket.socket, FiveTuple, bytes], None]


class PipedStream(StreamConnection):
    """A client connection that reaches this worker through another worker's pipe: STUN framed
    as any stream, under the client's own five-tuple."""

    def __init__(
        self,
        five_tuple: FiveTuple,
        on_message: Callable[[StreamConnection, bytes], None],
        on_open: Callable[[StreamConnection], None],
        on_close: Callable[[StreamConnection], None],
    ) -> None:
        super().__init__(five_tuple.transport, on_message, on_open, on_close, five_tuple.client)
        self._piped = five_tuple

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.five_tuple = self._piped
        self._on_open(self)


class DataBindHandoff(WorkerChannel):
    """One worker's end: sends data connections to their owners, adopts the ones sent here."""

    MAX_MESSAGE = 65536 + 512

    def __init__(
        self, base_name: str, index: int, count: int, loop: asyncio.AbstractEventLoop, adopt: Adopt
    ) -> None:
        self._adopt = adopt
        super().__init__(base_name, "bind", index, count, loop)

    def owner(self, data: bytes) -> int | None:
        """The other worker a ConnectionBind in ``data`` belongs to, else None."""
        connection_id = bound_connection_id(data)
        if connection_id is None or connection_id % self._count == self.index:
            return None
        return connection_id % self._count

    def send(self, owner: int, data: bytes, five_tuple: FiveTuple) -> socket.socket | None:
        """Send the owner one end of a new pipe with the request; the other end, or None."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        header = json.dumps([five_tuple.transport, *five_tuple.client, *five_tuple.server]).encode()
        rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))
        try:
            self.sock.sendmsg([header, b"\n", data], [rights], 0, self._name(owner))
        except OSError as exc:
            log.warning("cannot hand a data connection to worker %d: %s", owner, exc)
            ours.close()
            return None
        finally:
            theirs.close()
        ours.setblocking(False)
        return ours

    def _on_message(self, message: bytes, fds: list[int], sender: str | bytes) -> None:
        socks = [socket.socket(fileno=fd) for fd in fds]
        header, _, data = message.partition(b"\n")
        try:
            kind, cip, cport, sip, sport = json.loads(header)
            five_tuple = FiveTuple(str(kind), (str(cip), int(cport)), (str(sip), int(sport)))
        except (ValueError, TypeError):
            five_tuple = None
        if five_tuple is None or len(socks) != 1:
            for sock in socks:
                sock.close()
            return
        socks[0].setblocking(False)
        self._adopt(socks[0], five_tuple, data)


def splice_to_pipe(
    loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, pipe: socket.socket
) -> Callable[[bytes], None]:
    """Relay ``transport`` (a client's connection) and ``pipe`` both ways; what the client sent
    after the handed request goes through the returned callable. Counted by the owner."""
    counters = TrafficCounters()  # the owner counts the allocation's bytes

    def lost(_side: Side) -> None:
        client.close()
        far.close()

    client = Side(counters, True, lost)
    far = Side(counters, False, lost)
    transport.set_protocol(client)
    client.transport = transport
    client.other, far.other = far, client

    async def connect() -> None:
        try:
            await loop.connect_accepted_socket(lambda: far, pipe)
        except OSError:
            pipe.close()
            client.close()

    loop.create_task(connect())
    return client.data_received
