"""Telemetry on one core: ``python bench/telemetry_bench.py [--seconds S] [--calls N]``

(a) ingest:    call records accepted per second through the whole of ``POST /api/v1/telemetry``
               below HTTP (:class:`iceward.telemetry.ingest.Ingest`): JSON, credential scan,
               schema, token HMAC, issuance lookup, the analyzer's rules, the token's use count
               and the insert into SQLite, one record at a time. A mix of relayed, direct and
               auth-failed records. Goal: 2,000 records/s.
(b) dashboard: render time of ``/dashboard`` over ``--calls`` stored calls (default 100,000,
               spread over the last 48 hours, with tags). Goal: under 1 s.

``--strict`` makes a missed goal an exit status of 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from iceward.api.metrics import make_registry
from iceward.api.telemetrytoken import mint
from iceward.ratelimit import RateLimiter
from iceward.store import CallRow, CallTagRow, Store
from iceward.telemetry.dashboard import render_dashboard
from iceward.telemetry.ingest import Ingest

INGEST_GOAL, DASHBOARD_GOAL = 2000.0, 1.0
TURN = "turn:198.51.100.1:3478?transport=udp"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36"


def record(kind: str, token: str) -> dict[str, Any]:
    relay = {"type": "relay", "protocol": "udp", "relayProtocol": "udp", "url": TURN,
             "address": "198.51.100.1", "port": 50000}  # fmt: skip
    doc: dict[str, Any] = {
        "v": 1, "token": token, "callId": "bench", "tags": {"room": "r1", "app": "bench"},
        "start": time.time() * 1000 - 20_000, "end": 20_000, "reason": "closed",
        "config": {"iceServers": [{"urls": ["stun:198.51.100.1:3478"]}, {"urls": [TURN]}]},
        "states": [[0, "signaling", "have-local-offer"], [20, "signaling", "stable"],
                   [30, "iceGathering", "gathering"], [35, "iceConnection", "checking"],
                   [400, "iceGathering", "complete"]],
    }  # fmt: skip
    if kind == "failed":
        doc["errors"] = [{"t": 90, "url": TURN, "code": 401, "text": "Unauthorized"}]
        doc["states"].append([12_000, "connection", "failed"])
        doc["reason"] = "failed"
        return doc
    local = relay if kind == "relay" else {"type": "srflx", "protocol": "udp"}
    doc["states"] += [[300, "iceConnection", "connected"], [305, "connection", "connected"]]
    remote = {"type": "host", "protocol": "udp"}
    doc["candidates"] = [{"t": 50, "side": "local", **local}, {"t": 60, "side": "remote", **remote}]
    doc["selected"] = [{"t": 310, "local": local, "remote": remote}]
    doc["samples"] = [
        {"t": 310 + i * 2000, "bytesSent": 50_000 * i, "bytesReceived": 48_000 * i, "rtt": 0.02}
        for i in range(10)
    ]
    return doc


def bench_ingest(store: Store, seconds: float) -> tuple[float, float]:
    """(records per wall-clock second, records per CPU second of the whole process)."""
    key = b"k" * 32
    ingest = Ingest.create(store, key, make_registry(), "bench", RateLimiter(1e9, 1e9))
    kinds = ["relay", "direct", "direct", "failed"]
    bodies = [
        json.dumps(record(kinds[i % 4], mint(key, f"req{i}", 3600, time.time()))).encode()
        for i in range(10_000)  # each token posts at most MAX_USES records
    ]
    for body in bodies[:20]:  # warm up
        ingest.accept(body, "198.51.100.9", UA, time.time(), time.monotonic())
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        body = bodies[done % len(bodies)]
        ingest.accept(body, "198.51.100.9", UA, time.time(), time.monotonic())
        done += 1
    ingest.writer.flush()  # every accepted record committed before the clock stops
    return done / (time.perf_counter() - start), done / (time.process_time() - cpu)


def fill(store: Store, calls: int) -> None:
    rng = random.Random(17)
    now = int(time.time())
    outcomes = ["connected-direct"] * 70 + ["connected-relay"] * 25 + ["failed"] * 5
    causes = ["no-turn", "turn-auth-failed", "turn-udp-only", "ice-failed-unknown"]
    rows, tags = [], []
    for i in range(calls):
        outcome = rng.choice(outcomes)
        cid = f"b{i:011d}"
        rows.append({
            "id": cid, "at": now - rng.randrange(48 * 3600), "request_id": f"req{i}",
            "call_id": None, "outcome": outcome,
            "path": "relay-host" if outcome == "connected-relay" else None,
            "relay_protocol": rng.choice(["udp", "tcp", "tls"]) if outcome == "connected-relay"
            else None,
            "cause": rng.choice(causes) if outcome == "failed" else None,
            "region": rng.choice(["eu", "us", "ap"]), "node": "n1",
            "browser": rng.choice(["chrome", "firefox", "safari", "edge"]),
            "time_to_connected": rng.uniform(80, 3000) if outcome != "failed" else None,
            "record": "{}", "findings": "[]",
        })  # fmt: skip
        tags.append({"call": cid, "tag": f"room={rng.randrange(20)}", "at": rows[-1]["at"],
                     "outcome": outcome})  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(insert(CallRow), rows)
        conn.execute(insert(CallTagRow), tags)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, one thread")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'ingest.db'}")
        rate, per_cpu = bench_ingest(store, args.seconds)
        ok &= rate >= INGEST_GOAL
        print(
            f"ingest:    {rate:8.0f} records/s wall clock, {per_cpu:.0f} per CPU second"
            f" (goal {INGEST_GOAL:.0f})"
        )
        store.close()
        store = Store(f"sqlite:///{Path(tmp) / 'dashboard.db'}")
        fill(store, args.calls)
        times, cpu_times = [], []
        for _ in range(3):
            start, cpu = time.perf_counter(), time.process_time()
            html = render_dashboard(store, "hour", time.time())
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu)
        ok &= min(times) < DASHBOARD_GOAL
        print(
            f"dashboard: {min(times):8.3f} s for {args.calls} calls, {min(cpu_times):.3f} s CPU"
            f" (best of 3; goal < {DASHBOARD_GOAL:g} s; {len(html)} bytes)"
        )
        store.close()
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
