"""A sans-IO harness for the TURN core: a fake relay allocator and a client that signs requests."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

from iceward.stun import attributes as A
from iceward.stun import constants as C
from iceward.stun.integrity import long_term_key, verify_integrity
from iceward.stun.message import Message, encode_message, parse_message
from iceward.turn.allocation import Address, FiveTuple, Relay
from iceward.turn.auth import CredentialStore, NonceManager
from iceward.turn.events import Output, ToClient
from iceward.turn.policy import PeerPolicy
from iceward.turn.server import RelayUnavailable, TurnConfig, TurnServer

REALM = "example.test"
SERVER: Address = ("192.0.2.1", 3478)


class FakeRelays:
    """Hands out relay ports counting up from 50000; can be told to run out."""

    def __init__(self, families: frozenset[int] = frozenset({C.FAMILY_IPV4})) -> None:
        self._families = families
        self.next_port = 50000
        self.exhausted = False
        self.released: list[Relay] = []
        self.reserved: dict[bytes, Relay] = {}
        self._ids = itertools.count(1)

    def families(self) -> frozenset[int]:
        return self._families

    def allocate(
        self, family: int, *, even: bool = False, reserve_next: bool = False, tcp: bool = False
    ) -> tuple[Relay, bytes | None]:
        if self.exhausted:
            raise RelayUnavailable(508, "no free relay port")
        if family not in self._families:
            raise RelayUnavailable(440, "family not configured")
        if even and self.next_port & 1:
            self.next_port += 1
        port = self.next_port
        self.next_port += 2 if reserve_next else 1
        host = "2001:db8::1" if family == C.FAMILY_IPV6 else "192.0.2.1"
        relay = Relay(next(self._ids), family, (host, port))
        token = None
        if reserve_next:
            token = os.urandom(8)
            self.reserved[token] = Relay(next(self._ids), family, (host, port + 1))
        return relay, token

    def allocate_reserved(self, token: bytes) -> Relay:
        relay = self.reserved.pop(token, None)
        if relay is None:
            raise RelayUnavailable(508, "unknown token")
        return relay

    def release(self, relay: Relay) -> None:
        self.released.append(relay)


def make_server(
    *,
    config: TurnConfig | None = None,
    relays: FakeRelays | None = None,
    policy: PeerPolicy | None = None,
    secrets: tuple[str, ...] = ("s1",),
    users: dict[str, str] | None = None,
) -> tuple[TurnServer, FakeRelays]:
    relays = relays or FakeRelays()
    store = CredentialStore(REALM)
    for name, password in (users if users is not None else {"alice": "wonderland"}).items():
        store.add_user(name, password)
    store.set_secrets(secrets)
    server = TurnServer(
        config or TurnConfig(realm=REALM),
        store,
        NonceManager(b"k" * 32, 600),
        policy or PeerPolicy(),
        relays,  # type: ignore[arg-type]
    )
    return server, relays


def responses(outputs: list[Output]) -> list[Message]:
    return [parse_message(o.data) for o in outputs if isinstance(o, ToClient)]


def error_code(msg: Message) -> int | None:
    value = msg.get(C.ERROR_CODE)
    return A.decode_error_code(value)[0] if value else None


@dataclass
class Client:
    """A TURN client on one five-tuple that does the 401 dance once and signs what follows."""

    server: TurnServer
    five_tuple: FiveTuple = field(
        default_factory=lambda: FiveTuple("udp", ("203.0.113.5", 40000), SERVER)
    )
    username: str = "alice"
    password: str = "wonderland"
    now: float = 1_000_000.0
    nonce: str | None = None
    algorithm: int | None = None

    @property
    def key(self) -> bytes:
        return long_term_key(self.username, REALM, self.password, self.algorithm or C.ALGORITHM_MD5)

    def send_raw(self, data: bytes) -> list[Output]:
        return self.server.handle_client(data, self.five_tuple, self.now)

    def request(
        self,
        method: int,
        attrs: list[tuple[int, bytes]] | None = None,
        *,
        sign: bool = True,
        txid: bytes | None = None,
        sha256_mac: bool = False,
    ) -> Message:
        """Send a request; on a 401/438 challenge learn the nonce and retry once, signed."""
        attrs = list(attrs or [])
        txid = txid or os.urandom(12)
        if sign and self.nonce is None:
            first = self._send(method, attrs, txid, sign=False)
            if error_code(first) not in (401, 438):
                return first
            self.nonce = A.decode_text(first.get(C.NONCE) or b"", 763, "NONCE")
        reply = self._send(method, attrs, txid, sign=sign, sha256_mac=sha256_mac)
        if sign and error_code(reply) == 438:
            self.nonce = A.decode_text(reply.get(C.NONCE) or b"", 763, "NONCE")
            reply = self._send(method, attrs, txid, sign=True, sha256_mac=sha256_mac)
        return reply

    def _send(
        self,
        method: int,
        attrs: list[tuple[int, bytes]],
        txid: bytes,
        *,
        sign: bool,
        sha256_mac: bool = False,
    ) -> Message:
        full = list(attrs)
        key = None
        if sign:
            full += [
                (C.USERNAME, self.username.encode()),
                (C.REALM, REALM.encode()),
                (C.NONCE, (self.nonce or "").encode()),
            ]
            if self.algorithm is not None:
                full += [
                    (C.PASSWORD_ALGORITHM, A.encode_password_algorithm(self.algorithm)),
                    (
                        C.PASSWORD_ALGORITHMS,
                        A.encode_password_algorithm(C.ALGORITHM_MD5)
                        + A.encode_password_algorithm(C.ALGORITHM_SHA256),
                    ),
                ]
            key = self.key
        data = encode_message(
            method,
            C.REQUEST,
            txid,
            full,
            integrity_key=None if sha256_mac else key,
            integrity_sha256_key=key if sha256_mac else None,
            fingerprint=True,
        )
        replies = responses(self.send_raw(data))
        assert len(replies) == 1, f"expected one response, got {replies}"
        reply = replies[0]
        assert reply.transaction_id == txid
        if sign and reply.cls == C.SUCCESS:
            assert verify_integrity(reply, key or b""), "success response not signed with our key"
        return reply

    def allocate(self, extra: list[tuple[int, bytes]] | None = None) -> Message:
        attrs = [(C.REQUESTED_TRANSPORT, A.encode_one_byte(C.TRANSPORT_UDP)), *(extra or [])]
        return self.request(C.ALLOCATE, attrs)

    def relayed(self, reply: Message) -> list[Address]:
        return [
            A.decode_xor_address(v, reply.transaction_id)
            for v in reply.get_all(C.XOR_RELAYED_ADDRESS)
        ]

    def create_permission(self, *peers: Address) -> Message:
        txid = os.urandom(12)
        attrs = [(C.XOR_PEER_ADDRESS, A.encode_xor_address(p, txid)) for p in peers]
        return self.request(C.CREATE_PERMISSION, attrs, txid=txid)

    def channel_bind(self, number: int, peer: Address) -> Message:
        txid = os.urandom(12)
        attrs = [
            (C.CHANNEL_NUMBER, A.encode_channel_number(number)),
            (C.XOR_PEER_ADDRESS, A.encode_xor_address(peer, txid)),
        ]
        return self.request(C.CHANNEL_BIND, attrs, txid=txid)

    def refresh(self, lifetime: int | None = None) -> Message:
        attrs = [] if lifetime is None else [(C.LIFETIME, A.encode_u32(lifetime))]
        return self.request(C.REFRESH, attrs)

    def send_indication(self, peer: Address, data: bytes) -> list[Output]:
        txid = os.urandom(12)
        attrs = [(C.XOR_PEER_ADDRESS, A.encode_xor_address(peer, txid)), (C.DATA_ATTR, data)]
        return self.send_raw(encode_message(C.SEND, C.INDICATION, txid, attrs))
