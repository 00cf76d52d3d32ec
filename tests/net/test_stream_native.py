"""A plain TCP client's stream served by the native engine gives what the Python framing gives.

One real loopback TCP connection per case, read by asyncio into a real
:class:`~iceward.net.stream.StreamConnection`; the chunks are handed to its ``data_received`` as
asyncio would hand them, cut at every byte and at random places. The same stream goes once
through the Python framing (the connection's own channel table) and once through the engine
(:class:`~iceward.net.nativestream.NativeStream`): the datagrams at the peer, the messages left
for the core, the counters and whether the connection was closed must be the same. Peer
datagrams come back framed and padded on the socket, in order, also while the stream is held
for Python's transport.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from typing import Any

from iceward.net.fastpath import RELAY, FastPath
from iceward.net.nativestream import NativeStream
from iceward.net.stream import StreamConnection
from iceward.net.udp import ClientEntry
from iceward.turn.allocation import TrafficCounters
from tests.net.test_fastpath import engine  # noqa: F401  (the fixture)

CHANNEL = 0x4001


def frame(number: int, payload: bytes, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack("!HH", number, size) + payload + b"\x00" * (-len(payload) & 3)


def stun(body: int) -> bytes:
    return struct.pack("!HHI", 0x0001, body, 0x2112A442) + bytes(range(12)) + b"\x07" * body


def sample_stream(tail: bytes) -> bytes:
    """Frames of the installed channel (sizes around the padding), a STUN message and a frame of
    a channel that is not installed between them, then ``tail``."""
    parts = [frame(CHANNEL, bytes([n & 0xFF]) * n) for n in (0, 1, 2, 3, 4, 5, 7, 100, 1200)]
    parts.insert(3, stun(8))
    parts.insert(6, frame(CHANNEL + 1, b"not installed"))
    return b"".join(parts) + tail


def sockets(client_buffer: int = 0) -> tuple[socket.socket, ...]:
    """A loopback TCP connection (the client's end, the server's accepted end), a non-blocking
    UDP relay socket and a UDP peer; ``client_buffer``: the client's receive buffer, if set."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    if client_buffer:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_buffer)
    client.connect(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    relay, peer = socket.socket(type=socket.SOCK_DGRAM), socket.socket(type=socket.SOCK_DGRAM)
    relay.bind(("127.0.0.1", 0))
    peer.bind(("127.0.0.1", 0))
    relay.setblocking(False)
    return client, accepted, relay, peer


async def relay_stream(eng: Any, chunks: list[bytes], native: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    client, accepted, relay, peer = sockets()
    messages: list[bytes] = []
    conn = StreamConnection(
        "tcp", lambda _, data: messages.append(data), lambda _: None, lambda _: None
    )
    transport, _ = await loop.connect_accepted_socket(lambda: conn, accepted)
    counters = TrafficCounters()
    fast = None
    assert conn.five_tuple is not None
    if native:
        fast = FastPath(type(eng)(), loop, lambda: None)  # a new engine: closed with fast
        fast.register(relay.fileno(), RELAY, lambda data, addr: None)
        conn.native = NativeStream(fast, transport, conn.writelines, conn.five_tuple.client)
        fast.install(
            conn.native.fd,
            conn.five_tuple.client,
            CHANNEL,
            relay.fileno(),
            peer.getsockname(),
            counters,
        )
    else:
        conn.channels[CHANNEL] = ClientEntry(relay.sendto, peer.getsockname(), counters)
    for chunk in chunks:
        if transport.is_closing():
            break
        conn.data_received(chunk)
    if fast is not None:
        fast.sync()
    datagrams = []
    peer.settimeout(1.0)
    while True:  # the nine the stream holds, then whatever else came (nothing should)
        try:
            datagrams.append(peer.recv(2048))
        except TimeoutError:
            break
        if len(datagrams) == 9:
            peer.settimeout(0.01)
    result = {
        "datagrams": datagrams,
        "messages": messages,
        "to_peer": (counters.packets_to_peer, counters.bytes_to_peer),
        "closed": transport.is_closing(),
    }
    transport.close()
    await asyncio.sleep(0)
    if fast is not None:
        fast.unregister(relay.fileno())
        fast.close()
    for s in (client, relay, peer):
        s.close()
    return result


def cuts(data: bytes, rng: random.Random | None) -> list[bytes]:
    """Every byte apart (no rng), or random pieces."""
    if rng is None:
        return [data[i : i + 1] for i in range(len(data))]
    out, at = [], 0
    while at < len(data):
        n = rng.choice((1, 2, 3, 5, rng.randrange(1, 1500)))
        out.append(data[at : at + n])
        at += n
    return out


def test_a_stream_cut_anywhere_relays_as_the_python_framing_does(engine: Any) -> None:  # noqa: F811
    tails = (
        b"",
        bytes([0x40]),  # cut inside a header
        struct.pack("!HH", CHANNEL, 0xFFFF) + b"lies",  # a length more than ever comes
        b"\x80garbage after",  # neither STUN nor ChannelData: the connection closes
    )
    rng = random.Random(19)
    for tail in tails:
        data = sample_stream(tail)
        for split in (None, rng, rng):
            chunks = cuts(data, split)
            python = asyncio.run(relay_stream(None, chunks, native=False))
            native = asyncio.run(relay_stream(engine, chunks, native=True))
            assert native == python, (tail, split is None)
            assert len(python["datagrams"]) == 9
            assert python["messages"][0] == stun(8)
            assert python["closed"] == tail.startswith(b"\x80")


async def peer_to_client(eng: Any, sizes: list[int], held: bool) -> tuple[bytes, int]:
    loop = asyncio.get_running_loop()
    client, accepted, relay, peer = sockets()
    conn = StreamConnection("tcp", lambda *_: None, lambda _: None, lambda _: None)
    transport, _ = await loop.connect_accepted_socket(lambda: conn, accepted)
    assert conn.five_tuple is not None
    fast = FastPath(type(eng)(), loop, lambda: None)
    fast.register(relay.fileno(), RELAY, lambda data, addr: None)
    native = conn.native = NativeStream(fast, transport, conn.writelines, conn.five_tuple.client)
    counters = TrafficCounters()
    fast.install(
        native.fd, conn.five_tuple.client, CHANNEL, relay.fileno(), peer.getsockname(), counters
    )
    if held:  # as when the transport has a backlog: every frame goes through it
        fast.hold_stream(native.fd, True)
    expected = b""
    for i, size in enumerate(sizes):
        payload = bytes([i & 0xFF]) * size
        peer.sendto(payload, relay.getsockname())
        expected += frame(CHANNEL, payload)
        await asyncio.sleep(0.005)
    client.settimeout(2)
    got = b""
    while len(got) < len(expected):
        got += await loop.run_in_executor(None, client.recv, 65536)
    fast.sync()
    stats = fast.stats()
    transport.close()
    await asyncio.sleep(0)
    fast.unregister(relay.fileno())
    fast.close()
    for s in (client, relay, peer):
        s.close()
    assert got == expected
    assert (counters.packets_to_client, counters.bytes_to_client) == (len(sizes), sum(sizes))
    return got, stats["send_calls"]


def test_peer_datagrams_are_framed_onto_the_stream_in_order(engine: Any) -> None:  # noqa: F811
    sizes = [0, 1, 2, 3, 4, 5, 99, 1200, 1472, 7]
    _, direct_sends = asyncio.run(peer_to_client(engine, sizes, held=False))
    assert direct_sends == len(sizes)  # each written by the engine
    _, held_sends = asyncio.run(peer_to_client(engine, sizes, held=True))
    # The first through the transport, which had nothing waiting: released, the rest direct.
    assert held_sends == len(sizes) - 1


def data_indication(payload: bytes) -> bytes:
    """What the relay's Python handler writes here: a STUN message carrying ``payload``."""
    body = payload + b"\x00" * (-len(payload) & 3)
    return struct.pack("!HHI", 0x0017, len(body), 0x2112A442) + bytes(12) + body


def parse_client_stream(data: bytes) -> list[tuple[str, bytes]]:
    """Split what the client read into ChannelData frames and STUN messages; a byte that starts
    neither (framing broken) fails."""
    messages, pos = [], 0
    while pos < len(data):
        assert len(data) - pos >= 4, f"a cut-off message at {pos}"
        first = data[pos]
        if 0x40 <= first <= 0x7F:
            number, size = struct.unpack_from("!HH", data, pos)
            assert number == CHANNEL, f"channel {number:#x} at {pos}: framing broken"
            messages.append(("channel", data[pos + 4 : pos + 4 + size]))
            pos += 4 + size + (-size & 3)
        else:
            kind, size = struct.unpack_from("!HH", data, pos)
            assert kind == 0x0017, f"{kind:#06x} at {pos}: framing broken"
            body = data[pos + 20 : pos + 20 + size]
            messages.append(("stun", body.rstrip(b"\x00")))  # the payload's bytes are never 0
            pos += 20 + size
    assert pos == len(data), "a cut-off message at the end"
    return messages


async def mixed_flood(eng: Any, rounds: int) -> list[tuple[str, bytes]]:
    """A client that reads slowly through small buffers, so the engine's writes are often cut
    short, gets frames from the engine and messages from Python's relay handler in the same
    polls."""
    loop = asyncio.get_running_loop()
    client, accepted, relay, native_peer = sockets(client_buffer=4096)
    accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    relay.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    python_peer = socket.socket(type=socket.SOCK_DGRAM)
    python_peer.bind(("127.0.0.1", 0))
    conn = StreamConnection("tcp", lambda *_: None, lambda _: None, lambda _: None)
    transport, _ = await loop.connect_accepted_socket(lambda: conn, accepted)
    assert conn.five_tuple is not None
    fast = FastPath(type(eng)(), loop, lambda: None)
    fast.register(relay.fileno(), RELAY, lambda data, _: conn.write(data_indication(data)))
    native = conn.native = NativeStream(fast, transport, conn.writelines, conn.five_tuple.client)
    fast.install(
        native.fd,
        conn.five_tuple.client,
        CHANNEL,
        relay.fileno(),
        native_peer.getsockname(),
        TrafficCounters(),
    )
    received = bytearray()
    done = False

    def read_slowly() -> None:
        client.settimeout(0.5)
        while True:
            try:
                chunk = client.recv(4096)
            except TimeoutError:
                if done:
                    return
                continue
            if not chunk:
                return
            received.extend(chunk)

    reader = loop.run_in_executor(None, read_slowly)
    for i in range(rounds):
        for peer, mark in ((native_peer, 0xA0), (python_peer, 0xB0)):
            peer.sendto(bytes([mark | i % 16]) * (301 + i % 200), relay.getsockname())
        if i % 32 == 31:
            await asyncio.sleep(0.005)
    while transport.get_write_buffer_size():  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    done = True
    await reader
    transport.close()
    await asyncio.sleep(0)
    fast.unregister(relay.fileno())
    fast.close()
    for s in (client, relay, native_peer, python_peer):
        s.close()
    return parse_client_stream(bytes(received))


def test_engine_frames_and_python_messages_interleave_without_breaking_the_framing(
    engine: Any,  # noqa: F811
) -> None:
    """A frame the socket took only part of is finished before Python's handler for another
    datagram of the same poll writes to the connection."""
    messages = asyncio.run(mixed_flood(engine, 1500))
    kinds = {kind for kind, _ in messages}
    assert kinds == {"channel", "stun"}
    for kind, payload in messages:  # each whole: one repeated byte, from the right path
        assert len(set(payload)) == 1 and payload[0] >> 4 == (0xA if kind == "channel" else 0xB)
