"""aioice (the ICE agent of aiortc) relaying through a real ``iceward serve``.

Two relay-only ``aioice.Connection``s (one controlling, one controlled) take their candidates from
the server over each TURN transport (UDP, TCP, and TLS verified against the test CA), with the
static user and with a TURN REST credential, run ICE checks to each other's relayed address and
exchange data both ways through the server. With ``TransportPolicy.RELAY`` aioice gathers no host
candidates at all, so nothing can take a direct path, and the server's own relays bind on the
loopback address it listens on (the fixture passes ``--listen 127.0.0.1``) in ``RELAY_PORTS``.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import time
from collections.abc import Callable
from typing import Any

import aioice
import pytest

from iceward.turn.credentials import mint_rest_credential
from tests.conftest import HOST, CertAuthority, RunningServer

pytestmark = pytest.mark.realclient

SECRET = "test-shared-secret"
# Outside Linux's ephemeral range (32768-60999): a relayed port here came from this setting.
RELAY_PORTS = (21000, 21999)
STEP_TIMEOUT = 10.0
LOG_WAIT = 5.0
MESSAGES = 20
TRANSPORTS = ("udp", "tcp", "tls")
ALLOCATION_START = re.compile(r"allocation start client=\S+ user='([^']*)' relayed=(\S+)")
ALLOCATION_END = re.compile(
    r"allocation end client=\S+ user='(?P<user>[^']*)' reason='(?P<reason>[^']*)' "
    r".*to_peer_packets=(?P<to_peer>\d+) to_peer_bytes=\d+ "
    r"to_client_packets=(?P<to_client>\d+) to_client_bytes=\d+"
)


def credential(kind: str) -> tuple[str, str, str]:
    """``(username, password, how the server logs the user)`` for ``static`` or ``rest``."""
    if kind == "static":
        return "alice", "wonderland", "alice"
    cred = mint_rest_credential(SECRET, "u", 600, time.time())
    return cred.username, cred.password, cred.username


def start(make_server: Callable[..., RunningServer], transport: str, ca: CertAuthority) -> Any:
    options: dict[str, Any] = {}
    if transport == "tls":
        options["cert"] = (ca.cert, ca.key)
    return make_server("--relay-ports", f"{RELAY_PORTS[0]}-{RELAY_PORTS[1]}", **options)


def connection(
    server: RunningServer,
    transport: str,
    ca: CertAuthority,
    username: str,
    password: str,
    *,
    controlling: bool,
) -> aioice.Connection:
    turn_ssl: Any = False
    port = server.port
    if transport == "tls":
        # aioice hands an SSLContext straight to create_connection: the server certificate is
        # verified against the test CA for 127.0.0.1.
        turn_ssl = ssl.create_default_context(cafile=str(ca.ca_cert))
        port = server.tls_port
    return aioice.Connection(
        ice_controlling=controlling,
        components=1,
        turn_server=(HOST, port),
        turn_username=username,
        turn_password=password,
        turn_ssl=turn_ssl,
        turn_transport="udp" if transport == "udp" else "tcp",
        use_ipv6=False,
        transport_policy=aioice.TransportPolicy.RELAY,
    )


async def bounded(awaitable: Any, what: str, timeout: float = STEP_TIMEOUT) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        pytest.fail(f"aioice: {what} did not finish within {timeout} s")


async def exchange(a: aioice.Connection, b: aioice.Connection) -> None:
    """Signal candidates and ICE credentials both ways (what SDP would carry)."""
    for local, remote in ((a, b), (b, a)):
        for candidate in local.local_candidates:
            await bounded(remote.add_remote_candidate(candidate), "add_remote_candidate")
        await bounded(remote.add_remote_candidate(None), "end-of-candidates")
        remote.remote_username = local.local_username
        remote.remote_password = local.local_password


async def transfer(sender: aioice.Connection, receiver: aioice.Connection, tag: bytes) -> None:
    """``MESSAGES`` distinct payloads of growing size arrive intact at the other side."""
    sent = [tag + b"%03d:" % i + os.urandom(50 * i) for i in range(MESSAGES)]
    for payload in sent:
        await bounded(sender.send(payload), "send")
    received = [await bounded(receiver.recv(), f"receiving {tag!r}") for _ in sent]
    assert sorted(received) == sorted(sent)


def relay_ends(server: RunningServer, user: str, count: int) -> list[dict[str, str]]:
    """The user's ``allocation end`` lines, once ``count`` are logged (or after ``LOG_WAIT``)."""
    deadline = time.monotonic() + LOG_WAIT
    while True:
        ends = [m.groupdict() for m in ALLOCATION_END.finditer(server.log_text())]
        ends = [e for e in ends if e["user"] == user]
        if len(ends) >= count or time.monotonic() > deadline:
            return ends
        time.sleep(0.05)


async def relay_session(
    server: RunningServer, transport: str, ca: CertAuthority, username: str, password: str
) -> list[aioice.Candidate]:
    a = connection(server, transport, ca, username, password, controlling=True)
    b = connection(server, transport, ca, username, password, controlling=False)
    try:
        await bounded(asyncio.gather(a.gather_candidates(), b.gather_candidates()), "gathering")
        candidates = a.local_candidates + b.local_candidates
        assert len(a.local_candidates) == 1 and len(b.local_candidates) == 1, candidates
        await exchange(a, b)
        await bounded(asyncio.gather(a.connect(), b.connect()), "ICE connect")
        await transfer(a, b, b"a>b ")
        await transfer(b, a, b"b>a ")
    finally:
        await bounded(asyncio.gather(a.close(), b.close()), "close")
    return candidates


@pytest.mark.parametrize("kind", ["static", "rest"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_relay_only_ice_through_iceward(
    make_server: Callable[..., RunningServer], test_ca: CertAuthority, transport: str, kind: str
) -> None:
    server = start(make_server, transport, test_ca)
    username, password, logged_user = credential(kind)

    candidates = asyncio.run(relay_session(server, transport, test_ca, username, password))

    # Only relayed candidates, on the server's relay address and port range.
    relayed = set()
    for candidate in candidates:
        assert candidate.type == "relay", candidate
        assert candidate.transport == "udp", candidate
        assert candidate.host == server.host, candidate
        assert RELAY_PORTS[0] <= candidate.port <= RELAY_PORTS[1], candidate
        relayed.add(f"{candidate.host}:{candidate.port}")
    log = server.log_text()
    started = {addr for user, addr in ALLOCATION_START.findall(log) if user == logged_user}
    assert relayed == started, log

    # close() released both allocations (Refresh lifetime 0), each having carried the data plus
    # the ICE checks in both directions.
    ends = relay_ends(server, logged_user, 2)
    assert len(ends) == 2, log
    for end in ends:
        assert int(end["to_peer"]) >= MESSAGES, end
        assert int(end["to_client"]) >= MESSAGES, end
    assert "auth refused" not in log


@pytest.mark.parametrize("refusal", ["wrong password", "expired REST credential"])
def test_refused_credentials_gather_no_relay(
    make_server: Callable[..., RunningServer], test_ca: CertAuthority, refusal: str
) -> None:
    server = start(make_server, "udp", test_ca)
    if refusal == "wrong password":
        username, password, reason = "alice", "not-the-password", "wrong credential"
    else:
        cred = mint_rest_credential(SECRET, "u", 60, time.time() - 3600)
        username, password, reason = cred.username, cred.password, "REST credential expired"

    async def gather() -> list[aioice.Candidate]:
        conn = connection(server, "udp", test_ca, username, password, controlling=True)
        try:
            await bounded(conn.gather_candidates(), "gathering")
            return list(conn.local_candidates)
        finally:
            await bounded(conn.close(), "close")

    assert asyncio.run(gather()) == []
    log = server.log_text()
    refusals = re.findall(r"auth refused client=\S+ username='([^']*)' reason='([^']*)'", log)
    assert refusals, log
    assert all(name == username and reason in why for name, why in refusals), refusals
    assert "allocation start" not in log, log
