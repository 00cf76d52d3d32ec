"""The reuseport steering program, the relay port slices and the shared quota memory."""

from __future__ import annotations

import os
import socket
import time

import pytest

from iceward.net import sharedquota
from iceward.net.listeners import udp_group
from iceward.net.slot import relay_slice
from iceward.net.steering import worker_for


def _receiver(group: list[socket.socket]) -> int:
    """Index of the group socket that received the one datagram sent."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        for index, sock in enumerate(group):
            try:
                sock.recvfrom(64)
                return index
            except BlockingIOError:
                pass
        time.sleep(0.001)
    raise AssertionError("no group socket received the datagram")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("workers", [2, 3])
def test_each_client_reaches_the_worker_its_address_hashes_to(host: str, workers: int) -> None:
    """The kernel runs the program; its choice matches :func:`worker_for`, spreads clients over
    every worker, and does not move when connected sockets join the group and leave it."""
    group = udp_group(host, 0, workers)
    port = group[0].getsockname()[1]
    family = group[0].family
    links: list[socket.socket] = []
    seen = [0] * workers
    try:
        for n in range(120):
            if n % 20 == 0:  # a connected "link" joins the group (as for a channel's client)
                link = socket.socket(family, socket.SOCK_DGRAM)
                link.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                link.bind((host, port))
                link.connect((host, 9))
                links.append(link)
            if n % 30 == 29:
                links.pop(0).close()
            with socket.socket(family, socket.SOCK_DGRAM) as client:
                client.bind((host, 0))
                client.sendto(b"x", (host, port))
                expected = worker_for(client.getsockname()[:2], workers)
                assert _receiver(group) == expected
                seen[expected] += 1
        assert all(count > 0 for count in seen), seen
    finally:
        for sock in [*group, *links]:
            sock.close()


def test_a_datagram_for_a_stopped_worker_waits_in_its_socket() -> None:
    """While a worker restarts its socket stays in the group: its clients' datagrams queue there
    instead of going to another worker, and other clients still reach theirs."""
    group = udp_group("127.0.0.1", 0, 2)
    target = group[0].getsockname()
    clients = {0: [], 1: []}  # type: dict[int, list[socket.socket]]
    try:
        while not (clients[0] and clients[1]):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind(("127.0.0.1", 0))
            clients[worker_for(c.getsockname(), 2)].append(c)
        # Nobody reads socket 1 (its worker is "down"); traffic keeps its course.
        for _ in range(5):
            clients[1][0].sendto(b"for worker 1", target)
            clients[0][0].sendto(b"for worker 0", target)
        time.sleep(0.05)
        got0 = []
        while True:
            try:
                got0.append(group[0].recvfrom(64)[0])
            except BlockingIOError:
                break
        got1 = []
        while True:
            try:
                got1.append(group[1].recvfrom(64)[0])
            except BlockingIOError:
                break
        assert got0 == [b"for worker 0"] * 5
        assert got1 == [b"for worker 1"] * 5
    finally:
        for sock in [*group, *clients[0], *clients[1]]:
            sock.close()


def test_relay_slices_are_disjoint_and_cover_the_range() -> None:
    for lo, hi, n in [(49152, 65535, 2), (50000, 50009, 3), (50001, 50010, 4), (40000, 40001, 1)]:
        slices = [relay_slice((lo, hi), n, i) for i in range(n)]
        ports = [p for a, b in slices for p in range(a, b + 1)]
        assert ports == list(range(lo, hi + 1))
        assert all(b - a + 1 >= 2 for a, b in slices)
    with pytest.raises(ValueError, match="too small for 3 workers"):
        relay_slice((50000, 50004), 3, 0)


def test_shared_quota_counts_every_workers_allocations() -> None:
    fd = sharedquota.create_memory(2)
    try:
        w0 = sharedquota.SharedQuota(fd, 2, 0)
        w1 = sharedquota.SharedQuota(fd, 2, 1)
        w0.added("alice")
        w1.added("alice")
        w1.added("bob")
        assert (w0.count("alice"), w1.count("alice")) == (2, 2)
        assert w0.count("bob") == 1 and w0.count("carol") == 0
        assert w0.total() == w1.total() == 3
        w0.removed("alice")
        assert w1.count("alice") == 1 and w1.total() == 2
        sharedquota.clear_row(fd, 2, 1)  # worker 1 died: what it held is gone
        assert w0.count("alice") == 0 and w0.count("bob") == 0 and w0.total() == 0
        w1.removed("bob")  # a late removal cannot go below zero
        assert w0.total() == 0
        w0.close()
        w1.close()
    finally:
        os.close(fd)
