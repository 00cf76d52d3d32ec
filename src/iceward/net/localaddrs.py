"""The addresses this host answers on, and from them the server's own transport addresses.

A TURN client must not make the relay send to the server's own listening sockets (it could nest
an allocation inside its relay). Listening on a wildcard means every local address counts, so
they are read from the kernel (Linux ``/proc``; elsewhere only loopback is known).
"""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path

from iceward.config import ServerSettings, parse_alternate_address

_WILDCARDS = ("0.0.0.0", "::")


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


def own_addresses(
    settings: ServerSettings, advertised: list[str], ports: list[int]
) -> tuple[list[str], list[int]]:
    """(networks, ports) a peer must not be: the listening IPs (all local ones for a wildcard),
    the addresses advertised to clients, and the RFC 5780 alternate; the listening ports."""
    networks = [ip for ip in settings.listen if ip not in _WILDCARDS]
    if len(networks) < len(settings.listen):
        networks += local_networks()
    networks += advertised
    all_ports = list(ports)
    if settings.alternate_address:
        alt_ip, alt_port = parse_alternate_address(settings.alternate_address, settings.port)
        networks.append(alt_ip)
        all_ports.append(alt_port)
    return networks, all_ports
