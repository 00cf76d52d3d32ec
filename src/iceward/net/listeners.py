"""The server's listening sockets, opened once, for one process or for N workers.

Each listening address gets N sockets in one SO_REUSEPORT group, one per worker. The first is
bound exclusively (nobody else may already hold the port), then marked SO_REUSEPORT so the rest
(and, for UDP, the link sockets of :mod:`iceward.net.links`) can join. UDP groups of several
workers run the steering program of :mod:`iceward.net.steering`. Whoever opens the set keeps it
open for the server's whole life: a worker that dies leaves its sockets, and so every other
worker's index in the groups, where they were.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from iceward.net import steering
from iceward.turn.allocation import Address

_BUFFER = 4 * 1024 * 1024
_BACKLOG = 511


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_udp(host: str, port: int, joining: bool = False) -> socket.socket:
    """A UDP socket on ``host:port``: alone on the port, or ``joining`` its reuseport group."""
    af = _family(host)
    sock = socket.socket(af, socket.SOCK_DGRAM)
    try:
        if af == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, _BUFFER)
        if joining:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_tcp(host: str, port: int, joining: bool, group: bool) -> socket.socket:
    af = _family(host)
    sock = socket.socket(af, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if af == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if joining:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if group:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def udp_group(host: str, port: int, workers: int) -> list[socket.socket]:
    """``workers`` UDP sockets on one address, index i for worker i, steered by client."""
    socks: list[socket.socket] = []
    try:
        first = bind_udp(host, port)
        socks.append(first)
        bound = first.getsockname()[1]
        socks += [bind_udp(host, bound, joining=True) for _ in range(workers - 1)]
        if workers > 1:
            steering.attach(first, workers)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def tcp_group(host: str, port: int, workers: int) -> list[socket.socket]:
    """``workers`` listening TCP sockets on one address; the kernel spreads connections."""
    socks: list[socket.socket] = []
    try:
        first = _bind_tcp(host, port, joining=False, group=workers > 1)
        socks.append(first)
        bound = first.getsockname()[1]
        socks += [_bind_tcp(host, bound, True, True) for _ in range(workers - 1)]
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


@dataclass(slots=True)
class ListenerSet:
    """Every listening socket of the server, by worker: ``udp[i]`` are worker i's UDP sockets,
    one per UDP address in :attr:`udp_addresses` order (likewise TCP and TLS)."""

    workers: int
    udp: list[list[socket.socket]] = field(default_factory=list)
    tcp: list[list[socket.socket]] = field(default_factory=list)
    tls: list[list[socket.socket]] = field(default_factory=list)
    port: int = 0
    tls_port: int = 0

    def sockets(self, index: int) -> list[socket.socket]:
        return [*self.udp[index], *self.tcp[index], *self.tls[index]]

    def close(self) -> None:
        for index in range(self.workers):
            for sock in self.sockets(index):
                sock.close()


def open_listeners(
    listen: list[str],
    port: int,
    tls_port: int | None,
    workers: int,
    change_addresses: tuple[Address, Address] | None = None,
) -> ListenerSet:
    """Bind UDP and TCP on ``port`` (the TCP port follows UDP's when ``port`` is 0), TLS on
    ``tls_port`` (None: no TLS) and, for RFC 5780, UDP on the other three IP x port pairs."""
    result = ListenerSet(workers, [[] for _ in range(workers)], [[] for _ in range(workers)])
    result.tls = [[] for _ in range(workers)]

    def add(groups: list[list[socket.socket]], group: list[socket.socket]) -> None:
        for index, sock in enumerate(group):
            groups[index].append(sock)

    try:
        for host in listen:
            group = udp_group(host, port, workers)
            add(result.udp, group)
            port = group[0].getsockname()[1]
            add(result.tcp, tcp_group(host, port, workers))
        result.port = port
        if change_addresses:
            (ip_a, port_a), (ip_b, port_b) = change_addresses
            for host, p in ((ip_a, port_b), (ip_b, port_a), (ip_b, port_b)):
                add(result.udp, udp_group(host, p, workers))
        if tls_port is not None:
            for host in listen:
                group = tcp_group(host, tls_port, workers)
                add(result.tls, group)
                tls_port = group[0].getsockname()[1]
            result.tls_port = tls_port
    except OSError:
        result.close()
        raise
    return result
