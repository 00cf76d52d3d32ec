"""The per-source budget of STUN messages (``--max-requests-per-source``): a flood from one
address is held to the budget before any parsing, counted and logged once, while another client
and the flooder's own ChannelData go on untouched. Runs on the native engine and, in ``make
test``'s second pass (ICEWARD_FASTPATH=0), on the Python path."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iceward.net.srcbudget import SourceBudget, source_of
from iceward.stun import constants as C
from iceward.stun import encode_message, parse_message
from tests.api.test_api import http, metric

from ..conftest import HOST, RunningServer
from .test_fastpath import engine  # noqa: F401  (fixture)
from .turnclient import BlockingTurnClient

MakeServer = Callable[..., RunningServer]
BUDGET = 200
FLOOD = 5000
LOG_LINE = "requests over the per-source budget dropped"


def udp_from(source: str, timeout: float = 2.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind((source, 0))
    s.settimeout(timeout)
    return s


def binding() -> bytes:
    return encode_message(C.BINDING, C.REQUEST, os.urandom(12), fingerprint=True)


def udp_rcvbuf_errors() -> int:
    """The kernel's count of datagrams dropped for a full receive buffer (all sockets)."""
    rows = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    names, values = [row for row in rows if row[0] == "Udp:"][:2]
    return int(values[names.index("RcvbufErrors")])


def drain(sock: socket.socket, quiet: float = 0.5) -> int:
    """Datagrams that arrive at ``sock`` until it has been quiet for ``quiet`` seconds."""
    sock.settimeout(quiet)
    count = 0
    try:
        while True:
            sock.recv(4096)
            count += 1
    except TimeoutError:
        return count


def request_rate_drops(server: RunningServer, least: float) -> float:
    """``iceward_dropped{reason="request_rate"}``, once it reaches ``least`` (a busy server may
    still be reading its backlog) or after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        text = http(server, "GET", "/metrics")[1]
        dropped = metric(text, "iceward_dropped_total", reason="request_rate")
        if dropped >= least or time.monotonic() > deadline:
            return dropped
        time.sleep(0.1)


def flood(
    server: RunningServer, sock: socket.socket, count: int, between: Callable[[], None]
) -> None:
    """``count`` Binding requests from ``sock`` in chunks of 100, ``between()`` after each."""
    target = (HOST, server.port)
    for chunk in range(0, count, 100):
        for _ in range(min(100, count - chunk)):
            sock.sendto(binding(), target)
        between()
        time.sleep(0.001)


def test_a_flood_from_one_source_is_held_to_its_budget_and_harms_nobody(
    make_server: MakeServer,
) -> None:
    server = make_server("--max-requests-per-source", str(BUDGET))
    peer = udp_from(HOST)
    flooder = udp_from("127.0.0.3")
    # The flooder's own allocation, with a channel: its ChannelData must not pay for the flood.
    relaying = BlockingTurnClient(
        (HOST, server.port), "alice", "wonderland", sock=udp_from("127.0.0.3")
    )
    # Another client, on another address, meanwhile.
    bystander = BlockingTurnClient(
        (HOST, server.port), "alice", "wonderland", sock=udp_from("127.0.0.2")
    )
    try:
        relaying.allocate()
        relaying.channel_bind(0x4000, peer.getsockname())
        sent_data = 0

        def channel_data() -> None:
            nonlocal sent_data
            for _ in range(2):
                relaying.send_channel_data(0x4000, b"media %d" % sent_data)
                sent_data += 1

        served: list[str] = []

        def meanwhile() -> None:
            bystander.allocate()
            for _ in range(30):
                txid = os.urandom(12)
                bystander.send_raw(encode_message(C.BINDING, C.REQUEST, txid, fingerprint=True))
                assert parse_message(bystander.recv_raw()).transaction_id == txid
                time.sleep(0.003)
            bystander.refresh(600)
            served.append("all")

        kernel_drops = udp_rcvbuf_errors()
        other = threading.Thread(target=meanwhile)
        begin = time.monotonic()
        other.start()
        flood(server, flooder, FLOOD, channel_data)
        answered = drain(flooder)
        seconds = time.monotonic() - begin  # all the time the budget had to refill in
        other.join(10)
        kernel_drops = udp_rcvbuf_errors() - kernel_drops
        assert served == ["all"], "the client on 127.0.0.2 missed an answer"
        # The burst, plus what the budget earned while the flood lasted.
        assert BUDGET * 0.75 <= answered <= BUDGET * (1 + seconds) + 10, (answered, seconds)
        relayed = drain(peer)
        assert relayed == sent_data == 2 * FLOOD // 100, (relayed, sent_data)
        dropped = request_rate_drops(server, FLOOD - answered - kernel_drops)
        assert FLOOD - answered - kernel_drops <= dropped <= FLOOD - answered, (dropped, answered)
        # A second wave within the minute: counted, not logged again.
        flood(server, flooder, 1000, lambda: None)
        drain(flooder, 0.3)
        assert request_rate_drops(server, dropped + 700) >= dropped + 700
    finally:
        for sock in (peer, flooder):
            sock.close()
        relaying.close()
        bystander.close()
    lines = [line for line in server.log_text().splitlines() if LOG_LINE in line]
    assert len(lines) == 1, lines
    assert "source=127.0.0.3 " in lines[0] and f"budget={BUDGET}/s" in lines[0]


def test_the_native_budget_keys_ipv6_by_its_64_like_the_python_path(
    engine: Any,  # noqa: F811
) -> None:
    """An IPv6 source is its /64, named as the Python path names it; the budget comes before the
    native Binding answer; an empty datagram spends a token, ChannelData does not."""
    from iceward.net import _fastpath

    listener = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    listener.bind(("::1", 0))
    listener.setblocking(False)
    client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    client.bind(("::1", 0))
    client.settimeout(0.5)
    try:
        engine.add_socket(listener.fileno(), _fastpath.LISTENER)
        engine.answer_binding(True)
        engine.source_budget(5)
        target = listener.getsockname()[:2]
        for _ in range(10):
            client.sendto(struct.pack("!HH", 0x4000, 4) + b"data", target)  # no channel: misses
        client.sendto(b"", target)
        for _ in range(20):
            client.sendto(binding(), target)
        time.sleep(0.05)
        misses = 0
        for _ in range(5):
            misses += len(engine.poll(50))
        total, per_source = engine.take_source_drops()
        assert misses == 11  # the ChannelData, whatever the budget, and the empty one
        assert drain(client, 0.2) == 4  # the empty datagram spent the first token
        assert total == 16 and per_source == [(source_of("::1"), 16)] == [("::/64", 16)]
        assert engine.take_source_drops() == (0, [])
    finally:
        listener.close()
        client.close()


def test_the_python_budget_refills_at_its_rate_and_keys_sources_alike() -> None:
    budget = SourceBudget(10)
    assert sum(budget.allow("192.0.2.1", 0.0) for _ in range(30)) == 10
    assert sum(budget.allow("192.0.2.1", 0.5) for _ in range(30)) == 5
    assert budget.allow("192.0.2.2", 0.5)  # another source has its own
    assert sum(budget.allow(f"2001:db8:0:1::{n:x}", 0.0) for n in range(1, 30)) == 10
    assert budget.allow("2001:db8:0:2::1", 0.0)
    assert source_of("::ffff:192.0.2.9") == "192.0.2.9"
    assert budget.take() == (
        20 + 25 + 19,
        [("192.0.2.1", 45), ("2001:db8:0:1::/64", 19)],
    )
    assert budget.take() == (0, [])
