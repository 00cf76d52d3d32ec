"""``iceward top`` against a real server carrying real traffic, and its one-line errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

from tests.api.test_api import cli
from tests.conftest import HOST, RunningServer, free_tcp_port
from tests.net.turnclient import BlockingTurnClient, TurnError

MakeServer = Callable[..., RunningServer]


def top(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ICEWARD_ADMIN_KEY"}
    if key is not None:
        env["ICEWARD_ADMIN_KEY"] = key
    env["COLUMNS"] = "120"  # wide enough for each address on one line
    return subprocess.run(
        [sys.executable, "-m", "iceward", "top", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_top_shows_allocations_bandwidth_users_and_refusals(make_server: MakeServer) -> None:
    server = make_server("--relay-ports", "20100-20199")
    admin = cli(server, "keys", "add", "ops", "--admin")
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((HOST, 0))
    peer.settimeout(0.5)
    client = BlockingTurnClient((HOST, server.port), "alice", "wonderland")
    relayed = client.allocate()
    client.channel_bind(0x4000, peer.getsockname())
    stop = threading.Event()

    def traffic() -> None:
        """About 800 kbit/s to the peer and 80 kbit/s back, a refused peer and a wrong password
        now and then, until the frames are taken."""
        wrong = BlockingTurnClient((HOST, server.port), "alice", "guess", timeout=0.2)
        sent = 0
        while not stop.is_set():
            try:
                client.send_channel_data(0x4000, b"x" * 1000)
                peer.recvfrom(2000)
                peer.sendto(b"y" * 100, relayed)
                client.receive_data()
            except OSError:  # a datagram lost on a busy machine: go on
                pass
            sent += 1
            if sent % 20 == 0:
                for attempt in (wrong.allocate, lambda: client.create_permission(("10.0.0.1", 9))):
                    try:
                        attempt()
                    except (TurnError, OSError):
                        pass
            stop.wait(0.01)
        wrong.close()

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        shown = top("--url", server.http_url, "--once", "--interval", "1", key=admin)
        as_json = top("--url", server.http_url, "--json", "--interval", "1", "--admin-key", admin)
    finally:
        stop.set()
        thread.join()
        client.close()
        peer.close()

    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "1 allocation" in text and "top users by bandwidth" in text
    assert "alice" in text and f"{relayed[0]}:{relayed[1]}" in text
    assert "kbit/s" in text and "bad_integrity" in text and "peer:" in text

    assert as_json.returncode == 0, as_json.stderr
    frame = json.loads(as_json.stdout)
    assert frame["allocations"] == 1 and frame["workers_up"] == frame["workers_total"] >= 1
    assert frame["relayed_bps"]["to_peer"] > frame["relayed_bps"]["to_client"] > 0
    (user,) = frame["users"]
    assert user["user"] == "alice" and user["allocations"] == 1
    assert user["to_peer_bps"] > 10 * 1000 * 8  # more than 10 packets of 1000 bytes a second
    (row,) = frame["busiest"]
    assert row["relayed"] == [f"{relayed[0]}:{relayed[1]}"] and row["transport"] == "udp"
    assert sum(frame["auth_failures_per_min"].values()) > 0
    assert any(k.startswith("peer:") and v > 0 for k, v in frame["refusals_per_min"].items())


def test_top_errors_are_one_line_exit_2(make_server: MakeServer) -> None:
    server = make_server(tls=False)
    admin = cli(server, "keys", "add", "ops", "--admin")
    app_key = cli(server, "keys", "add", "app")
    closed = f"http://{HOST}:{free_tcp_port()}"
    for args, key, said in (
        (["--url", server.http_url], None, "no admin key"),
        (["--url", server.http_url], app_key, "refused the admin key (401"),
        (["--url", closed], admin, f"cannot reach {closed}"),
    ):
        done = top(*args, "--once", key=key)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and said in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""
