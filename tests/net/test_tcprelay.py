"""RFC 6062 TCP relaying through a real ``iceward serve``: Connect, ConnectionAttempt,
ConnectionBind and spliced data connections, with TCP peers written here on 127.0.0.2.

One server (``--workers 1``) serves the module; a second one with two workers shows data
connections piped to the worker that holds their peer connection. The peer policy allows
127.0.0.1 (the relayed addresses, for ``turnutils_uclient``'s relay-to-relay mode) and 127.0.0.2
(the peers); 127.0.0.3 stays an internal address refused by the default policy. coturn's
``turnutils_uclient -T`` is the independent client.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import socketserver
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iceward.net.bandwidth import burst_of
from iceward.net.steering import worker_for
from iceward.stun import attributes as A
from iceward.stun import constants as C
from iceward.stun.message import encode_message, parse_message
from tests.conftest import HOST, RunningServer, require_tool, start_server, stop_process
from tests.net.turnclient import BlockingTurnClient, TurnError

PEER_HOST = "127.0.0.2"
DENIED_HOST = "127.0.0.3"
MAX_CONNECTIONS = 4
USER, PASSWORD = "alice", "wonderland"
ICEWARD = (sys.executable, "-m", "iceward")
# -T TCP relay, -t over TCP, -s no channels (none on TCP allocations), -n messages per session,
# -m sessions (each Connects to the others' relayed addresses), -l bytes, -e the peer IP its
# sessions get a permission for (the relayed addresses' IP).
UCLIENT_TCP_RELAY = (
    "-T",
    "-t",
    "-s",
    "-n",
    "20",
    "-l",
    "170",
    "-e",
    HOST,
    "-u",
    USER,
    "-w",
    PASSWORD,
)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[str, int]]:
    """A TCP echo peer on 127.0.0.2."""
    server = _EchoServer((PEER_HOST, 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[0], server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    workdir = tmp_path_factory.mktemp("tcprelay")
    running = start_server(
        workdir,
        "--allow-peer",
        f"{HOST}/32",
        "--allow-peer",
        f"{PEER_HOST}/32",
        "--max-tcp-connections",
        str(MAX_CONNECTIONS),
        "--usage-interval",
        "0.5",
        allow_loopback=False,
        workers=1,
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def admin_key(server: RunningServer) -> str:
    proc = subprocess.run(
        [*ICEWARD, "keys", "add", "ops", "--admin", "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# -- a client of RFC 6062 on top of the blocking test client ----------------------------------
def control(server: RunningServer) -> tuple[BlockingTurnClient, tuple[str, int]]:
    """A TCP control connection with a TCP allocation, and its relayed address."""
    client = BlockingTurnClient((HOST, server.port), USER, PASSWORD, transport="tcp")
    txid = os.urandom(12)
    attrs = [(C.REQUESTED_TRANSPORT, A.encode_one_byte(C.TRANSPORT_TCP))]
    reply = client.request(C.ALLOCATE, attrs, txid)
    relayed = A.decode_xor_address(reply.get(C.XOR_RELAYED_ADDRESS) or b"", txid)
    return client, relayed


def connect(client: BlockingTurnClient, peer: tuple[str, int]) -> int:
    txid = os.urandom(12)
    attrs = [(C.XOR_PEER_ADDRESS, A.encode_xor_address(peer, txid))]
    reply = client.request(C.CONNECT, attrs, txid)
    return A.decode_u32(reply.get(C.CONNECTION_ID) or b"")


def data_connection(server: RunningServer, connection_id: int) -> tuple[socket.socket, bytes]:
    """A new connection to the server bound to ``connection_id`` (then raw bytes), and the
    relayed bytes that came in the same read as the ConnectionBind response."""
    client = BlockingTurnClient((HOST, server.port), USER, PASSWORD, transport="tcp", timeout=5)
    attrs = [(C.CONNECTION_ID, A.encode_u32(connection_id))]
    client.request(C.CONNECTION_BIND, attrs, os.urandom(12))
    return client.sock, bytes(client._stream)


def exchange(sock: socket.socket, payload: bytes, timeout: float = 15.0) -> bytes:
    """Send ``payload`` (from a thread: a relay with flow control holds back what its reader
    does not take) and read as many bytes back."""
    sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
    sender.start()
    got = bytearray()
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    while len(got) < len(payload) and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    sender.join(timeout)
    return bytes(got)


def closed_soon(sock: socket.socket, timeout: float = 15.0) -> bool:
    """The server closed ``sock`` (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def metrics(server: RunningServer) -> str:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if wanted else "") + r" (\S+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def peer_refusals(text: str) -> float:
    return sum(float(v) for v in re.findall(r"iceward_peer_refusals_total\{[^}]*\} (\S+)", text))


def allocation_of(server: RunningServer, key: str, relayed: tuple[str, int]) -> dict[str, Any]:
    request = urllib.request.Request(server.http_url + "/admin/v1/allocations")
    request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=5) as response:
        body = json.loads(response.read())
    allocations = body["allocations"] if isinstance(body, dict) else body
    for alloc in allocations:
        if f"{relayed[0]}:{relayed[1]}" in alloc["relayed"]:
            return dict(alloc)
    raise AssertionError(f"no allocation for {relayed} in {allocations}")


# -- the tests ---------------------------------------------------------------------------------
def test_connect_bind_and_relay_both_ways(
    server: RunningServer, echo: tuple[str, int], admin_key: str
) -> None:
    """Allocate TCP, CreatePermission, Connect, ConnectionBind on a second connection; bytes
    both ways through the echo peer, counted for the admin API; a second Connect to the same
    peer is 446; deleting the allocation closes the data connection."""
    client, relayed = control(server)
    assert relayed[0] == HOST
    client.create_permission(echo)
    connection_id = connect(client, echo)
    with pytest.raises(TurnError) as again:
        connect(client, echo)
    assert again.value.code == 446
    data, early = data_connection(server, connection_id)
    assert early == b""  # the echo peer says nothing first
    payload = os.urandom(300_000)  # more than a socket buffer: flow control both ways
    assert exchange(data, payload) == payload
    assert exchange(data, b"ping") == b"ping"
    traffic: dict[str, int] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        alloc = allocation_of(server, admin_key, relayed)
        traffic = alloc["traffic"]
        if traffic["bytes_to_client"] == len(payload) + 4:
            break
        time.sleep(0.05)
    assert traffic["bytes_to_peer"] == len(payload) + 4, traffic
    assert traffic["bytes_to_client"] == len(payload) + 4, traffic
    assert traffic["packets_to_peer"] > 0 and traffic["packets_to_client"] > 0
    assert alloc["client"]["transport"] == "tcp"
    assert alloc["tcpConnections"] == [
        {"id": connection_id, "peer": f"{echo[0]}:{echo[1]}", "state": "bound"}
    ]
    client.refresh(0)  # the allocation ends: its data connection with it
    assert closed_soon(data)
    client.close()
    # Its usage records (each counts its own interval; the last is final): the same bytes in
    # all, the peer listed.
    records: list[tuple[int, int, str, str, int]] = []
    deadline = time.monotonic() + 15
    while not any(r[4] for r in records) and time.monotonic() < deadline:
        with sqlite3.connect(server.data_dir / "iceward.db") as db:
            records = db.execute(
                "SELECT bytes_to_peer, bytes_to_client, transport, peers, final "
                "FROM usage_records WHERE allocation LIKE ?",
                (f"%/{alloc['id']}",),
            ).fetchall()
        time.sleep(0.1)
    assert any(r[4] for r in records), records
    assert sum(r[0] for r in records) == len(payload) + 4
    assert sum(r[1] for r in records) == len(payload) + 4
    assert {r[2] for r in records} == {"tcp"}
    assert any(echo[0] in json.loads(r[3]) for r in records)


def test_max_bps_holds_a_tcp_relay_to_the_rate_without_losing_a_byte(
    tmp_path: Path, echo: tuple[str, int]
) -> None:
    """``--max-bps`` on a TCP allocation: a stream cannot drop, so the relay sends no more than
    the allocation's budget holds and stops reading the side that is ahead until the rate has
    earned the rest; every byte arrives, in order. The echo peer sends it all back, so the
    client's bytes went through both directions' buckets: at no moment has it more than one
    bucket (a quarter of a second's worth) beyond the rate since the start. Forwarding a whole
    read and paying after broke that envelope at once: asyncio reads up to 256 KiB at a time."""
    rate = 200_000
    burst = burst_of(rate)
    limited = start_server(
        tmp_path,
        "--allow-peer",
        f"{PEER_HOST}/32",
        "--max-bps",
        str(rate),
        allow_loopback=False,
        workers=1,
    )
    try:
        client, _ = control(limited)
        client.create_permission(echo)
        data, _ = data_connection(limited, connect(client, echo))
        payload = os.urandom(600_000)
        sender = threading.Thread(target=data.sendall, args=(payload,), daemon=True)
        got = bytearray()
        data.settimeout(30)
        ahead = 0.0  # the most the client ever had beyond burst + rate * elapsed
        begin = time.monotonic()
        sender.start()
        while len(got) < len(payload):
            chunk = data.recv(65536)
            assert chunk, "closed"
            got += chunk
            ahead = max(ahead, len(got) - burst - rate * (time.monotonic() - begin))
        elapsed = time.monotonic() - begin
        sender.join(5)
        assert got == payload
        assert ahead <= 4096, f"{ahead:.0f} bytes beyond the bucket and the rate"
        # ... and not held below it: the whole stream took about what the rate allows.
        assert elapsed <= 1.3 * (len(payload) - burst) / rate, f"{elapsed:.2f} s"
        data.close()
        client.close()
    finally:
        limited.stop()


def test_connection_attempt_from_a_permitted_peer(server: RunningServer) -> None:
    """A peer with a permission connecting in is announced (ConnectionAttempt) and bound; one
    without is closed; closing either end of a pair closes the other."""
    client, relayed = control(server)
    client.create_permission((PEER_HOST, 0))
    stranger = socket.create_connection(relayed, timeout=5, source_address=("127.0.0.4", 0))
    assert closed_soon(stranger)  # no permission for 127.0.0.4
    stranger.close()
    peer = socket.create_connection(relayed, timeout=5, source_address=(PEER_HOST, 0))
    peer.sendall(b"early bytes")  # before the bind: held for the client
    attempt = parse_message(client.recv_raw())
    assert (attempt.method, attempt.cls) == (C.CONNECTION_ATTEMPT, C.INDICATION)
    assert (
        A.decode_xor_address(attempt.get(C.XOR_PEER_ADDRESS) or b"", attempt.transaction_id)
        == peer.getsockname()
    )
    data, early = data_connection(server, A.decode_u32(attempt.get(C.CONNECTION_ID) or b""))
    data.settimeout(5)
    while len(early) < len(b"early bytes"):  # held, then sent right after the response
        early += data.recv(100)
    assert early == b"early bytes"
    data.sendall(b"to the peer")
    peer.settimeout(5)
    assert peer.recv(100) == b"to the peer"
    peer.close()
    assert closed_soon(data)
    # The other way round: the client's data connection closes, the peer's goes with it.
    second = socket.create_connection(relayed, timeout=5, source_address=(PEER_HOST, 0))
    attempt = parse_message(client.recv_raw())
    data, _ = data_connection(server, A.decode_u32(attempt.get(C.CONNECTION_ID) or b""))
    data.close()
    assert closed_soon(second)
    second.close()
    client.close()


def test_denied_peer_is_refused_before_any_syn(server: RunningServer) -> None:
    """Connect toward an internal address: 403, counted as a peer refusal, and the address
    never sees a connection."""
    listener = socket.create_server((DENIED_HOST, 0))
    before = peer_refusals(metrics(server))
    client, _ = control(server)
    with pytest.raises(TurnError) as refused:
        connect(client, listener.getsockname())
    assert refused.value.code == 403
    assert select.select([listener], [], [], 0.3)[0] == []  # nothing was accepted: no SYN
    listener.close()
    assert peer_refusals(metrics(server)) == before + 1
    client.close()


def test_no_tcp_relay_refuses_tcp_allocations_and_serves_the_rest(tmp_path: Path) -> None:
    """``--no-tcp-relay`` (coturn's no-tcp-relay): a TCP Allocate gets 442 saying so; TURN over
    TCP with UDP relays goes on."""
    off = start_server(tmp_path, "--no-tcp-relay", workers=1)
    try:
        with pytest.raises(TurnError) as refused:
            control(off)
        assert refused.value.code == 442
        assert "TCP relaying is off" in str(refused.value)
        client = BlockingTurnClient((HOST, off.port), USER, PASSWORD, transport="tcp")
        txid = os.urandom(12)
        udp_relay = [(C.REQUESTED_TRANSPORT, A.encode_one_byte(C.TRANSPORT_UDP))]
        reply = client.request(C.ALLOCATE, udp_relay, txid)
        assert reply.get(C.XOR_RELAYED_ADDRESS) is not None
        client.close()
    finally:
        off.stop()


def test_refusals_and_hostile_data_connections(server: RunningServer) -> None:
    """Unknown CONNECTION-ID, no permission, a closed port (447), ChannelBind on TCP, TCP over
    UDP; a ConnectionBind with a lying length or garbage is closed; a Connect flood stops at
    the per-allocation cap (508), counted in /metrics; the server serves on."""
    client, _ = control(server)
    with pytest.raises(TurnError) as no_permission:
        connect(client, (PEER_HOST, 9))
    assert no_permission.value.code == 403
    client.create_permission((PEER_HOST, 0))
    closed_port = socket.create_server((PEER_HOST, 0))
    port = closed_port.getsockname()[1]
    closed_port.close()
    with pytest.raises(TurnError) as failed:
        connect(client, (PEER_HOST, port))
    assert failed.value.code == 447
    txid = os.urandom(12)
    with pytest.raises(TurnError) as channel:
        client.request(
            C.CHANNEL_BIND,
            [
                (C.CHANNEL_NUMBER, A.encode_channel_number(0x4000)),
                (C.XOR_PEER_ADDRESS, A.encode_xor_address((PEER_HOST, port), txid)),
            ],
            txid,
        )
    assert channel.value.code == 400
    with pytest.raises(TurnError) as unknown:
        data_connection(server, 0x12345678)
    assert unknown.value.code == 400
    udp = BlockingTurnClient((HOST, server.port), USER, PASSWORD)
    with pytest.raises(TurnError) as over_udp:
        udp.request(
            C.ALLOCATE,
            [(C.REQUESTED_TRANSPORT, A.encode_one_byte(C.TRANSPORT_TCP))],
            os.urandom(12),
        )
    assert over_udp.value.code == 400
    udp.close()

    # A ConnectionBind header claiming 4 KiB that never come, then garbage: closed, no crash.
    for hostile in (
        encode_message(C.CONNECTION_BIND, C.REQUEST, os.urandom(12), [])[:2]
        + struct.pack("!H", 4096)
        + os.urandom(16),
        b"\xff" * 64,
    ):
        sock = socket.create_connection((HOST, server.port), timeout=5)
        sock.sendall(hostile)
        if hostile[0] == 0xFF:
            assert closed_soon(sock)
        sock.close()

    # A flood of Connects to distinct listening peers: pending ones count against the cap.
    peers = [socket.create_server((PEER_HOST, 0)) for _ in range(MAX_CONNECTIONS + 2)]
    codes = []
    for peer in peers:
        try:
            connect(client, peer.getsockname())
            codes.append(0)
        except TurnError as exc:
            codes.append(exc.code)
    assert codes == [0] * MAX_CONNECTIONS + [508, 508], codes
    text = metrics(server)
    assert metric(text, "iceward_tcp_relay_connections_total", event="refused_cap") >= 2
    assert metric(text, "iceward_tcp_relay_connections_total", event="connect_failed") >= 1
    assert metric(text, "iceward_tcp_relay_connections_total", event="bind_unknown") >= 1
    for peer in peers:
        peer.close()
    client.close()
    # Still serving: a fresh allocation works.
    again, _ = control(server)
    again.close()


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_turnutils_uclient_tcp_relay(server: RunningServer, transport: str) -> None:
    """coturn's client in TCP-relay mode (-T), over TCP and TLS: its sessions Connect to each
    other's relayed addresses and stream messages over bound data connections; none lost."""
    uclient = require_tool("turnutils_uclient")
    port = server.tls_port if transport == "tls" else server.port
    tls = ("-S",) if transport == "tls" else ()
    proc = subprocess.run(
        [uclient, *UCLIENT_TCP_RELAY, "-m", "2", *tls, "-p", str(port), HOST],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    totals = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", out)
    assert totals, out[-3000:]
    sent, received = map(int, totals[-1])
    assert sent > 0 and received == sent, out[-3000:]
    assert re.findall(r"Total lost packets (\d+)", out)[-1:] == ["0"], out[-3000:]


def on_worker(server: RunningServer, worker: int, workers: int) -> socket.socket:
    """A TCP connection to the server from a source port steered to ``worker``."""
    while True:
        sock = socket.socket()
        sock.bind((HOST, 0))
        if worker_for(sock.getsockname(), workers) == worker:
            sock.connect((HOST, server.port))
            return sock
        sock.close()


def test_data_connections_reach_the_owning_worker(tmp_path: Path, echo: tuple[str, int]) -> None:
    """Two workers: a ConnectionBind steered to the worker that does not hold the peer
    connection is piped to the one that does (Connect and ConnectionAttempt alike), and
    coturn's client relays through them with nothing lost."""
    running = start_server(
        tmp_path,
        "--allow-peer",
        f"{HOST}/32",
        "--allow-peer",
        f"{PEER_HOST}/32",
        allow_loopback=False,
        workers=2,
        tls=False,
        http=False,
    )
    try:
        for control_worker in (0, 1):
            client = BlockingTurnClient(
                (HOST, running.port),
                USER,
                PASSWORD,
                transport="tcp",
                sock=on_worker(running, control_worker, 2),
            )
            txid = os.urandom(12)
            reply = client.request(
                C.ALLOCATE, [(C.REQUESTED_TRANSPORT, A.encode_one_byte(C.TRANSPORT_TCP))], txid
            )
            relayed = A.decode_xor_address(reply.get(C.XOR_RELAYED_ADDRESS) or b"", txid)
            client.create_permission(echo)
            client.create_permission((PEER_HOST, 0))
            data = BlockingTurnClient(
                (HOST, running.port),
                USER,
                PASSWORD,
                transport="tcp",
                timeout=5,
                sock=on_worker(running, 1 - control_worker, 2),
            )
            bind = [(C.CONNECTION_ID, A.encode_u32(connect(client, echo)))]
            data.request(C.CONNECTION_BIND, bind, os.urandom(12))
            payload = os.urandom(100_000)
            assert exchange(data.sock, payload) == payload
            # Passive: a peer connects in; the bind again comes through the other worker.
            peer = socket.create_connection(relayed, timeout=5, source_address=(PEER_HOST, 0))
            attempt = parse_message(client.recv_raw())
            assert attempt.method == C.CONNECTION_ATTEMPT
            passive = BlockingTurnClient(
                (HOST, running.port),
                USER,
                PASSWORD,
                transport="tcp",
                timeout=5,
                sock=on_worker(running, 1 - control_worker, 2),
            )
            bind = [(C.CONNECTION_ID, attempt.get(C.CONNECTION_ID) or b"")]
            passive.request(C.CONNECTION_BIND, bind, os.urandom(12))
            peer.sendall(b"in")
            passive.sock.settimeout(5)
            assert passive.sock.recv(10) == b"in"
            client.refresh(0)
            assert closed_soon(data.sock) and closed_soon(passive.sock)
            for closing in (peer, data.sock, passive.sock, client.sock):
                closing.close()
        port = str(running.port)
        proc = subprocess.run(
            [require_tool("turnutils_uclient"), *UCLIENT_TCP_RELAY, "-m", "2", "-p", port, HOST],
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        sent, received = map(int, re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", out)[-1])
        assert sent > 0 and received == sent, out[-3000:]
    finally:
        stop_process(running.proc)
