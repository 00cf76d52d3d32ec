"""Step 6 (``--security``, for the server's owner): does the relay accept internal peers?

A TURN server relays to whatever address a client names unless its peer policy refuses. The scan
asks for a permission (CreatePermission, no payload is ever sent) toward loopback, ``0.0.0.0``,
IPv4 hidden in IPv6, the cloud metadata address and private ranges; a success answer means any
holder of a credential can reach those addresses through the relay.
"""

from __future__ import annotations

import asyncio
import ipaddress

from iceward.doctor.client import ProbeError, TurnError, TurnSession, describe_error
from iceward.doctor.config import ServerUrl
from iceward.doctor.evidence import PeerCheck, SecurityScan
from iceward.doctor.probe import ProbeOptions, open_client
from iceward.stun import constants as C
from iceward.stun.message import StunError

TARGETS: tuple[tuple[str, str], ...] = (
    ("loopback", "127.0.0.1"),
    ("'this host' 0.0.0.0", "0.0.0.0"),
    ("cloud metadata service", "169.254.169.254"),
    ("private 10.0.0.0/8", "10.0.0.1"),
    ("private 172.16.0.0/12", "172.16.0.1"),
    ("private 192.168.0.0/16", "192.168.0.1"),
    ("carrier-grade NAT 100.64.0.0/10", "100.64.0.1"),
    ("IPv4-mapped IPv6 loopback", "::ffff:127.0.0.1"),
    ("NAT64 loopback", "64:ff9b::7f00:1"),
    ("IPv6 loopback", "::1"),
    ("IPv6 unique local", "fd00::1"),
    ("IPv6 link-local", "fe80::1"),
)
PEER_PORT = 9


async def _session(
    url: ServerUrl, address: str, options: ProbeOptions, family: int | None
) -> TurnSession:
    assert url.credential is not None
    client, _ = await open_client(url, address, options)
    session = TurnSession(client, url.credential.username, url.credential.credential)
    try:
        await session.allocate(family)
    except BaseException:
        await session.release()
        raise
    return session


async def _check(session: TurnSession, label: str, peer: str) -> PeerCheck:
    try:
        await session.create_permission((peer, PEER_PORT))
    except TurnError as exc:
        return PeerCheck(label, peer, False, f"refused: {describe_error(exc.code, exc.reason)}")
    except (ProbeError, StunError, OSError) as exc:
        return PeerCheck(label, peer, False, f"no verdict: {exc}")
    return PeerCheck(label, peer, True, "accepted: CreatePermission succeeded")


async def run_security(
    url: ServerUrl, address: str, options: ProbeOptions, scan: SecurityScan
) -> None:
    """Fill ``scan``: one CreatePermission per internal target, on IPv4 and IPv6 relays."""
    targets = list(TARGETS)
    if all(peer != address for _, peer in targets):
        targets.append(("the TURN server's own address", address))
    sessions: list[TurnSession] = []
    try:
        try:
            v4 = await _session(url, address, options, None)
        except (ProbeError, TurnError, StunError, OSError) as exc:
            scan.error = f"no allocation to test with: {exc}"
            return
        sessions.append(v4)
        v6: TurnSession | None = None
        try:
            v6 = await _session(url, address, options, C.FAMILY_IPV6)
            sessions.append(v6)
        except (ProbeError, TurnError, StunError, OSError):
            v6 = None  # no IPv6 relay: IPv6 peers are asked of the IPv4 allocation
        checks = []
        for label, peer in targets:
            is_v6 = ipaddress.ip_address(peer).version == 6
            checks.append(_check(v6 if is_v6 and v6 is not None else v4, label, peer))
        scan.checks = list(await asyncio.gather(*checks))
    finally:
        for session in sessions:
            await session.release()
