"""The server's listening sockets, opened once, for one process or for N workers.

Each listening address gets N sockets in one SO_REUSEPORT group, one per worker. The first is
bound exclusively (nobody else may already hold the port), then marked SO_REUSEPORT so the rest
(and, for UDP, the link sockets of :mod:`iceward.net.links`) can join. UDP groups of several
workers run the steering program of :mod:`iceward.net.steering`. Whoever opens the set keeps it
open for the server's whole life: a worker that dies leaves its sockets, and so every other
worker's index in the groups, where they were.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from iceward.net import steering
from iceward.turn.allocation import Address

_BUFFER = 4 * 1024 * 1024
_BACKLOG = 511
#: Tries at a set of listeners on port 0: the port the kernel gave UDP may be taken for TCP.
_EPHEMERAL_TRIES = 20


class BindError(OSError):
    """A listening socket that could not be bound; ``str()`` says which protocol, address and
    port, and why in words (no ``[Errno 98]``)."""

    def __init__(self, code: int, message: str, *, ephemeral: bool = False) -> None:
        super().__init__(code, message)
        #: The port was chosen by the kernel for another socket of the set: try another.
        self.ephemeral = ephemeral

    def __str__(self) -> str:
        return str(self.strerror)


def _bind_error(exc: OSError, proto: str, host: str, port: int, ephemeral: bool) -> BindError:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        text = f"cannot listen on {proto} {where}: the port is in use by another process"
    elif exc.errno == errno.EADDRNOTAVAIL:
        text = f"cannot listen on {proto} {where}: {host} is not an address of this host"
    elif exc.errno == errno.EACCES:
        text = (
            f"cannot listen on {proto} {where}: permission denied (a port below 1024 needs "
            "root or CAP_NET_BIND_SERVICE)"
        )
    else:
        text = f"cannot listen on {proto} {where}: {exc.strerror or exc}"
    return BindError(exc.errno or 0, text, ephemeral=ephemeral and exc.errno == errno.EADDRINUSE)


#: Bit of CAP_NET_BIND_SERVICE in /proc/self/status's CapEff.
_CAP_NET_BIND_SERVICE = 10


def may_bind_port(port: int) -> bool:
    """Whether this process is allowed to bind ``port`` (below 1024 takes root, the capability
    CAP_NET_BIND_SERVICE, or a lowered ``net.ipv4.ip_unprivileged_port_start``); not whether the
    port is free."""
    if port >= 1024 or os.geteuid() == 0:
        return True
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            if port >= int(f.read()):
                return True
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_BIND_SERVICE & 1)
    except (OSError, ValueError):
        pass
    return False


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


def check_local_address(host: str, what: str) -> None:
    """:class:`BindError` naming ``what`` (a setting) when ``host`` is not an address of this
    host, so a socket can never be bound to it (checked at start, not at the first use)."""
    try:
        with socket.socket(_family(host), socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise BindError(exc.errno, f"{what} {host} is not an address of this host") from None
        raise BindError(exc.errno or 0, f"{what} {host}: {exc.strerror or exc}") from None


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
    ``tls_port`` (None: no TLS) and, for RFC 5780, UDP on the other three IP x port pairs.

    Port 0 means a port the kernel picks, the same for every address (and for UDP and TCP):
    when that port is taken for one of them, the whole set is opened again on another.
    :class:`BindError` names the protocol, address and port that could not be bound."""
    for attempt in range(_EPHEMERAL_TRIES):
        try:
            return _open_listeners(listen, port, tls_port, workers, change_addresses)
        except BindError as exc:
            if not exc.ephemeral or attempt == _EPHEMERAL_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def _open_listeners(
    listen: list[str],
    port: int,
    tls_port: int | None,
    workers: int,
    change_addresses: tuple[Address, Address] | None,
) -> ListenerSet:
    result = ListenerSet(workers, [[] for _ in range(workers)], [[] for _ in range(workers)])
    result.tls = [[] for _ in range(workers)]

    def add(
        groups: list[list[socket.socket]],
        opener: Callable[[str, int, int], list[socket.socket]],
        proto: str,
        host: str,
        wanted: int,
        requested: int,
    ) -> int:
        """Bind ``proto`` on ``host:wanted``; ``requested`` 0 with ``wanted`` set means the
        port came from the kernel for another socket. Returns the port bound."""
        try:
            group = opener(host, wanted, workers)
        except OSError as exc:
            raise _bind_error(exc, proto, host, wanted, requested == 0 and wanted != 0) from None
        for index, sock in enumerate(group):
            groups[index].append(sock)
        return int(group[0].getsockname()[1])

    try:
        bound = port
        for host in listen:
            bound = add(result.udp, udp_group, "udp", host, bound, port)
            add(result.tcp, tcp_group, "tcp", host, bound, port)
        result.port = bound
        if change_addresses:
            (ip_a, port_a), (ip_b, port_b) = change_addresses
            for host, p in ((ip_a, port_b), (ip_b, port_a), (ip_b, port_b)):
                add(result.udp, udp_group, "udp", host, p, p)
        if tls_port is not None:
            bound_tls = tls_port
            for host in listen:
                bound_tls = add(result.tls, tcp_group, "tls", host, bound_tls, tls_port)
            result.tls_port = bound_tls
    except OSError:
        result.close()
        raise
    return result
