"""The core's side of RFC 6062 TCP relaying, sans-IO: what Allocate, Connect, ConnectionBind and
an incoming peer connection decide, and what the adapter is asked to do."""

from __future__ import annotations

import os

from iceward.stun import attributes as A
from iceward.stun import constants as C
from iceward.stun.message import encode_message
from iceward.turn.allocation import FiveTuple
from iceward.turn.events import DataConnectionBound, PeerConnect, ToClient
from iceward.turn.server import TurnConfig, TurnServer
from tests.turn.helpers import REALM, SERVER, Client, error_code, make_server, responses

PEER = ("198.51.100.7", 443)
TCP = [(C.REQUESTED_TRANSPORT, A.encode_one_byte(C.TRANSPORT_TCP))]


def tcp_client(server: TurnServer, port: int = 40000) -> Client:
    return Client(server, FiveTuple("tcp", ("203.0.113.5", port), SERVER))


def signed(client: Client, method: int, attrs: list[tuple[int, bytes]], txid: bytes) -> bytes:
    full = [
        *attrs,
        (C.USERNAME, client.username.encode()),
        (C.REALM, REALM.encode()),
        (C.NONCE, (client.nonce or "").encode()),
    ]
    return encode_message(method, C.REQUEST, txid, full, integrity_key=client.key)


def test_tcp_allocation_refuses_udp_only_attributes_channels_and_workers() -> None:
    server, _ = make_server()
    client = tcp_client(server)
    reply = client.request(C.ALLOCATE, [*TCP, (C.DONT_FRAGMENT, b"")])
    assert error_code(reply) == 400
    assert client.request(C.ALLOCATE, TCP).cls == C.SUCCESS
    assert server.allocations[0].tcp
    txid = os.urandom(12)
    reply = client.request(
        C.CHANNEL_BIND,
        [
            (C.CHANNEL_NUMBER, A.encode_channel_number(0x4000)),
            (C.XOR_PEER_ADDRESS, A.encode_xor_address(PEER, txid)),
        ],
        txid=txid,
    )
    assert error_code(reply) == 400
    client.create_permission(PEER)
    txid = os.urandom(12)
    send = [(C.XOR_PEER_ADDRESS, A.encode_xor_address(PEER, txid)), (C.DATA_ATTR, b"x")]
    assert client.send_raw(encode_message(C.SEND, C.INDICATION, txid, send)) == []
    assert server.counters["drop.send_indication_tcp"] == 1
    refusing, _ = make_server(config=TurnConfig(realm=REALM, tcp_refusal="not here"))
    assert error_code(tcp_client(refusing).request(C.ALLOCATE, TCP)) == 442


def test_connect_needs_policy_and_permission_then_answers_with_the_outcome() -> None:
    server, _ = make_server()
    client = tcp_client(server)
    client.request(C.ALLOCATE, TCP)
    txid = os.urandom(12)
    peer_attr = [(C.XOR_PEER_ADDRESS, A.encode_xor_address(PEER, txid))]
    assert error_code(client.request(C.CONNECT, peer_attr, txid=txid)) == 403  # no permission
    internal = [(C.XOR_PEER_ADDRESS, A.encode_xor_address(("10.0.0.1", 80), txid))]
    assert error_code(client.request(C.CONNECT, internal, txid=txid)) == 403
    assert server.counters["peer.refused"] == 1
    client.create_permission(PEER)
    out = client.send_raw(signed(client, C.CONNECT, peer_attr, txid))
    assert responses(out) == [] and isinstance(out[0], PeerConnect)  # answered later
    conn = out[0].connection
    assert error_code(client.request(C.CONNECT, peer_attr, txid=txid)) == 446
    reply = responses(server.connect_result(conn.id, True, client.now))[0]
    assert reply.cls == C.SUCCESS and A.decode_u32(reply.get(C.CONNECTION_ID) or b"") == conn.id

    data = tcp_client(server, 40001)
    bind = [(C.CONNECTION_ID, A.encode_u32(conn.id))]
    unknown = [(C.CONNECTION_ID, b"\0\0\0\1")]
    assert error_code(data.request(C.CONNECTION_BIND, unknown)) == 400  # (learns the nonce)
    out = data.send_raw(signed(data, C.CONNECTION_BIND, bind, os.urandom(12)))
    assert responses(out)[0].cls == C.SUCCESS
    assert [(o.connection, o.five_tuple) for o in out if isinstance(o, DataConnectionBound)] == [
        (conn, data.five_tuple)
    ]
    again = data.send_raw(signed(data, C.CONNECTION_BIND, bind, os.urandom(12)))
    assert error_code(responses(again)[0]) == 400  # bound already

    other = ("198.51.100.8", 80)
    client.create_permission(other)
    out = client.send_raw(
        signed(client, C.CONNECT, [(C.XOR_PEER_ADDRESS, A.encode_xor_address(other, txid))], txid)
    )
    assert isinstance(out[0], PeerConnect)
    failed = responses(server.connect_result(out[0].connection.id, False, client.now))[0]
    assert error_code(failed) == 447
    assert server.tcp.get(out[0].connection.id) is None


def test_incoming_peer_needs_a_permission_and_is_announced() -> None:
    server, _ = make_server()
    client = tcp_client(server)
    client.request(C.ALLOCATE, TCP)
    relay = server.allocations[0].relays[C.FAMILY_IPV4]
    assert server.accept_peer(relay.id, PEER, client.now) == (None, [])
    client.create_permission(PEER)
    connection_id, out = server.accept_peer(relay.id, PEER, client.now)
    assert connection_id is not None and isinstance(out[0], ToClient)
    attempt = responses(out)[0]
    assert (attempt.method, attempt.cls) == (C.CONNECTION_ATTEMPT, C.INDICATION)
    assert A.decode_u32(attempt.get(C.CONNECTION_ID) or b"") == connection_id
    data = tcp_client(server, 40002)
    data.request(C.CONNECTION_BIND, [(C.CONNECTION_ID, A.encode_u32(connection_id))])
    bind = [(C.CONNECTION_ID, A.encode_u32(connection_id))]
    assert server.counters["tcp.bound"] == 1
    assert (
        error_code(
            responses(data.send_raw(signed(data, C.CONNECTION_BIND, bind, os.urandom(12))))[0]
        )
        == 400
    )
    server.delete(client.five_tuple)
    assert server.tcp.get(connection_id) is None and len(server.tcp) == 0
