"""The relay range fills to its last port: the pool, and the allocator on real sockets."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iceward.net.portpool import PortPool
from iceward.net.relay import UdpRelayAllocator
from iceward.stun.constants import FAMILY_IPV4
from iceward.turn.allocation import Relay
from iceward.turn.server import RelayUnavailable

HOST = "127.0.0.1"


def test_every_free_port_is_handed_out_before_none() -> None:
    pool = PortPool(100, 1099, random.Random(1))
    refused = set(range(100, 1100, 7))  # held by someone else: the kernel says no
    got = [pool.take(lambda p: None if p in refused else p) for _ in range(1000 - len(refused))]
    assert sorted(p for p in got if p is not None) == sorted(set(range(100, 1100)) - refused)
    assert pool.take(lambda p: None if p in refused else p) is None
    assert pool.held == 1000 - len(refused)


def test_a_released_port_comes_back_last() -> None:
    pool = PortPool(1, 5, random.Random(2))
    first = pool.take(lambda p: p)
    assert first is not None
    pool.release(first)
    order = [pool.take(lambda p: p) for _ in range(5)]
    assert order[-1] == first and pool.take(lambda p: p) is None


def test_a_port_bind_raises_on_is_not_lost() -> None:
    pool = PortPool(1, 3, random.Random(3))

    def fails(port: int) -> int:
        raise RelayUnavailable(508, "out of descriptors")

    with pytest.raises(RelayUnavailable):
        pool.take(fails)
    assert sorted(pool.take(lambda p: p) or 0 for _ in range(3)) == [1, 2, 3]


@given(st.lists(st.tuples(st.sampled_from(["take", "scan", "release"]), st.integers(0, 15))))
def test_queue_and_scans_never_lose_or_double_a_port(ops: list[tuple[str, int]]) -> None:
    pool = PortPool(0, 15, random.Random(4))
    held: set[int] = set()
    for op, n in ops:
        if op == "take":
            port = pool.take(lambda p: p)
            assert (port is None) == (len(held) == 16)
            if port is not None:
                assert port not in held
                held.add(port)
        elif op == "scan":
            port = next(pool.candidates(start=n), None)
            if port is not None:
                assert port not in held
                pool.hold(port)
                held.add(port)
        elif n in held:
            pool.release(n)
            held.discard(n)
    rest = [pool.take(lambda p: p) for _ in range(16 - len(held))]
    assert set(rest) == set(range(16)) - held and pool.take(lambda p: p) is None


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_the_allocator_fills_the_range_around_ports_others_hold(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """64 ports, 9 of them bound by another socket: 55 relays, then a 508; a released port is
    the next one handed out when it is the only one left."""
    others: list[socket.socket] = []
    for _ in range(20):  # a free block of 64 ports below the ephemeral range
        low = random.randrange(20000, 30000, 64)
        try:
            for port in range(low, low + 64, 7):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                others.append(s)
                s.bind((HOST, port))
            break
        except OSError:
            for s in others:
                s.close()
            others.clear()
    assert others, "no free block of relay ports"
    allocator = UdpRelayAllocator([HOST], (low, low + 63), loop, lambda *a: None)
    try:
        relays: list[Relay] = [allocator.allocate(FAMILY_IPV4)[0] for _ in range(64 - len(others))]
        ports = {r.relayed_address[1] for r in relays}
        assert ports == set(range(low, low + 64)) - {s.getsockname()[1] for s in others}
        with pytest.raises(RelayUnavailable) as full:
            allocator.allocate(FAMILY_IPV4)
        assert full.value.code == 508
        allocator.release(relays[10])
        again, _ = allocator.allocate(FAMILY_IPV4)
        assert again.relayed_address == relays[10].relayed_address
        # EVEN-PORT with a reservation finds the one free even/odd pair left.
        allocator.release(again)
        by_port = {r.relayed_address[1]: r for r in relays if r is not relays[10]}
        by_port[again.relayed_address[1]] = again
        even_port = next(p for p in sorted(by_port) if p % 2 == 0 and p + 1 in by_port)
        for p in (even_port, even_port + 1):
            if by_port[p] is not again:
                allocator.release(by_port[p])
        if again.relayed_address[1] not in (even_port, even_port + 1):
            allocator.allocate(FAMILY_IPV4)  # the one other free port, taken back
        even, token = allocator.allocate(FAMILY_IPV4, even=True, reserve_next=True)
        assert even.relayed_address[1] == even_port and token is not None
        claimed = allocator.allocate_reserved(token)
        assert claimed.relayed_address[1] == even_port + 1
    finally:
        allocator.close()
        for s in others:
            s.close()
