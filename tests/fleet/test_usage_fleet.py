"""Usage in a fleet: two nodes (a real Redis, a real PostgreSQL) hand their records to the Redis
stream and consumers write them to PostgreSQL. Calls through each node add up in one report; a
node SIGKILLed mid-call loses at most one interval; records made while Redis is down are all
written once it is back; a block quota reached through one node refuses Allocates on the other
within one interval of the records reaching the store."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import require_tool
from tests.fleet.conftest import (
    Fleet,
    Node,
    http,
    running_fleet,
    start_services,
    wait_for,
    wait_ready,
)
from tests.net.turnclient import BlockingTurnClient, TurnError
from tests.usage.test_usage_server import Call

INTERVAL = 0.5
#: The fleet tests' --user-quota lifted: uclient holds more allocations than it allows.
FLAGS = ("--usage-interval", str(INTERVAL), "--user-quota", "0")


def start_two_nodes(fleet: Fleet) -> Fleet:
    start_services(fleet)
    for node_id in ("n1", "n2"):
        fleet.start(node_id, *FLAGS)
    for node in fleet.nodes.values():
        wait_ready(node)
    return fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("usagefleet"), start_two_nodes) as running:
        yield running


def credentials(fleet: Fleet, user: str, label: str) -> tuple[str, str]:
    status, doc = fleet.issue("n2", user=user, label=label, ttl=600)
    assert status == 200, doc
    turn = next(s for s in doc["iceServers"] if "username" in s)
    return turn["username"], turn["credential"]


def sql(fleet: Fleet, query: str, **params: Any) -> Any:
    engine = create_engine(fleet.postgres.url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(query), params).one()
    finally:
        engine.dispose()


def stored(fleet: Fleet, column: str, value: str) -> tuple[int, int, int]:
    """(records, bytes to peer, bytes to client) PostgreSQL holds where ``column`` = ``value``."""
    count, up, down = sql(
        fleet,
        "SELECT COUNT(*), COALESCE(SUM(bytes_to_peer), 0), COALESCE(SUM(bytes_to_client), 0) "
        f"FROM usage_records WHERE {column} = :v",
        v=value,
    )
    return int(count), int(up), int(down)


def usage_cli(fleet: Fleet, *args: str) -> Any:
    proc = subprocess.run(
        [sys.executable, "-m", "iceward", *args, "--database", fleet.postgres.url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def metrics(node: Node) -> str:
    with urllib.request.urlopen(node.url + "/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def report(fleet: Fleet, node: str, by: str) -> dict[str, Any]:
    status, doc = http(
        fleet.nodes[node].url + f"/admin/v1/usage?since=1h&by={by}", key=fleet.admin_key
    )
    assert status == 200, doc
    return dict(doc)


TOTALS = re.compile(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)")
LENGTH = 400


@pytest.mark.realclient
def test_uclient_calls_through_two_nodes_add_up_in_one_report(fleet: Fleet) -> None:
    """coturn's uclient, client to client, through each node with its own label: the report
    (the CLI on PostgreSQL, and either node's admin route) has what each uclient says it sent
    and received, within 1%, under the node it went through; the records went by the stream."""
    uclient = require_tool("turnutils_uclient")
    runs = {}
    for node_id in ("n1", "n2"):
        username, password = credentials(fleet, f"uc-{node_id}", f"via-{node_id}")
        node = fleet.nodes[node_id]
        runs[node_id] = subprocess.Popen(
            [uclient, "-y", "-c", "-m", "1", "-n", "100", "-l", str(LENGTH), "-z", "5",
             "-u", username, "-w", password, "-p", str(node.port), node.ip],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    totals = {}
    for node_id, proc in runs.items():
        out, _ = proc.communicate(timeout=60)
        found = TOTALS.findall(out)
        assert proc.returncode == 0 and found, out[-2000:]
        totals[node_id] = (int(found[-1][0]) * LENGTH, int(found[-1][1]) * LENGTH)

    def matches(doc: dict[str, Any]) -> bool:
        by_node = {g["node"]: g for g in doc["groups"]}
        for node_id, (sent, received) in totals.items():
            g = by_node.get(node_id)
            if g is None or g["allocations"] < 2:
                return False
            if abs(g["bytesToPeer"] - sent) > 0.01 * sent:
                return False
            if abs(g["bytesToClient"] - received) > 0.01 * sent:
                return False
        return True

    wait_for(lambda: matches(report(fleet, "n2", "node")), 4 * INTERVAL + 5, f"{totals}")
    doc = json.loads(usage_cli(fleet, "usage", "--since", "1h", "--by", "node", "--json"))
    assert matches(doc), (totals, doc["groups"])

    def bytes_of(groups: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
        return [(g["node"], g["bytesToPeer"], g["bytesToClient"]) for g in groups]

    for node_id in ("n1", "n2"):
        assert bytes_of(report(fleet, node_id, "node")["groups"]) == bytes_of(doc["groups"])
        text = metrics(fleet.nodes[node_id])
        added = re.search(r'iceward_usage_events_total\{event="stream_added"\} (\S+)', text)
        assert added is not None and float(added.group(1)) > 0, text
        assert "\niceward_usage_records_queued 0.0\n" in text

    def settled() -> bool:
        """Every entry read was acked (one may be between its read and its commit a moment)."""
        group = json.loads(fleet.redis.cli("--json", "XINFO", "GROUPS", "iceward:usage") or "[]")
        return bool(group) and group[0]["pending"] == 0

    wait_for(settled, 4 * INTERVAL + 5, "every stream entry acked")


def test_block_quota_reached_on_one_node_refuses_allocates_on_the_other(fleet: Fleet) -> None:
    out = usage_cli(fleet, "quotas", "set", "--label", "initech", "--bytes", "4kB",
                    "--period", "day")  # fmt: skip
    assert "added quota" in out
    call = Call(fleet.nodes["n1"], *credentials(fleet, "u-initech", "initech"))
    username, password = credentials(fleet, "u-initech-2", "initech")
    client = BlockingTurnClient((fleet.nodes["n2"].ip, fleet.nodes["n2"].port), username, password)
    try:
        client.allocate()  # admitted before the quota is reached
        client.refresh(0)
        call.exchange(10, 500, 0)  # 5 kB through n1: past the limit
        wait_for(lambda: stored(fleet, "label", "initech")[1] >= 4000, 4 * INTERVAL + 3,
                 "n1's records in PostgreSQL", step=0.02)  # fmt: skip
        in_store = time.monotonic()

        def refused() -> TurnError | None:
            try:
                client.allocate()
            except TurnError as exc:
                return exc
            client.refresh(0)
            return None

        error = wait_for(refused, 4 * INTERVAL + 3, "n2 refuses the label", step=0.05)
        # n2 checks the quotas in the store once an interval.
        assert time.monotonic() - in_store <= INTERVAL + 0.5
        assert error.code == 486 and "Byte quota exceeded: label initech" in str(error)

        def ended() -> bool:
            _, live = http(fleet.nodes["n1"].url + "/admin/v1/allocations", key=fleet.admin_key)
            return not any(a["user"] == "u-initech" for a in live)

        wait_for(ended, 4 * INTERVAL + 3, "n1 ends the running call", step=0.05)
        # n1 checks half an interval after handing its records on: by then they are stored.
        assert time.monotonic() - in_store <= INTERVAL + 0.5
    finally:
        call.close()
        client.close()
        usage_cli(fleet, "quotas", "remove", "--label", "initech")


def test_records_made_while_redis_is_down_are_written_when_it_is_back(fleet: Fleet) -> None:
    """... and those of a node stopped while Redis is down (n1, the last test to use it)."""
    admin = fleet.admin_key
    call = Call(fleet.nodes["n1"], *credentials(fleet, "u-outage", "outage"))

    def live_counters() -> dict[str, int]:
        _, live = http(fleet.nodes["n1"].url + "/admin/v1/allocations", key=admin)
        return dict(next(a["traffic"] for a in live if a["user"] == "u-outage"))

    def caught_up() -> bool:
        live = live_counters()
        return stored(fleet, "label", "outage")[1:] == (
            live["bytes_to_peer"],
            live["bytes_to_client"],
        )

    try:
        call.exchange(10, 300, 30)
        wait_for(caught_up, 4 * INTERVAL + 3, "the records before the outage")
        fleet.redis.stop()  # no persistence: what the stream held is gone with it
        call.exchange(20, 300, 30)
        time.sleep(4 * INTERVAL)
        assert stored(fleet, "label", "outage")[1] == 3000  # nothing written meanwhile
        text = metrics(fleet.nodes["n1"])
        queued = re.search(r"^iceward_usage_records_queued (\S+)$", text, re.M)
        assert queued is not None and float(queued.group(1)) >= 1, text
        fleet.redis.start()
        wait_for(caught_up, 10, "the records made during the outage")
        assert stored(fleet, "label", "outage")[1:] == (9000, 900)
        # Stopped while Redis is down, the node writes what it holds to the store itself.
        fleet.redis.stop()
        call.exchange(10, 300, 30)
        last = live_counters()
        n1 = fleet.nodes["n1"]
        n1.proc.terminate()
        assert n1.proc.wait(15) == 0
        assert stored(fleet, "label", "outage")[1:] == (12_000, 1200)
        assert (last["bytes_to_peer"], last["bytes_to_client"]) == (12_000, 1200)
    finally:
        call.close()
        if fleet.redis.proc is None:
            fleet.redis.start()


def workers_of(pid: int) -> list[int]:
    """The processes ``pid`` started (a node's workers with ``--workers``)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def test_a_node_killed_mid_call_loses_at_most_one_interval(fleet: Fleet) -> None:
    node = fleet.start("n4", *FLAGS)
    wait_ready(node)
    call = Call(node, *credentials(fleet, "u-killed", "killed"))

    def kill() -> None:
        for pid in [*workers_of(node.proc.pid), node.proc.pid]:  # the whole node at once
            os.kill(pid, signal.SIGKILL)

    sent, killed = call.relay_until_killed(kill, INTERVAL)
    node.proc.wait(10)
    before = sum(200 for t in sent if t < killed)
    # Everything relayed up to one interval (and a little scheduling slack) before the kill
    # reaches PostgreSQL, through the other nodes' consumers if n4's held it; nothing more.
    kept = sum(200 for t in sent if t < killed - INTERVAL - 0.25)
    wait_for(lambda: stored(fleet, "node", "n4")[1] >= kept, 15, "n4's records")
    time.sleep(2 * INTERVAL)
    records, total, _ = stored(fleet, "node", "n4")
    assert records >= 4
    assert kept <= total <= before, (kept, total, before)
