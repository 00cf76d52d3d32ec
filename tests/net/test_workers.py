"""``iceward serve --workers 2``: real processes, real sockets, clients steered to their worker."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from iceward.net.steering import worker_for
from iceward.stun import attributes as A
from iceward.stun import constants as C
from tests.api.test_api import cli, eventually, http, metric

from ..conftest import HOST, RunningServer
from .turnclient import BlockingTurnClient, TurnError

MakeServer = Callable[..., RunningServer]
WORKERS = 2


def client_on(server: RunningServer, worker: int, user: str = "alice") -> BlockingTurnClient:
    """A UDP client whose source address the steering program sends to ``worker``."""
    for _ in range(200):
        client = BlockingTurnClient((HOST, server.port), user, server.users[user])
        if worker_for(client.sock.getsockname(), WORKERS) == worker:
            return client
        client.close()
    raise AssertionError("no source port maps to that worker")


@contextmanager
def echo_peer() -> Iterator[tuple[str, int]]:
    """A UDP peer that sends every datagram back where it came from, until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(0.1)
    done = threading.Event()

    def run() -> None:
        while not done.is_set():
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                continue
            sock.sendto(data, source)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()
    finally:
        done.set()
        thread.join(2)
        sock.close()


def round_trips(client: BlockingTurnClient, number: int, count: int) -> int:
    """Send ``count`` ChannelData messages one at a time; how many came back intact."""
    back = 0
    for i in range(count):
        payload = os.urandom(40) + i.to_bytes(4, "big")
        client.send_channel_data(number, payload)
        try:
            if client.receive_data() == (number, payload):
                back += 1
        except TimeoutError:
            pass
    return back


def admin(server: RunningServer) -> str:
    return cli(server, "keys", "add", "ops", "--admin")


def workers_now(server: RunningServer, key: str) -> list[dict[str, Any]]:
    status, doc, _ = http(server, "GET", "/admin/v1/workers", key=key)
    assert status == 200, doc
    return list(doc)


def error_code(reply: Any) -> int:
    assert reply.cls == C.ERROR, reply
    return A.decode_error_code(reply.get(C.ERROR_CODE) or b"")[0]


def test_clients_stay_on_their_worker_and_relay_across_workers(make_server: MakeServer) -> None:
    server = make_server("--relay-ports", "51000-51099", workers=WORKERS)
    key = admin(server)
    workers = workers_now(server, key)
    assert [w["index"] for w in workers] == [0, 1] and all(w["up"] for w in workers)
    assert len({w["pid"] for w in workers}) == 2
    assert [w["relayPorts"] for w in workers] == ["51000-51049", "51050-51099"]
    a, b = client_on(server, 0), client_on(server, 1)
    try:
        relayed_a, relayed_b = a.allocate(), b.allocate()
        assert 51000 <= relayed_a[1] <= 51049 and 51050 <= relayed_b[1] <= 51099
        # Each relay talks to the other: A's packets leave worker 0 and enter worker 1.
        a.channel_bind(0x4000, relayed_b)
        b.channel_bind(0x4001, relayed_a)
        for i in range(30):
            a.send_channel_data(0x4000, b"a->b %d" % i)
            assert b.receive_data() == (0x4001, b"a->b %d" % i)
            b.send_channel_data(0x4001, b"b->a %d" % i)
            assert a.receive_data() == (0x4000, b"b->a %d" % i)
        status, allocations, _ = http(server, "GET", "/admin/v1/allocations", key=key)
        assert status == 200
        by_client = {x["client"]["address"]: x for x in allocations}
        for client, worker in ((a, 0), (b, 1)):
            host, port = client.sock.getsockname()
            entry = by_client[f"{host}:{port}"]
            assert entry["worker"] == worker
            assert entry["traffic"]["packets_to_peer"] == 30
            assert entry["traffic"]["packets_to_client"] == 30
        assert {x["id"] % WORKERS for x in allocations} == {0, 1}
        text = http(server, "GET", "/metrics")[1]
        assert metric(text, "iceward_relayed_packets_total", direction="to_peer") == 60
        sent = 2 * sum(len(b"b->a %d" % i) for i in range(30))
        assert metric(text, "iceward_relayed_bytes_total", direction="to_client") == sent
        assert metric(text, "iceward_allocations_active") == 2
        assert metric(text, "iceward_allocations_created_total") == 2
        assert metric(text, "iceward_relay_ports", state="in_use") == 2
        assert metric(text, "iceward_relay_ports", state="free") == 98
        # DELETE reaches the worker that holds the allocation.
        b_id = by_client["{}:{}".format(*b.sock.getsockname())]["id"]
        assert http(server, "DELETE", f"/admin/v1/allocations/{b_id}", key=key)[0] == 204
        assert http(server, "DELETE", f"/admin/v1/allocations/{b_id}", key=key)[0] == 404
        with pytest.raises(TurnError) as gone:
            b.refresh(600)
        assert gone.value.code == 437
        assert a.refresh(600) == 600
        # Having relayed, answered the admin API and made its metrics, a worker still holds
        # no cryptography (its native library would be mapped): only the supervisor does.
        for w in workers:
            assert "cryptography" not in Path(f"/proc/{w['pid']}/maps").read_text()
    finally:
        a.close()
        b.close()


#: What a relaying worker must not import: the HTTP stack, the ACME client, Redis (outside a
#: fleet), cryptography, GeoIP, the CLI. Each costs every worker its memory (about 31 MB in all).
SUPERVISOR_ONLY = (
    "fastapi", "starlette", "uvicorn", "acme", "josepy", "redis", "cryptography", "maxminddb",
    "typer", "rich", "prometheus_client",
)  # fmt: skip


def test_a_worker_imports_no_http_stack_acme_redis_or_cryptography() -> None:
    code = (
        "import sys, iceward.server.worker; "
        f"print(' '.join(m for m in {SUPERVISOR_ONLY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == []


def allocate_with(client: BlockingTurnClient, *extra: tuple[int, bytes]) -> Any:
    """Allocate (authenticating first) and return the success response itself."""
    txid = os.urandom(12)
    attrs = [(C.REQUESTED_TRANSPORT, A.encode_one_byte(C.TRANSPORT_UDP)), *extra]
    return client.request(C.ALLOCATE, attrs, txid), txid


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_reservation_made_by_one_worker_is_claimed_through_another(
    make_server: MakeServer, transport: str
) -> None:
    """EVEN-PORT with R on worker 0, RESERVATION-TOKEN from a client of worker 1: the reserved
    socket moves to worker 1, which relays on exactly the reserved port."""
    server = make_server(workers=WORKERS)
    first = client_on(server, 0)
    if transport == "udp":
        second = client_on(server, 1)
    else:
        second = BlockingTurnClient((HOST, server.port), "alice", "wonderland", transport="tcp")
    stranger = client_on(server, 1)
    try:
        reply, txid = allocate_with(first, (C.EVEN_PORT, A.encode_even_port(True)))
        even = A.decode_xor_address(reply.get(C.XOR_RELAYED_ADDRESS) or b"", txid)
        token = reply.get(C.RESERVATION_TOKEN)
        assert even[1] % 2 == 0 and token is not None and token[0] == 0
        reply, txid = allocate_with(second, (C.RESERVATION_TOKEN, token))
        odd = A.decode_xor_address(reply.get(C.XOR_RELAYED_ADDRESS) or b"", txid)
        assert odd == (even[0], even[1] + 1)
        # It relays there: a datagram to the odd port reaches the second client.
        second.create_permission(even)
        first.create_permission(odd)
        first.send_indication(odd, b"to the reserved port")
        assert second.receive_data() == (None, b"to the reserved port")
        # Used up, and a made-up token of worker 0: the owner says no, the answer is 508.
        for bad in (token, bytes([0]) + os.urandom(7)):
            with pytest.raises(TurnError) as refused:
                allocate_with(stranger, (C.RESERVATION_TOKEN, bad))
            assert refused.value.code == 508
            stranger.close()
            stranger = client_on(server, 1)
    finally:
        for c in (first, second, stranger):
            c.close()
    assert "Traceback" not in server.log_text()


@pytest.mark.parametrize(
    ("flag", "code"), [("--user-quota", 486), ("--total-quota", 508)], ids=["user", "total"]
)
def test_quotas_hold_for_the_whole_server(make_server: MakeServer, flag: str, code: int) -> None:
    server = make_server(flag, "2", workers=WORKERS)
    clients = [client_on(server, worker) for worker in (0, 1, 0, 1)]
    try:
        clients[0].allocate()
        clients[1].allocate()
        for extra in clients[2:]:  # each worker holds one: both refuse a third
            with pytest.raises(TurnError) as refused:
                extra.allocate()
            assert refused.value.code == code
        clients[0].refresh(0)
        clients[3].allocate()  # worker 1 sees worker 0's release
    finally:
        for c in clients:
            c.close()


def test_a_killed_worker_restarts_and_only_its_clients_allocate_again(
    make_server: MakeServer,
) -> None:
    server = make_server(workers=WORKERS)
    key = admin(server)
    before = workers_now(server, key)
    a, b = client_on(server, 0), client_on(server, 1)
    with echo_peer() as peer:
        try:
            a.allocate()
            b.allocate()
            a.channel_bind(0x4000, peer)
            b.channel_bind(0x4000, peer)
            assert round_trips(a, 0x4000, 20) == 20
            assert round_trips(b, 0x4000, 20) == 20
            relayed_before = metric(
                http(server, "GET", "/metrics")[1], "iceward_relayed_packets_total"
            )
            os.kill(before[1]["pid"], signal.SIGKILL)
            # Worker 0's client does not notice: every round trip during the restart comes back.
            assert round_trips(a, 0x4000, 200) == 200

            def restarted() -> bool:
                w = workers_now(server, key)[1]
                return bool(w["up"] and w["restarts"] == 1 and w["pid"] != before[1]["pid"])

            assert eventually(restarted, timeout=15)
            assert workers_now(server, key)[0]["pid"] == before[0]["pid"]
            # B's nonce still verifies (all workers share the nonce key), so the new worker
            # answers its Refresh with 437 at once, not 438 first.
            reply = b.request_once(C.REFRESH, [(C.LIFETIME, A.encode_u32(600))])
            assert error_code(reply) == 437
            b.allocate()
            b.channel_bind(0x4000, peer)
            assert round_trips(b, 0x4000, 20) == 20
            assert a.refresh(600) == 600
            text = http(server, "GET", "/metrics")[1]
            # What the dead worker had counted stays in the totals (counters never go back).
            assert metric(text, "iceward_relayed_packets_total") >= relayed_before + 2 * 220
            assert metric(text, "iceward_allocations_active") == 2
            assert http(server, "GET", "/readyz")[1]["workers"] == {"up": 2, "total": 2}
        finally:
            a.close()
            b.close()
    log = server.log_text()
    assert re.search(r"worker 1 \(pid \d+\) ended with signal 9", log), log
    assert "Traceback" not in log


def test_sigterm_stops_every_worker_and_logs_their_allocations(make_server: MakeServer) -> None:
    server = make_server(workers=WORKERS)
    a, b = client_on(server, 0), client_on(server, 1)
    try:
        a.allocate()
        b.allocate()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0
    finally:
        a.close()
        b.close()
    log = server.log_text()
    for worker in (0, 1):
        assert re.search(rf"\[w{worker}\] allocation end .*reason='server shutdown'", log), log
    assert "Traceback" not in log


def test_a_malformed_flood_over_both_workers_crashes_neither(make_server: MakeServer) -> None:
    server = make_server(workers=WORKERS)
    key = admin(server)
    before = workers_now(server, key)
    rng = random.Random(11)
    heads = [b"\x00\x03\x00\x08\x21\x12\xa4\x42", b"\x40\x00\xff\xff", b"\x00\x01", b""]
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    try:
        for s in senders:  # not the clients' address: a flooding source is held to its budget
            s.bind(("127.0.0.3", 0))
        assert {worker_for(s.getsockname(), WORKERS) for s in senders} == {0, 1}
        for n in range(16000):
            body = rng.choice(heads) + rng.randbytes(rng.randint(0, 600))
            senders[n % len(senders)].sendto(body, (HOST, server.port))
            if n % 400 == 0:
                time.sleep(0.002)
    finally:
        for s in senders:
            s.close()
    for worker in (0, 1):  # both still allocate, and neither was restarted
        client = client_on(server, worker)
        try:
            assert client.allocate()[0] == HOST
        finally:
            client.close()
    assert [w["pid"] for w in workers_now(server, key)] == [w["pid"] for w in before]
    text = http(server, "GET", "/metrics")[1]
    assert metric(text, "iceward_dropped_total") > 0
    assert "Traceback" not in server.log_text()


def test_too_small_a_relay_range_for_the_workers_is_a_clean_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "iceward", "serve", "--listen", HOST, "--port", "0",
         "--tls-port", "0", "--http", "off", "--data-dir", str(tmp_path), "--secret", "s",
         "--workers", "3", "--relay-ports", "50000-50003"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "too small for 3 workers" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_supervisor_going_away_stops_its_workers(make_server: MakeServer) -> None:
    server = make_server(workers=WORKERS)
    key = admin(server)
    pids = [w["pid"] for w in workers_now(server, key)]
    server.proc.kill()
    server.proc.wait(5)

    def gone() -> bool:
        return not any(_alive(pid) for pid in pids)

    assert eventually(gone, timeout=10)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
