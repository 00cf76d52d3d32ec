"""The addresses this host answers on, and from them the server's own transport addresses.

A TURN client must not make the relay send to the server's own listening sockets (it could nest
an allocation inside its relay). Listening on a wildcard means every local address counts, so
they are read from the kernel (Linux ``/proc``; elsewhere only loopback is known).
"""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path


def local_networks() -> list[str]:
    """Every local address (or local network, such as 127.0.0.0/8) of this host, as CIDR text."""
    found: set[str] = {"127.0.0.0/8", "::1/128"}
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    for previous, line in itertools.pairwise(lines):
        words = line.split()
        if words[-2:] == ["host", "LOCAL"] and "--" in previous:
            found.add(str(ipaddress.ip_network(previous.split()[-1] + words[0], strict=False)))
    try:
        rows = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        rows = []
    for row in rows:
        hexaddr = row.split()[0] if row.split() else ""
        if len(hexaddr) == 32:
            found.add(f"{ipaddress.IPv6Address(bytes.fromhex(hexaddr))}/128")
    return sorted(found)


def expand_local(networks: list[str]) -> list[str]:
    """``networks`` with ``*`` (a wildcard listener: the server answers on every local address)
    replaced by this host's local addresses."""
    out = [n for n in networks if n != "*"]
    if len(out) < len(networks):
        out += local_networks()
    return out
