"""The asyncio client against a scripted server: the 401 → nonce → 438 → retry dance, failures."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from iceward.doctor.client import ProbeError, StunClient, TurnError, TurnSession, describe_error
from iceward.stun import attributes as A
from iceward.stun import constants as C
from iceward.stun.integrity import long_term_key, verify_integrity
from iceward.stun.message import encode_message, parse_message

REALM, USER, PASSWORD = "scripted", "alice", "wonderland"


class ScriptedServer(asyncio.DatagramProtocol):
    """Challenges with 401, answers the first signed request 438, then checks the integrity."""

    def __init__(self, password: str = PASSWORD) -> None:
        self.key = long_term_key(USER, REALM, password)
        self.signed_seen = 0
        self.nonces = iter(["nonce-1", "nonce-2", "nonce-3", "nonce-4"])
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        msg = parse_message(data)
        tid = msg.transaction_id
        if msg.method == C.BINDING:
            reply = encode_message(
                C.BINDING, C.SUCCESS, tid, [(C.XOR_MAPPED_ADDRESS, A.encode_xor_address(addr, tid))]
            )
        elif msg.integrity_offset < 0:
            reply = self.error(tid, msg.method, 401)
        else:
            self.signed_seen += 1
            if self.signed_seen == 1:
                reply = self.error(tid, msg.method, 438)
            elif not verify_integrity(msg, self.key):
                reply = self.error(tid, msg.method, 401)
            else:
                reply = encode_message(
                    msg.method,
                    C.SUCCESS,
                    tid,
                    [
                        (C.XOR_RELAYED_ADDRESS, A.encode_xor_address(("198.51.100.9", 50000), tid)),
                        (C.XOR_MAPPED_ADDRESS, A.encode_xor_address(addr, tid)),
                        (C.LIFETIME, A.encode_u32(600)),
                    ],
                    integrity_key=self.key,
                )
        self.transport.sendto(reply, addr)

    def error(self, tid: bytes, method: int, code: int) -> bytes:
        return encode_message(
            method,
            C.ERROR,
            tid,
            [
                (C.ERROR_CODE, A.encode_error_code(code)),
                (C.REALM, REALM.encode()),
                (C.NONCE, next(self.nonces).encode()),
            ],
        )


async def scripted(password: str = PASSWORD) -> tuple[Any, ScriptedServer, int]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: ScriptedServer(password), local_addr=("127.0.0.1", 0)
    )
    return transport, proto, transport.get_extra_info("sockname")[1]


def test_challenge_stale_nonce_and_signed_retry() -> None:
    async def run() -> TurnSession:
        transport, proto, port = await scripted()
        client = await StunClient.connect("udp", ("127.0.0.1", port), 1.0)
        session = TurnSession(client, USER, PASSWORD)
        relayed = await session.allocate()
        assert relayed == [("198.51.100.9", 50000)]
        assert proto.signed_seen == 2
        client.close()
        transport.close()
        return session

    session = asyncio.run(run())
    assert session.transcript[0].startswith("Allocate → 401 challenge (realm 'scripted'")
    assert session.transcript[1] == "Allocate → 438 Stale Nonce: retried with the new nonce"
    assert "relayed 198.51.100.9:50000, lifetime 600 s" in session.transcript[2]


def test_wrong_password_is_a_signed_401() -> None:
    async def run() -> TurnError:
        transport, _, port = await scripted(password="other")
        client = await StunClient.connect("udp", ("127.0.0.1", port), 1.0)
        with pytest.raises(TurnError) as info:
            await TurnSession(client, USER, PASSWORD).allocate()
        client.close()
        transport.close()
        return info.value

    error = asyncio.run(run())
    assert (error.code, error.signed) == (401, True)
    assert "did not accept the username and credential" in str(error)


def test_nothing_listening_udp_is_reported_at_once() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def run() -> str:
        client = await StunClient.connect("udp", ("127.0.0.1", port), 5.0)
        with pytest.raises(ProbeError) as info:
            await client.binding()
        client.close()
        return str(info.value)

    start = time.monotonic()
    assert asyncio.run(run()) == f"ICMP port unreachable: nothing listens on UDP port {port}"
    assert time.monotonic() - start < 2.0


def test_silent_server_times_out_after_retransmissions() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))

        async def run() -> str:
            client = await StunClient.connect("udp", silent.getsockname(), 0.6)
            with pytest.raises(ProbeError) as info:
                await client.binding()
            client.close()
            return str(info.value)

        message = asyncio.run(run())
        assert message == "no answer in 0.6 s (2 tries)"  # sent at 0 and 0.25 s
        assert len([silent.recv(2048) for _ in range(2)]) == 2


def test_tcp_refused_and_closed() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]

    async def refused() -> str:
        with pytest.raises(ProbeError) as info:
            await StunClient.connect("tcp", ("127.0.0.1", port), 1.0)
        return str(info.value)

    assert "connection refused (nothing listens on that port)" in asyncio.run(refused())

    async def closing() -> str:
        async def close_at_once(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        server = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
        client = await StunClient.connect("tcp", server.sockets[0].getsockname()[:2], 1.0)
        with pytest.raises(ProbeError) as info:
            await client.binding()
        client.close()
        server.close()
        return str(info.value)

    assert asyncio.run(closing()) == "the server closed the connection"


def test_error_words() -> None:
    assert describe_error(508, "") == (
        "508 Insufficient Capacity (the server has no free relay port or allocation slot)"
    )
    assert describe_error(499, "Odd") == "499 Odd"
