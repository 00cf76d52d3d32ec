"""Usage records across nodes: two servers writing to one store add up in one report, and a
node killed mid-call has written all but its last interval."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.api.test_api import eventually
from tests.conftest import RunningServer, start_server
from tests.usage.test_usage_server import Call

INTERVAL = 0.5


def store_cli(database: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "iceward", *args, "--database", database],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def node(tmp: Path, name: str, database: str, ports: str) -> RunningServer:
    return start_server(
        tmp / name, "--database", database, "--node-id", name, "--usage-interval", str(INTERVAL),
        "--relay-ports", ports, http=False,
    )  # fmt: skip


def recorded(db: Path, node_name: str) -> tuple[int, int]:
    """(bytes to peer, records) the store holds from ``node_name``."""
    with sqlite3.connect(db) as conn:
        total, count = conn.execute(
            "SELECT COALESCE(SUM(bytes_to_peer), 0), COUNT(*) FROM usage_records WHERE node = ?",
            (node_name,),
        ).fetchone()
    return int(total), int(count)


def test_two_nodes_add_up_in_one_report(tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    database = f"sqlite:///{db}"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = node(tmp_path, "a", database, "20600-20649")
    b = node(tmp_path, "b", database, "20650-20699")
    try:
        calls = [Call(a, "alice", "wonderland"), Call(b, "alice", "wonderland")]
        calls[0].exchange(20, 300, 30)
        calls[1].exchange(10, 300, 30)
        for call in calls:
            call.close()
        assert eventually(
            lambda: recorded(db, "a")[0] == 6000 and recorded(db, "b")[0] == 3000,
            4 * INTERVAL + 3,
        ), (recorded(db, "a"), recorded(db, "b"))
    finally:
        a.stop()
        b.stop()
    doc = json.loads(store_cli(database, "usage", "--since", "1h", "--by", "node", "--json"))
    by_node = {g["node"]: g for g in doc["groups"]}
    assert by_node["a"]["bytesToPeer"] == 6000 and by_node["b"]["bytesToPeer"] == 3000
    assert doc["total"]["bytesToPeer"] == 9000
    assert doc["total"]["bytesToClient"] == 900 and doc["total"]["allocations"] == 2


def test_a_node_killed_mid_call_loses_at_most_one_interval(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    (tmp_path / "k").mkdir()
    server = node(tmp_path, "k", f"sqlite:///{db}", "20700-20749")
    call = Call(server, "alice", "wonderland")

    sent, killed = call.relay_until_killed(
        lambda: os.kill(server.proc.pid, signal.SIGKILL), INTERVAL
    )
    server.proc.wait(10)
    total, records = recorded(db, "k")
    assert records >= 4
    before = sum(200 for t in sent if t < killed)
    # Everything relayed up to one interval (and a little scheduling slack) before the kill is
    # in the store; nothing more than was relayed.
    kept = sum(200 for t in sent if t < killed - INTERVAL - 0.25)
    assert kept <= total <= before, (kept, total, before)
