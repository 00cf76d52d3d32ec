"""The 401 to an unauthenticated TURN request answered by the native engine: the core's bytes,
the core's rate per source, the core's counts.

The engine is compared with the core itself (same nonce key, same wall second) on real loopback
sockets, IPv4 and ::1; a running server (native, or the Python path in ``make test``'s second
pass) must count every 401 in /metrics, hold a flooding source to ``--max-challenges`` while
another is answered, and let a client finish the flow with the nonce it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from iceward.net.fastpath import LISTENER, FastPath
from iceward.stun import attributes as A
from iceward.stun import constants as C
from iceward.stun.message import encode_message, parse_message
from iceward.turn.allocation import FiveTuple
from iceward.turn.events import ToClient
from iceward.turn.server import TurnConfig
from tests.api.test_api import http, metric
from tests.conftest import HOST, RunningServer
from tests.net.test_fastpath import engine  # noqa: F401 - the engine fixture
from tests.net.turnclient import BlockingTurnClient
from tests.turn.helpers import make_server as make_core

MakeServer = Callable[..., RunningServer]
TURN_METHODS = (
    C.ALLOCATE,
    C.REFRESH,
    C.CREATE_PERMISSION,
    C.CHANNEL_BIND,
    C.CONNECT,
    C.CONNECTION_BIND,
)


def request(
    method: int,
    attrs: list[tuple[int, bytes]] | None = None,
    fingerprint: bool = False,
    **keys: Any,
) -> bytes:
    txid = os.urandom(12)
    return encode_message(method, C.REQUEST, txid, attrs or [], fingerprint=fingerprint, **keys)


def with_padding(data: bytes, garbage: bytes) -> bytes:
    """``data`` (no FINGERPRINT) with a 3-byte attribute whose padding byte is not zero."""
    body = data[20:] + struct.pack("!HH", 0xC0DE, 3) + b"abc" + garbage
    return data[:2] + struct.pack("!H", len(body)) + data[4:20] + body


def cut(data: bytes, keep: int) -> bytes:
    return data[:keep]


def lying_length(data: bytes, delta: int) -> bytes:
    length = struct.unpack_from("!H", data, 2)[0] + delta
    return data[:2] + struct.pack("!H", length & 0xFFFF) + data[4:]


def wrong_fingerprint(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def after_fingerprint(data: bytes) -> bytes:
    body = data[20:] + struct.pack("!HH", C.SOFTWARE, 4) + b"late"
    return data[:2] + struct.pack("!H", len(body)) + data[4:20] + body


#: What the engine answers: every TURN method, bare, with FINGERPRINT, SOFTWARE (padded), the
#: attributes a client really sends, credentials without MESSAGE-INTEGRITY, an unknown
#: comprehension-required attribute (the 401 comes before the 420), unknown optional ones, a
#: padding byte that is not zero.
def answered() -> list[bytes]:
    transport = (C.REQUESTED_TRANSPORT, A.encode_one_byte(C.TRANSPORT_UDP))
    peer = (C.XOR_PEER_ADDRESS, os.urandom(8))
    return [
        *(request(m) for m in TURN_METHODS),
        *(request(m, fingerprint=True) for m in TURN_METHODS),
        request(C.ALLOCATE, [transport, (C.SOFTWARE, b"probe 1.0")], True),
        request(C.REFRESH, [(C.LIFETIME, struct.pack("!I", 0)), (C.SOFTWARE, b"x")]),
        request(C.CREATE_PERMISSION, [peer, (0x7F01, b"\x00\x01")], True),
        request(C.CHANNEL_BIND, [(C.CHANNEL_NUMBER, b"\x40\x00\x00\x00"), peer, (0xC0DE, b"y")]),
        request(
            C.ALLOCATE,
            [transport, (C.USERNAME, b"alice"), (C.REALM, b"r"), (C.NONCE, b"n" * 47)],
            True,
        ),
        with_padding(request(C.ALLOCATE, [transport]), b"\xff"),
    ]


#: What goes to the core unchanged: signed (either MAC), a RESERVATION-TOKEN, Binding, another
#: class or an unknown method, and the malformed (cut, lying length fields, an attribute past the
#: end, a wrong FINGERPRINT, an attribute after it, a FINGERPRINT of the wrong size, no cookie).
def handed_back() -> list[bytes]:
    transport = (C.REQUESTED_TRANSPORT, A.encode_one_byte(C.TRANSPORT_UDP))
    plain = request(C.ALLOCATE, [transport, (C.SOFTWARE, b"abcd")])
    signed = request(C.REFRESH, [(C.USERNAME, b"alice")], integrity_key=b"k" * 16)
    return [
        signed,
        request(C.ALLOCATE, [transport], True, integrity_sha256_key=b"k" * 16),
        request(C.ALLOCATE, [transport, (C.RESERVATION_TOKEN, b"t" * 8)]),
        request(C.BINDING, [(0xC0DE, b"z")]),
        encode_message(C.ALLOCATE, C.INDICATION, os.urandom(12), [transport]),
        encode_message(C.ALLOCATE, C.SUCCESS, os.urandom(12), [transport]),
        request(0x00C, [transport]),
        cut(plain, 19),
        cut(plain, len(plain) - 4),
        lying_length(plain, 4),
        lying_length(plain, -4),
        lying_length(plain, 2),
        plain[:22] + b"\x00\x40" + plain[24:],  # the first attribute runs past the end
        wrong_fingerprint(request(C.ALLOCATE, [transport], True)),
        after_fingerprint(request(C.ALLOCATE, [transport], True)),
        request(C.REFRESH, [(C.FINGERPRINT, bytes(8))]),
        plain[:4] + b"\x21\x12\xa4\x43" + plain[8:],
    ]


@pytest.fixture
def fast(engine: Any) -> Iterator[FastPath]:  # noqa: F811
    loop = asyncio.new_event_loop()
    fast = FastPath(engine, loop, lambda: None)
    yield fast
    fast.close()
    loop.close()


def bound(host: str) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind((host, 0))
    return s


def poll_misses(fast: FastPath, want: int) -> list[bytes]:
    misses: list[bytes] = []
    for _ in range(100):
        misses += [data for _, data, _ in fast.engine.poll(10)]
        if len(misses) >= want:
            break
    return misses


def pump(fast: FastPath, challenged: int) -> None:
    """Poll until the engine has challenged (answered or dropped) ``challenged`` in all."""
    for _ in range(200):
        stats = fast.stats()
        if stats["challenges"] + stats["challenges_dropped"] >= challenged:
            return
        fast.engine.poll(10)


def test_the_engines_hmac_is_pythons() -> None:
    from iceward.net import _fastpath

    rnd = random.Random(8489)
    for _ in range(300):
        key = rnd.randbytes(rnd.choice((0, 1, 32, 63, 64, 65, rnd.randrange(200))))
        data = rnd.randbytes(rnd.choice((0, 55, 56, 63, 64, 119, 120, rnd.randrange(400))))
        assert _fastpath.hmac_sha256(key, data) == hmac.new(key, data, hashlib.sha256).digest()


@contextlib.contextmanager
def listening(
    fast: FastPath, host: str
) -> Iterator[tuple[socket.socket, tuple[str, int], FiveTuple]]:
    """A listener the engine reads on ``host`` and a client beside it: (client, the listener's
    address, their five-tuple)."""
    listener, client = bound(host), bound(host)
    try:
        listener.setblocking(False)
        client.settimeout(2.0)
        fast.engine.add_socket(listener.fileno(), LISTENER)
        to, me = listener.getsockname()[:2], client.getsockname()[:2]
        yield client, to, FiveTuple("udp", me, to)
    finally:
        listener.close()
        client.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_engines_401_is_the_cores_byte_for_byte(fast: FastPath, host: str) -> None:
    """Both answer for the same second; a round that straddles a second tick is sent again."""
    core, _ = make_core(config=TurnConfig(realm="native.example"))
    assert fast.answer_challenges(core.native_challenge()) is None
    with listening(fast, host) as (client, to, ft):
        for _ in range(3):
            requests, others = answered(), handed_back()
            second = int(time.time())
            for data in requests + others:
                client.sendto(data, to)
            misses = poll_misses(fast, len(others))
            replies = {
                parse_message(r).transaction_id: r for r in (client.recv(2048) for _ in requests)
            }
            if int(time.time()) == second:
                break
        assert misses == others  # unchanged, in order
        reference, _ = make_core(config=TurnConfig(realm="native.example"))
        reference.nonces = core.nonces
        for data in requests:
            (expected,) = reference.handle_client(data, ft, 0.0, second + 0.5)
            assert replies[data[8:20]] == expected.data  # type: ignore[union-attr]
        # Counted as the core counts them, once.
        taken = fast.take_challenges()
        assert fast.take_challenges() == ([], 0, 0)
        counted, _ = make_core()
        counted.count_challenges(*taken)
        assert counted.counters == reference.counters
        assert taken[1:] == (len(requests), 0)


def random_request(rnd: random.Random) -> bytes:
    """A request of any method and class, with attributes of every kind the engine must tell
    apart (signed ones, RESERVATION-TOKEN, FINGERPRINT anywhere, unknown ones, any lengths), now
    and then cut, its length field lying, or a byte flipped."""
    method = rnd.choice((*TURN_METHODS, *TURN_METHODS, C.BINDING, C.SEND, 0x00C, 0x0FF))
    cls = rnd.choice((C.REQUEST,) * 6 + (C.INDICATION, C.SUCCESS, C.ERROR))
    pool = [
        C.SOFTWARE, 0x7F01, 0xC0DE, C.LIFETIME, C.USERNAME, C.REALM, C.NONCE, C.FINGERPRINT,
        C.MESSAGE_INTEGRITY, C.MESSAGE_INTEGRITY_SHA256, C.RESERVATION_TOKEN, C.EVEN_PORT,
    ]  # fmt: skip
    attrs = []
    for _ in range(rnd.randrange(4)):
        kind = rnd.choice(pool)
        size = {C.MESSAGE_INTEGRITY: 20, C.MESSAGE_INTEGRITY_SHA256: 32, C.FINGERPRINT: 4}
        n = size.get(kind, rnd.randrange(0, 40)) if rnd.random() < 0.9 else rnd.randrange(40)
        attrs.append((kind, rnd.randbytes(n)))
    data = encode_message(method, cls, rnd.randbytes(12), attrs, fingerprint=rnd.random() < 0.5)
    what = rnd.random()
    if what < 0.05:
        data = data[: rnd.randrange(len(data))]
    elif what < 0.1:
        data = lying_length(data, rnd.choice((-8, -4, -2, 2, 4, 8)))
    elif what < 0.15:
        at = rnd.randrange(len(data))
        data = data[:at] + bytes([data[at] ^ (1 << rnd.randrange(8))]) + data[at + 1 :]
    return data


def test_random_requests_are_answered_natively_exactly_when_the_core_challenges(
    fast: FastPath,
) -> None:
    """Over 300 random requests the engine answers those the core answers with its challenge
    (signed ones and RESERVATION-TOKEN left to the core), with the core's bytes, and hands back
    every other one unchanged."""
    config = TurnConfig(realm="native.example", max_challenges=100_000)
    core, _ = make_core(config=config)
    assert fast.answer_challenges(core.native_challenge()) is None
    rnd = random.Random(5766)
    with listening(fast, HOST) as (client, to, ft):
        for _ in range(3):
            sent = [random_request(rnd) for _ in range(300)]
            second = int(time.time())
            for data in sent:
                client.sendto(data, to)
            reference, _ = make_core(config=config)
            expected: dict[bytes, bytes] = {}
            for data in sent:
                out = reference.handle_client(data, ft, 0.0, second + 0.5)
                if not out or not isinstance(out[0], ToClient):
                    continue
                reply = parse_message(out[0].data)
                code = A.decode_error_code(reply.get(C.ERROR_CODE) or b"\0\0\3\0")[0]
                plain = parse_message(data)
                signed = plain.integrity_offset >= 0 or plain.integrity_sha256_offset >= 0
                if code == 401 and not signed and not plain.has(C.RESERVATION_TOKEN):
                    expected[data] = out[0].data
            misses = poll_misses(fast, len(sent) - len(expected))
            replies = [client.recv(2048) for _ in expected]
            if int(time.time()) == second:
                break
        assert 30 <= len(expected) <= 250, len(expected)  # both kinds well represented
        assert misses == [d for d in sent if d not in expected]
        assert replies == list(expected.values())


def test_the_rate_holds_per_source_and_a_long_realm_stays_with_the_core(fast: FastPath) -> None:
    core, _ = make_core(config=TurnConfig(max_challenges=20))
    assert fast.answer_challenges(core.native_challenge()) is None
    listener, flooder, other = bound(HOST), bound("127.0.0.3"), bound("127.0.0.4")
    try:
        listener.setblocking(False)
        fast.engine.add_socket(listener.fileno(), LISTENER)
        to = listener.getsockname()
        begin = time.monotonic()
        for i in range(200):
            flooder.sendto(request(TURN_METHODS[i % 6]), to)
            if i % 50 == 49:
                pump(fast, i + 1)
        for _ in range(5):
            other.sendto(request(C.ALLOCATE), to)
        pump(fast, 205)
        seconds = time.monotonic() - begin
        got = {s: drain(s) for s in (flooder, other)}
        assert 20 <= got[flooder] <= 20 + 20 * seconds + 1, (got, seconds)
        assert got[other] == 5
        requests, answers, dropped = fast.take_challenges()
        assert answers == got[flooder] + 5 and dropped == 200 - got[flooder]
        assert sum(n for _, n in requests) == 205
        # The requests the core answers (RESERVATION-TOKEN) spend the same rate: over it they
        # are dropped here, under it handed on.
        claim = [(C.RESERVATION_TOKEN, b"t" * 8)]
        begin = time.monotonic()
        for _ in range(30):  # the flooder's bucket (refilled meanwhile) emptied again
            flooder.sendto(request(C.REFRESH), to)
        for _ in range(10):
            flooder.sendto(request(C.ALLOCATE, claim), to)
        other.sendto(request(C.ALLOCATE, claim), to)
        handed: list[tuple[str, int]] = []
        for _ in range(100):
            handed += [addr for _, _, addr in fast.engine.poll(10)]
            stats = fast.stats()
            if len(handed) + stats["challenges"] + stats["challenges_dropped"] >= 205 + 41:
                break
        seconds = time.monotonic() - begin
        _, answers, dropped_now = fast.take_challenges()
        assert answers + dropped_now + handed.count(flooder.getsockname()) == 40
        assert handed.count(other.getsockname()) == 1
        assert answers + handed.count(flooder.getsockname()) <= 20 + 1 + 20 * seconds, seconds
        drain(flooder, 0.1)
        # A realm the engine has no room for: switched off, the core answers.
        huge, _ = make_core(config=TurnConfig(realm="r" * 1000))
        why = fast.answer_challenges(huge.native_challenge())
        assert why is not None and "--realm" in why and "1024 bytes" in why, why
        fast.answer_challenges(None)
        other.sendto(request(C.ALLOCATE), to)
        assert len(poll_misses(fast, 1)) == 1
    finally:
        for s in (listener, flooder, other):
            s.close()


def drain(sock: socket.socket, quiet: float = 0.3) -> int:
    sock.settimeout(quiet)
    count = 0
    try:
        while True:
            assert parse_message(sock.recv(4096)).cls == C.ERROR
            count += 1
    except TimeoutError:
        return count


# -- a running server: /metrics, the rate, a client's whole flow ---------------------------------


def counts(server: RunningServer) -> dict[str, float]:
    text = http(server, "GET", "/metrics")[1]
    found = {
        f"request.{name}": metric(text, "iceward_stun_requests_total", method=name)
        for name in ("Allocate", "Refresh", "CreatePermission", "ChannelBind")
    }
    found["error.401"] = metric(text, "iceward_stun_errors_total", code="401")
    found["drop.challenge_rate"] = metric(text, "iceward_dropped_total", reason="challenge_rate")
    found["drop.malformed"] = metric(text, "iceward_dropped_total", reason="malformed")
    return found


def test_a_server_counts_every_401_holds_the_rate_and_its_nonce_works(
    make_server: MakeServer,
) -> None:
    server = make_server("--max-challenges", "25", tls=False)
    to = (HOST, server.port)
    client, flooder, other = bound("127.0.0.2"), bound("127.0.0.3"), bound("127.0.0.4")
    try:
        before = counts(server)
        sent: Counter[str] = Counter()
        for method, name in ((C.ALLOCATE, "Allocate"), (C.REFRESH, "Refresh")) * 5:
            client.sendto(request(method, fingerprint=True), to)
            sent[f"request.{name}"] += 1
        for _ in range(2):  # answered by the core, counted alike
            client.sendto(request(C.ALLOCATE, [(C.RESERVATION_TOKEN, os.urandom(8))]), to)
            sent["request.Allocate"] += 1
        for data in handed_back()[7:]:  # malformed: dropped by the core, never answered
            client.sendto(data, to)
        assert drain(client) == 12
        begin = time.monotonic()
        for i in range(150):  # every tenth one for the core (a RESERVATION-TOKEN): one rate
            if i % 10 == 9:
                data, name = request(C.ALLOCATE, [(C.RESERVATION_TOKEN, os.urandom(8))]), "Allocate"
            elif i % 2:
                data, name = request(C.CHANNEL_BIND), "ChannelBind"
            else:
                data, name = request(C.CREATE_PERMISSION), "CreatePermission"
            flooder.sendto(data, to)
            sent[f"request.{name}"] += 1
        for _ in range(5):
            other.sendto(request(C.ALLOCATE), to)
        answered_flood = drain(flooder)
        seconds = time.monotonic() - begin
        assert drain(other) == 5
        assert 25 <= answered_flood <= 25 + 25 * seconds + 1, (answered_flood, seconds)
        sent["request.Allocate"] += 5
        after = counts(server)
        delta = {k: after[k] - before[k] for k in after}
        assert delta == {
            **{k: float(sent[k]) for k in delta if k.startswith("request.")},
            "error.401": 12.0 + answered_flood + 5,
            "drop.challenge_rate": 150.0 - answered_flood,
            "drop.malformed": float(len(handed_back()) - 7),
        }
        # The nonce of a 401 (the engine's, on the native path) signs the next request.
        turn = BlockingTurnClient(to, "alice", "wonderland", sock=client)
        assert turn.allocate()
        turn.refresh(0)
    finally:
        for s in (client, flooder, other):
            s.close()
    assert server.proc.poll() is None
