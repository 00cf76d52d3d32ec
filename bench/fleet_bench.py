"""The fleet's figures: ``python bench/fleet_bench.py`` (from the repository root).

Starts a real Redis, a real PostgreSQL (as in ``tests/fleet``: initdb in a temporary directory,
as the ``postgres`` user when run as root) and three nodes, 127.0.0.2 and 127.0.0.3 in region
eu and 127.0.0.4 in region us, then measures:

* **Issuing latency**: ``--requests`` ``POST /api/v1/ice-servers`` on one node over one
  keep-alive connection, regions alternating eu/us/by clientIp, ``count`` 1 or 2; p50, p99 and
  max of the wall time per request as the client sees it (API key check against PostgreSQL,
  node choice from memory, minting, the issuance log written to PostgreSQL). Goal: p99 < 20 ms.
* **Redis operations per allocation**: ``redis-cli MONITOR`` while ``--allocations`` TURN
  allocations are made, refreshed and deleted on one node; every command seen is classified:
  the heartbeat's script calls (and the commands they run, shown as ``lua``), the store-change
  pub/sub, and anything else, which would be the allocations'. Goal: none on the relay path,
  at most two per allocation lifecycle.
* **Heartbeat-to-exclusion after SIGKILL**: one eu node is killed; the time until issuing on
  another node stops naming it (polled every 50 ms with ``count: 3``), and from its last
  heartbeat (``at`` in the fleet view) to that moment. Goal: at most 6 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.client import HTTPConnection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import stop_process
from tests.fleet.conftest import NODES, SECRET, Fleet, Node, http, launch, wait_ready
from tests.fleet.services import PostgresServer, RedisServer
from tests.net.turnclient import BlockingTurnClient

from iceward.store import Store
from iceward.turn.credentials import mint_rest_credential


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def issuing_latency(fleet: Fleet, requests: int, nodes: list[Node]) -> list[list[float]]:
    """Milliseconds per request on each of ``nodes``, their requests interleaved (one on each
    in turn) so that whatever else the machine does falls on all of them alike."""
    conns = [HTTPConnection("127.0.0.1", node.http_port, timeout=5) for node in nodes]
    headers = {"Authorization": f"Bearer {fleet.api_key}", "Content-Type": "application/json"}
    bodies = [
        {"user": "bench", "region": "eu"},
        {"user": "bench", "region": "us", "count": 2},
        {"user": "bench", "clientIp": "203.0.113.7"},
        {"user": "bench"},
    ]
    times: list[list[float]] = [[] for _ in nodes]
    for i in range(requests + 20):
        body = json.dumps(bodies[i % len(bodies)])
        for conn, sink in zip(conns, times, strict=True):
            started = time.perf_counter()
            conn.request("POST", "/api/v1/ice-servers", body, headers)
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                raise RuntimeError(f"ice-servers answered {response.status}")
            if i >= 20:  # the first ones warm the connection pools
                sink.append(elapsed * 1000)
    for conn in conns:
        conn.close()
    return times


def solo_node(fleet: Fleet, extra: list[str]) -> Node:
    """A node of the same settings and store without --cluster, on 127.0.0.5: the baseline."""
    cmd = fleet.command("solo", *extra)
    for flag in ("--cluster", "--node-id", "--region"):
        at = cmd.index(flag)
        del cmd[at : at + 2]
    workdir = fleet.root / "solo"
    node = Node("solo", "127.0.0.5", "-", workdir, launch(workdir, cmd))
    fleet.nodes["solo"] = node
    return wait_ready(node)


def redis_ops_per_allocation(fleet: Fleet, allocations: int) -> dict[str, int]:
    monitor = subprocess.Popen(
        ["redis-cli", "-p", str(fleet.redis.port), "monitor"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert monitor.stdout is not None
    if monitor.stdout.readline().strip() != "OK":  # MONITOR is on from here
        raise RuntimeError("redis-cli monitor did not start")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(monitor.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    started = time.monotonic()
    node = fleet.nodes["n1"]
    for i in range(allocations):
        cred = mint_rest_credential(SECRET, f"bench{i}", 600, time.time())
        client = BlockingTurnClient((node.ip, node.port), cred.username, cred.password)
        client.allocate()
        client.refresh(600)
        client.refresh(0)
        client.close()
    time.sleep(max(0.5, started + 2.5 - time.monotonic()))  # a beat of every node seen
    monitor.terminate()
    monitor.wait(5)
    reader.join(5)
    counts = {"heartbeat script calls": 0, "run inside scripts": 0, "pub/sub": 0, "other": 0}
    for line in lines:
        if '"' not in line:
            continue
        command = line.split('"')[1].lower()
        if " lua]" in line:
            counts["run inside scripts"] += 1
        elif command in ("evalsha", "eval", "script"):
            counts["heartbeat script calls"] += 1
        elif command in ("publish", "subscribe", "ping"):
            counts["pub/sub"] += 1
        else:
            counts["other"] += 1
    return counts


def exclusion_after_sigkill(fleet: Fleet) -> tuple[float, float]:
    node = fleet.nodes["n2"]
    node.proc.kill()
    node.proc.wait(10)
    killed = time.time()
    # its last heartbeat: its key in Redis outlives it until the key expires
    last_beat = json.loads(fleet.redis.cli("GET", "iceward:node:n2"))["at"]
    while True:
        status, answer = fleet.issue("n3", region="eu", count=3)
        if status == 200 and "n2" not in [n["id"] for n in answer["nodes"]]:
            excluded = time.time()
            return excluded - killed, excluded - last_beat
        if time.time() - killed > 20:
            raise RuntimeError("n2 still issued 20 s after SIGKILL")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--allocations", type=int, default=50)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="iceward-fleet-bench-"))
    redis = RedisServer(root / "redis")
    postgres = PostgresServer()
    fleet = Fleet(redis, postgres, {}, "", "", root)
    try:
        redis.start()
        postgres.init()
        postgres.start()
        store = Store(postgres.url)
        fleet.api_key = store.add_api_key("bench")
        fleet.admin_key = store.add_api_key("ops", admin=True)
        store.close()
        regions = root / "regions.txt"
        regions.write_text("203.0.113.0/24 us\n198.51.100.0/24 eu\n")
        extra = ["--region-map", str(regions), "--region-fallback", "eu=us", "--log-level", "info"]
        extra += ["--api-rate", "100000", "--api-burst", "100000"]
        for node_id in NODES:
            fleet.start(node_id, *extra)
        nodes: list[Node] = list(fleet.nodes.values())
        for node in nodes:
            wait_ready(node)
        while not all(
            len(http(n.url + "/admin/v1/fleet", key=fleet.admin_key)[1]["nodes"]) == 3
            for n in nodes
        ):
            time.sleep(0.1)

        load = Path("/proc/loadavg").read_text().split()[:3]
        print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(load)}")
        solo = solo_node(fleet, ["--log-level", "info", "--api-rate", "100000",
                                 "--api-burst", "100000"])  # fmt: skip
        fleet_times, solo_times = issuing_latency(fleet, args.requests, [nodes[0], solo])
        stop_process(solo.proc)
        del fleet.nodes["solo"]
        print(f"issuing latency, {args.requests} POST /api/v1/ice-servers each, interleaved:")
        for name, times in (("fleet node (3 nodes)", fleet_times), ("node without --cluster",
                                                                    solo_times)):  # fmt: skip
            print(
                f"  {name}: p50 {statistics.median(times):.2f} ms  "
                f"p99 {percentile(times, 0.99):.2f} ms  max {max(times):.2f} ms"
            )
        print("  (goal: p99 < 20 ms)")
        ops = redis_ops_per_allocation(fleet, args.allocations)
        print(
            f"Redis commands while {args.allocations} allocations were made, refreshed and "
            "deleted on one node (MONITOR):"
        )
        for what, count in ops.items():
            print(f"  {what}: {count}")
        print(f"  per allocation, beside the heartbeat: {ops['other'] / args.allocations:.2f}")
        after_kill, after_beat = exclusion_after_sigkill(fleet)
        print(
            f"SIGKILL of n2: not issued any more {after_kill:.2f} s after the kill, "
            f"{after_beat:.2f} s after its last heartbeat (goal: <= 6 s)"
        )
    finally:
        for node in fleet.nodes.values():
            if node.proc.poll() is None:
                node.proc.terminate()
        for node in fleet.nodes.values():
            stop_process(node.proc)
        redis.stop()
        postgres.remove()


if __name__ == "__main__":
    main()
