"""The pure-Python forwarding loops driven in-process: one loop per direction, over the parent
socket (listener, relay) and over links, and the one peer -> client framing for every kind of
client (a link, an address on the listener, a stream) and for bytes the native path hands over.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from iceward.net.relay import PeerEntry, UdpRelayAllocator
from iceward.net.udp import ClientEntry, UdpListener
from iceward.stun.constants import FAMILY_IPV4
from iceward.turn.allocation import Address, TrafficCounters

HOST = "127.0.0.1"
RELAY_PORTS = (20000, 29999)  # below Linux's ephemeral range


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    s.settimeout(1.0)
    return s


def channel_data(number: int, payload: bytes) -> bytes:
    return struct.pack("!HH", number, len(payload)) + payload


class Rig:
    """A listener and a relay socket on an event loop, a client and a peer outside them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.misses: list[tuple[Any, bytes, Address]] = []
        self.listener = UdpListener.bind(HOST, 0, self.loop, self._miss)
        self.allocator = UdpRelayAllocator([HOST], RELAY_PORTS, self.loop, self._miss)
        handle, _ = self.allocator.allocate(FAMILY_IPV4)
        self.relay = self.allocator.active[handle.id]
        self.relayed = handle.relayed_address
        self.client, self.peer = udp(), udp()
        self.caddr: Address = self.client.getsockname()
        self.paddr: Address = self.peer.getsockname()
        self.counters = TrafficCounters()

    def _miss(self, source: Any, data: bytes, addr: Address) -> None:
        self.misses.append((source, data, addr))

    def pump(self, until: Callable[[], bool] = lambda: False, seconds: float = 1.0) -> None:
        async def wait() -> None:
            deadline = self.loop.time() + seconds
            while not until() and self.loop.time() < deadline:
                await asyncio.sleep(0.005)

        self.loop.run_until_complete(wait())

    def close(self) -> None:
        self.listener.close()
        self.allocator.close()
        self.client.close()
        self.peer.close()
        self.loop.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def test_peer_to_client_through_links(rig: Rig) -> None:
    client_send = rig.listener.link(rig.caddr)
    peer_send = rig.relay.link(rig.paddr)
    assert client_send is not None and peer_send is not None
    rig.relay.channels[rig.paddr] = PeerEntry(client_send, None, 0x4001, rig.counters, False)
    payloads = [bytes([i]) * (i * 37 % 1200 + 1) for i in range(20)]
    for p in payloads:
        rig.peer.sendto(p, rig.relayed)
    rig.pump(lambda: rig.counters.packets_to_client == 20)
    got = [rig.client.recvfrom(2048) for _ in payloads]
    assert got == [(channel_data(0x4001, p), rig.listener.local) for p in payloads]
    assert rig.counters.packets_to_client == 20
    assert rig.counters.bytes_to_client == sum(map(len, payloads))
    assert rig.misses == []


def test_peer_to_client_from_the_listener_address(rig: Rig) -> None:
    entry = PeerEntry(rig.listener.sock.sendto, rig.caddr, 0x4002, rig.counters, False)
    rig.relay.channels[rig.paddr] = entry
    rig.peer.sendto(b"no links", rig.relayed)
    rig.pump(lambda: rig.counters.packets_to_client == 1)
    assert rig.client.recvfrom(2048) == (channel_data(0x4002, b"no links"), rig.listener.local)
    assert rig.counters.bytes_to_client == 8


def test_peer_to_stream_client_is_padded_and_native_bytes_framed_alike(rig: Rig) -> None:
    written: list[bytes] = []
    rig.relay.channels[rig.paddr] = PeerEntry(written.extend, None, 0x4003, rig.counters, True)
    for p in (b"abc", b"abcd", b"abcde"):
        rig.peer.sendto(p, rig.relayed)
    rig.pump(lambda: len(written) == 3)
    rig.relay.deliver(b"native", rig.paddr)  # what the native engine hands back
    assert written == [
        channel_data(0x4003, b"abc") + b"\x00",
        channel_data(0x4003, b"abcd"),
        channel_data(0x4003, b"abcde") + b"\x00" * 3,
        channel_data(0x4003, b"native") + b"\x00" * 2,
    ]
    assert all(isinstance(w, bytes) for w in written)  # copies: the buffer is reused
    assert (rig.counters.packets_to_client, rig.counters.bytes_to_client) == (4, 18)


def test_peer_without_a_channel_goes_to_the_core(rig: Rig) -> None:
    rig.peer.sendto(b"to the core", rig.relayed)
    rig.pump(lambda: bool(rig.misses))
    rig.relay.deliver(b"native miss", rig.paddr)
    assert rig.misses == [
        (rig.relay.handle.id, b"to the core", rig.paddr),
        (rig.relay.handle.id, b"native miss", rig.paddr),
    ]
    # A link whose channel is gone meanwhile hands its datagrams to the core too.
    assert rig.relay.link(rig.paddr) is not None
    rig.peer.sendto(b"via the link", rig.relayed)
    rig.pump(lambda: len(rig.misses) == 3)
    assert rig.misses[2] == (rig.relay.handle.id, b"via the link", rig.paddr)


def test_one_batch_from_several_peers_is_counted_per_channel(rig: Rig) -> None:
    """Datagrams from two peers with channels and one without, read in one batch from the
    relay socket: each channel's counters get exactly its own, the core the stranger's."""
    other, stranger = udp(), udp()
    try:
        written: list[bytes] = []
        mine, theirs = TrafficCounters(), TrafficCounters()
        rig.relay.channels[rig.paddr] = PeerEntry(written.extend, None, 0x4006, mine, True)
        rig.relay.channels[other.getsockname()] = PeerEntry(
            written.extend, None, 0x4007, theirs, True
        )
        for sender, data in [
            (rig.peer, b"a1"),
            (rig.peer, b"a22"),
            (stranger, b"?"),
            (rig.peer, b"a4444"),
            (other, b"b1"),
            (rig.peer, b"a55555"),
        ]:
            sender.sendto(data, rig.relayed)
        rig.pump(lambda: len(written) == 5 and len(rig.misses) == 1)
        assert (mine.packets_to_client, mine.bytes_to_client) == (4, 16)
        assert (theirs.packets_to_client, theirs.bytes_to_client) == (1, 2)
        assert rig.misses == [(rig.relay.handle.id, b"?", stranger.getsockname())]
        assert [w[:2] for w in written] == [b"\x40\x06"] * 3 + [b"\x40\x07", b"\x40\x06"]
    finally:
        other.close()
        stranger.close()


@pytest.mark.parametrize("linked", [False, True])
def test_client_to_peer(rig: Rig, linked: bool) -> None:
    if linked:
        assert rig.listener.link(rig.caddr) is not None
        peer_send = rig.relay.link(rig.paddr)
        assert peer_send is not None
        entry = ClientEntry(peer_send, None, rig.counters)
    else:
        entry = ClientEntry(rig.relay.sock.sendto, rig.paddr, rig.counters)
    rig.listener.channels[(rig.caddr, 0x4004)] = entry
    target = rig.listener.local
    rig.client.sendto(channel_data(0x4004, b"to the peer") + b"\x00", target)  # padded: ok
    rig.client.sendto(channel_data(0x4005, b"unbound"), target)
    rig.client.sendto(b"\x40\x04\x00\x10short", target)  # length beyond the datagram
    rig.client.sendto(b"\x00\x01 stun-ish", target)
    rig.pump(lambda: len(rig.misses) == 3)
    assert rig.peer.recvfrom(2048) == (b"to the peer", rig.relayed)
    assert (rig.counters.packets_to_peer, rig.counters.bytes_to_peer) == (1, 11)
    assert rig.misses == [
        (rig.listener, channel_data(0x4005, b"unbound"), rig.caddr),
        (rig.listener, b"\x40\x04\x00\x10short", rig.caddr),
        (rig.listener, b"\x00\x01 stun-ish", rig.caddr),
    ]
