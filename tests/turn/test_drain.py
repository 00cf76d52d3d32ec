"""The core while it drains: 300 Try Alternate (signed, ALTERNATE-SERVER of the client's family,
ALTERNATE-DOMAIN on TLS), 508 without an alternate, and everything that exists keeps working."""

from __future__ import annotations

from iceward.stun import attributes as A
from iceward.stun import constants as C
from iceward.stun.integrity import verify_integrity
from iceward.turn.allocation import FiveTuple
from iceward.turn.drain import Alternate
from iceward.turn.events import ToPeer

from .helpers import SERVER, Client, error_code, make_server


class Alternates:
    """An alternate per (family of the client's address, transport), as the server's lookup."""

    def __init__(self, table: dict[tuple[bool, str], Alternate]) -> None:
        self.table = table
        self.asked: list[FiveTuple] = []

    def alternate_for(self, five_tuple: FiveTuple) -> Alternate | None:
        self.asked.append(five_tuple)
        return self.table.get((":" in five_tuple.client[0], five_tuple.transport))


V4 = Alternate(("198.51.100.7", 3478))
V6 = Alternate(("2001:db8::7", 3478))
TLS = Alternate(("198.51.100.7", 5349), "turn2.example.test")


def test_new_allocate_gets_a_signed_300_naming_the_alternate_of_the_clients_family() -> None:
    server, _ = make_server()
    lookup = Alternates({(False, "udp"): V4, (True, "udp"): V6, (False, "tls"): TLS})
    server.drain = lookup
    for client_ip, expected in (("203.0.113.5", V4), ("2001:db8:1::5", V6)):
        client = Client(server, FiveTuple("udp", (client_ip, 40000), SERVER))
        reply = client.allocate()
        assert reply.cls == C.ERROR and error_code(reply) == 300
        assert A.decode_error_code(reply.get(C.ERROR_CODE) or b"")[1] == "Try Alternate"
        assert A.decode_address(reply.get(C.ALTERNATE_SERVER) or b"") == expected.address
        assert reply.get(C.ALTERNATE_DOMAIN) is None  # not on TLS
        # Authenticated like the request: a client can trust where it is sent.
        assert reply.integrity_offset >= 0 and verify_integrity(reply, client.key)
        assert reply.fingerprint_offset >= 0
    assert server.allocations == []
    assert server.counters["drain.redirected"] == 2 and server.counters["error.300"] == 2

    tls = Client(server, FiveTuple("tls", ("203.0.113.9", 40001), SERVER))
    reply = tls.allocate()
    assert A.decode_address(reply.get(C.ALTERNATE_SERVER) or b"") == TLS.address
    assert reply.get(C.ALTERNATE_DOMAIN) == b"turn2.example.test"
    assert verify_integrity(reply, tls.key)


def test_unauthenticated_allocate_is_challenged_not_redirected() -> None:
    """No redirect for a stranger: the 300 comes only after the credential is checked."""
    server, _ = make_server()
    server.drain = lookup = Alternates({(False, "udp"): V4})
    reply = Client(server).allocate()  # the helper sends unsigned first, then signed
    assert error_code(reply) == 300
    assert len(lookup.asked) == 1
    wrong = Client(server, FiveTuple("udp", ("203.0.113.6", 40000), SERVER), password="nope")
    assert error_code(wrong.allocate()) == 401
    assert len(lookup.asked) == 1


def test_no_alternate_gets_508_server_draining() -> None:
    server, _ = make_server()
    server.drain = Alternates({})
    client = Client(server)
    reply = client.allocate()
    assert error_code(reply) == 508
    assert A.decode_error_code(reply.get(C.ERROR_CODE) or b"")[1] == "Server draining"
    assert reply.get(C.ALTERNATE_SERVER) is None
    assert verify_integrity(reply, client.key)
    assert server.counters["drain.refused"] == 1


def test_existing_allocation_keeps_refreshing_binding_and_relaying_while_draining() -> None:
    server, relays = make_server()
    client = Client(server)
    first = client.allocate()
    assert first.cls == C.SUCCESS
    server.drain = Alternates({(False, "udp"): V4})
    peer = ("198.51.100.20", 5000)
    assert client.refresh(600).cls == C.SUCCESS
    assert client.create_permission(peer).cls == C.SUCCESS
    assert client.channel_bind(0x4000, peer).cls == C.SUCCESS
    sent = client.send_indication(peer, b"hello")
    assert [type(o) for o in sent] == [ToPeer]
    # A retransmission of the Allocate that made it still gets its success, not a redirect.
    transport = [(C.REQUESTED_TRANSPORT, A.encode_one_byte(C.TRANSPORT_UDP))]
    again = client._send(C.ALLOCATE, transport, first.transaction_id, sign=True)
    assert again.cls == C.SUCCESS and again.transaction_id == first.transaction_id
    assert server.counters["drain.redirected"] == 0
    assert client.refresh(0).cls == C.SUCCESS
    assert server.allocations == [] and len(relays.released) == 1


def test_300_is_signed_with_message_integrity_sha256_when_the_request_was() -> None:
    server, _ = make_server()
    server.drain = Alternates({(False, "udp"): V4})
    client = Client(server, algorithm=C.ALGORITHM_SHA256)
    transport = [(C.REQUESTED_TRANSPORT, A.encode_one_byte(C.TRANSPORT_UDP))]
    reply = client.request(C.ALLOCATE, transport, sha256_mac=True)
    assert error_code(reply) == 300
    assert reply.integrity_sha256_offset > 0 and reply.integrity_offset < 0
    assert verify_integrity(reply, client.key)
