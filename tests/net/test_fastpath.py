"""The native relay fast path (``iceward.net._fastpath``) driven directly, and which path runs.

The whole relay suite runs on the native path by default and again with ``ICEWARD_FASTPATH=0``
(``make test`` does both); these tests aim at the engine itself: table hits both ways with exact
counters, everything else handed back unchanged, unbind during traffic, sockets removed under
live entries, GSO batches.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from iceward.net.fastpath import LISTENER, RELAY, FastPath, load_engine
from iceward.turn.allocation import TrafficCounters
from tests.conftest import IN_CI, RunningServer

try:
    from iceward.net import _fastpath  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _fastpath = None

FORCED_PYTHON = os.environ.get("ICEWARD_FASTPATH", "1").strip().lower() in (
    "0",
    "off",
    "no",
    "false",
    "python",
)


@pytest.fixture
def engine() -> Iterator[Any]:
    if _fastpath is None:
        if IN_CI:
            pytest.fail("the native fast path did not build (gcc and Python headers are in CI)")
        pytest.skip("native fast path not built")
    eng = _fastpath.Engine()
    yield eng
    eng.close()


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(1.0)
    return s


class Rig:
    """A listener and a relay socket in the engine, a client and a peer outside it."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.listener, self.relay, self.client, self.peer = udp(), udp(), udp(), udp()
        for s in (self.listener, self.relay):
            s.setblocking(False)
        engine.add_socket(self.listener.fileno(), LISTENER)
        engine.add_socket(self.relay.fileno(), RELAY)
        self.caddr = self.client.getsockname()
        self.paddr = self.peer.getsockname()

    def bind(self, number: int = 0x4000, tokens: tuple[int, int] = (1, 2)) -> None:
        lfd, rfd = self.listener.fileno(), self.relay.fileno()
        self.engine.install_client(lfd, self.caddr, number, rfd, self.paddr, tokens[0])
        self.engine.install_peer(rfd, self.paddr, lfd, self.caddr, number, tokens[1])

    def poll(self, rounds: int = 20) -> list[tuple[int, bytes, tuple[str, int]]]:
        out: list[tuple[int, bytes, tuple[str, int]]] = []
        for _ in range(rounds):
            out += self.engine.poll(10)
        return out

    def close(self) -> None:
        for s in (self.listener, self.relay):
            self.engine.remove_socket(s.fileno())
        for s in (self.listener, self.relay, self.client, self.peer):
            s.close()


@pytest.fixture
def rig(engine: Any) -> Iterator[Rig]:
    r = Rig(engine)
    yield r
    r.close()


def channel_data(number: int, payload: bytes, length: int | None = None) -> bytes:
    return struct.pack("!HH", number, len(payload) if length is None else length) + payload


def test_hits_both_ways_with_exact_counters(rig: Rig) -> None:
    rig.bind()
    listener = rig.listener.getsockname()
    for i in range(5):
        rig.client.sendto(channel_data(0x4000, b"to-peer %d" % i + b"\x00\x01\x02"), listener)
    assert rig.poll() == []
    for i in range(5):
        data, src = rig.peer.recvfrom(2048)
        assert data == b"to-peer %d" % i + b"\x00\x01\x02"
        assert src == rig.relay.getsockname()
    for i in range(3):
        rig.peer.sendto(b"to-client %d" % i, rig.relay.getsockname())
    assert rig.poll() == []
    for i in range(3):
        data, src = rig.client.recvfrom(2048)
        assert data == channel_data(0x4000, b"to-client %d" % i)
        assert src == listener
    counts = {token: (p, b) for token, p, b in rig.engine.collect()}
    assert counts == {1: (5, 5 * 12), 2: (3, 3 * 11)}
    assert rig.engine.collect() == []  # taken once


def test_everything_else_comes_back_unchanged(rig: Rig) -> None:
    rig.bind(0x4000)
    listener = rig.listener.getsockname()
    lfd, rfd = rig.listener.fileno(), rig.relay.fileno()
    bad = [
        b"\x40",  # truncated header
        b"\x40\x00\x00",
        channel_data(0x4000, b"abc", length=200),  # length beyond the datagram
        channel_data(0x4000, b"", length=0xFFFF),
        channel_data(0x8000, b"high channel"),  # not ChannelData at all
        channel_data(0x3FFF, b"low channel"),
        channel_data(0x4001, b"unbound channel"),
        b"\x00\x01\x00\x00" + os.urandom(16),  # STUN-shaped
        b"",  # empty datagram
    ]
    for data in bad:
        rig.client.sendto(data, listener)
    misses = rig.poll()
    assert [(fd, data, addr) for fd, data, addr in misses] == [(lfd, d, rig.caddr) for d in bad]
    stranger = udp()
    stranger.sendto(b"peer without a channel", rig.relay.getsockname())
    assert rig.poll() == [(rfd, b"peer without a channel", stranger.getsockname())]
    stranger.close()
    with pytest.raises(socket.timeout):
        rig.peer.recvfrom(2048)
    assert rig.engine.collect() == []


def test_padding_after_the_payload_is_not_forwarded(rig: Rig) -> None:
    rig.bind()
    rig.client.sendto(channel_data(0x4000, b"abcde") + b"\x00\x00\x00", rig.listener.getsockname())
    assert rig.poll() == []
    assert rig.peer.recvfrom(2048)[0] == b"abcde"


def test_unbind_during_traffic_never_forwards_to_a_removed_entry(rig: Rig) -> None:
    rig.bind()
    listener, relay = rig.listener.getsockname(), rig.relay.getsockname()
    for _ in range(10):
        rig.client.sendto(channel_data(0x4000, b"x" * 50), listener)
    rig.poll()
    lfd, rfd = rig.listener.fileno(), rig.relay.fileno()
    assert rig.engine.uninstall_client(lfd, rig.caddr, 0x4000) == (10, 500)
    assert rig.engine.uninstall_peer(rfd, rig.paddr) == (0, 0)
    assert rig.engine.uninstall_peer(rfd, rig.paddr) is None
    for _ in range(10):
        rig.peer.recvfrom(2048)
    for _ in range(10):
        rig.client.sendto(channel_data(0x4000, b"y" * 50), listener)
        rig.peer.sendto(b"z" * 20, relay)
    misses = rig.poll()
    assert len(misses) == 20
    rig.peer.settimeout(0.2)
    rig.client.settimeout(0.2)
    with pytest.raises(socket.timeout):
        rig.peer.recvfrom(2048)
    with pytest.raises(socket.timeout):
        rig.client.recvfrom(2048)


def test_removing_a_socket_purges_its_entries_and_keeps_their_counts(rig: Rig) -> None:
    rig.bind()
    rig.peer.sendto(b"q" * 7, rig.relay.getsockname())
    rig.poll()
    rig.engine.remove_socket(rig.relay.fileno())
    assert rig.engine.stats()["entries"] == 0
    assert rig.engine.collect(True) == [(2, 1, 7)]
    rig.client.sendto(channel_data(0x4000, b"late"), rig.listener.getsockname())
    assert [d for _, d, _ in rig.poll()] == [channel_data(0x4000, b"late")]


def test_consecutive_datagrams_to_one_peer_leave_in_gso_sends(rig: Rig) -> None:
    rig.bind()
    listener = rig.listener.getsockname()
    payloads = [bytes([i]) * 1200 for i in range(40)]
    for p in payloads:
        rig.client.sendto(channel_data(0x4000, p), listener)
    time.sleep(0.05)
    assert rig.poll() == []
    got = [rig.peer.recvfrom(65536)[0] for _ in payloads]
    assert got == payloads
    stats = rig.engine.stats()
    if stats["gso"]:
        assert stats["gso_sends"] >= 1
    assert stats["hits"] == 40


def test_engine_rejects_bad_arguments(engine: Any) -> None:
    s = udp()
    try:
        with pytest.raises(ValueError):
            engine.install_client(
                s.fileno(), ("127.0.0.1", 1), 0x8000, s.fileno(), ("1.2.3.4", 5), 1
            )
        with pytest.raises(ValueError):
            engine.install_client(
                s.fileno(), ("not-an-ip", 1), 0x4000, s.fileno(), ("1.2.3.4", 5), 1
            )
        with pytest.raises(TypeError):
            engine.install_peer(s.fileno(), "127.0.0.1", s.fileno(), ("1.2.3.4", 5), 0x4000, 1)
        with pytest.raises(OSError):
            engine.add_socket(s.fileno(), 7)
    finally:
        s.close()


def test_switch_forces_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICEWARD_FASTPATH", "0")
    engine, why = load_engine()
    assert engine is None and why.startswith("python")


def test_server_logs_the_relay_path_it_uses(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(tls=False, http=False)
    text = server.log_text()
    if FORCED_PYTHON:
        assert "relay path: python (ICEWARD_FASTPATH=0)" in text
    elif _fastpath is not None:
        assert "relay path: native" in text
    elif IN_CI:
        pytest.fail("the native fast path did not build")
    else:
        assert "relay path: python" in text


def send_gso(sock: socket.socket, data: bytes, segment: int, to: tuple[str, int]) -> None:
    udp_segment = 103
    sock.sendmsg([data], [(socket.SOL_UDP, udp_segment, struct.pack("=H", segment))], 0, to)


def test_a_gro_buffer_is_split_into_its_datagrams(rig: Rig) -> None:
    """Same-size datagrams of one sender may arrive as one buffer (UDP_GRO): each is served, or
    handed back, on its own."""
    rig.bind()
    valid = [channel_data(0x4000, bytes([i]) * 96) for i in range(6)]
    unbound = [channel_data(0x4005, bytes([i]) * 96) for i in range(3)]
    tail = channel_data(0x4000, b"short tail")
    try:
        send_gso(rig.client, b"".join(valid + unbound) + tail, 100, rig.listener.getsockname())
    except OSError as exc:  # pragma: no cover - a kernel without UDP GSO
        pytest.skip(f"no UDP GSO here: {exc}")
    time.sleep(0.05)
    misses = rig.poll()
    assert [d for _, d, _ in misses] == unbound
    got = [rig.peer.recvfrom(65536)[0] for _ in range(7)]
    assert got == [v[4:] for v in valid] + [b"short tail"]
    peer_burst = [bytes([i]) * 500 for i in range(5)]
    send_gso(rig.peer, b"".join(peer_burst), 500, rig.relay.getsockname())
    time.sleep(0.05)
    assert rig.poll() == []
    assert [rig.client.recvfrom(65536)[0] for _ in range(5)] == [
        channel_data(0x4000, p) for p in peer_burst
    ]
    counts = {token: (p, b) for token, p, b in rig.engine.collect()}
    assert counts == {1: (7, 6 * 96 + 10), 2: (5, 2500)}


def test_server_never_relays_after_deallocation_during_traffic(
    make_server: Callable[..., RunningServer],
) -> None:
    """On either path: data in flight while the allocation ends is relayed or dropped, and
    nothing sent after the Refresh(0) answer reaches the peer; the log's counts are exact."""
    from tests.net.turnclient import BlockingTurnClient

    server = make_server(tls=False, http=False)
    peer = udp()
    peer.setblocking(False)
    client = BlockingTurnClient(("127.0.0.1", server.port), "alice", "wonderland")
    try:
        client.allocate()
        client.channel_bind(0x4000, peer.getsockname())
        for _ in range(300):
            client.send_channel_data(0x4000, b"A" * 64)
        client.refresh(0)
        for _ in range(300):
            client.send_channel_data(0x4000, b"B" * 64)
        time.sleep(0.3)
        got = []
        while True:
            try:
                got.append(peer.recv(2048))
            except BlockingIOError:
                break
    finally:
        client.close()
        peer.close()
    assert got and set(got) == {b"A" * 64}
    deadline = time.monotonic() + 5
    while "allocation end" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    end = [line for line in server.log_text().splitlines() if "allocation end" in line]
    counted = int(end[0].split("to_peer_packets=")[1].split()[0])
    assert len(got) <= counted <= 300  # every datagram relayed was counted (UDP may drop some)


def test_a_released_relay_takes_its_entries_and_their_counts_along(rig: Rig) -> None:
    """Unregistering a relay uninstalls its entries first (counts taken, nothing left for the
    engine to look for in its table); the listener's other entries stay."""
    loop = asyncio.new_event_loop()
    try:
        fast = FastPath(rig.engine, loop, lambda: None)
        lfd, rfd = rig.listener.fileno(), rig.relay.fileno()
        fast._handlers[lfd] = fast._handlers[rfd] = lambda data, addr: None
        counters, other = TrafficCounters(), TrafficCounters()
        fast.install(lfd, rig.caddr, 0x4000, rfd, rig.paddr, counters)
        fast.install(lfd, rig.caddr, 0x4001, lfd, ("127.0.0.1", 9), other)  # not via the relay
        for _ in range(4):
            rig.client.sendto(channel_data(0x4000, b"abc"), rig.listener.getsockname())
        assert rig.poll() == []
        for _ in range(4):
            rig.peer.recvfrom(2048)
        fast.unregister(rfd)
        assert (counters.packets_to_peer, counters.bytes_to_peer) == (4, 12)
        assert rig.engine.stats()["entries"] == 2  # the other channel's two entries
        fast.uninstall(lfd, rig.caddr, 0x4000)  # the core's ChannelRemoved, later: a no-op
        assert counters.packets_to_peer == 4
    finally:
        loop.close()
