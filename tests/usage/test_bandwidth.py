"""``--max-bps`` holds a ``turnutils_uclient`` flood to the limit on both relay paths (the native
engine, and the Python one with ICEWARD_FASTPATH=0); the excess is dropped, counted per
allocation in the admin API and in /metrics. ``--quota-throttle-bps`` holds an allocation over a
block quota to its rate on both paths, and releases it to its own limit (or none) once under
quota again."""

from __future__ import annotations

import itertools
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_api import cli, eventually, http
from tests.conftest import HOST, RunningServer, require_tool, start_server
from tests.usage.test_usage_server import Call

LIMIT = 100_000  # bytes/s, each direction
THROTTLE = 20_000  # bytes/s, each direction, for allocations over a block quota
#: uclient: client-to-client, one pair of sessions, 1000-byte messages every millisecond (about
#: 1 MB/s offered, ten times the limit) for about 3 s.
FLOOD = ("-y", "-c", "-m", "1", "-n", "3000", "-l", "1000", "-z", "1")


Sample = tuple[float, int, int]  # (time, bytes to peer, datagrams dropped to peer)


def flooding(series: list[Sample]) -> list[Sample]:
    """The samples taken while the flood ran: each shows more drops than the one before (the
    bucket is empty), so the bytes relayed between the first and the last are the limit's."""
    return [s for prev, s in itertools.pairwise(series) if s[2] > prev[2]]


def flooded(series: list[Sample]) -> float:
    """Seconds between the first and the last sample taken while the flood ran."""
    found = flooding(series)
    return found[-1][0] - found[0][0] if len(found) >= 2 else 0.0


@pytest.mark.parametrize(
    ("fastpath", "transport"),
    [("1", "udp"), ("0", "udp"), ("1", "tcp")],
    ids=["native", "python", "native-tcp"],
)
def test_max_bps_holds_a_flood_to_the_limit(
    fastpath: str, transport: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over TCP (``-t``) the engine serves the client's stream with the same buckets."""
    uclient = require_tool("turnutils_uclient")
    monkeypatch.setenv("ICEWARD_FASTPATH", fastpath)
    server = start_server(
        tmp_path, "--max-bps", str(LIMIT), "--relay-ports", "20500-20599",
        "--quota-throttle-bps", str(THROTTLE), "--usage-interval", "0.5",
    )  # fmt: skip
    try:
        admin = cli(server, "keys", "add", "ops", "--admin")
        flood = subprocess.Popen(
            [
                uclient,
                *FLOOD,
                *(["-t"] if transport == "tcp" else []),
                "-W",
                server.secret,
                "-u",
                "flood",
                "-p",
                str(server.port),
                HOST,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        samples: dict[int, list[Sample]] = {}
        try:
            deadline = time.monotonic() + 30
            while flood.poll() is None and time.monotonic() < deadline:
                _, live, _ = http(server, "GET", "/admin/v1/allocations", key=admin)
                now = time.monotonic()
                for alloc in live:
                    traffic = alloc["traffic"]
                    assert alloc["maxBps"] == LIMIT
                    samples.setdefault(alloc["id"], []).append(
                        (now, traffic["bytes_to_peer"], traffic["dropped_to_peer"])
                    )
                if any(flooded(series) >= 2.5 for series in samples.values()):
                    break
                time.sleep(0.2)
        finally:
            flood.kill()
            flood.wait()
        rates = []
        for series in samples.values():
            if flooded(series) >= 1.0:
                first, last = flooding(series)[0], flooding(series)[-1]
                rates.append((last[1] - first[1]) / (last[0] - first[0]))
        assert rates, samples
        for rate in rates:
            assert LIMIT * 0.9 <= rate <= LIMIT * 1.1, (rate, rates)
        path = "relay path: native" if fastpath == "1" else "relay path: python"
        assert path in server.log_text()
        _, metrics, _ = http(server, "GET", "/metrics")
        dropped = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('iceward_dropped_total{reason="bandwidth"}')
        ]
        assert dropped and dropped[0] > 1000
        throttled_over_a_block_quota(server, admin)
    finally:
        server.stop()


def throttled_over_a_block_quota(server: RunningServer, admin: str) -> None:
    """With --quota-throttle-bps, an allocation over a block quota is held to that rate, not
    ended: a burst far above it loses datagrams; under quota again, it gets --max-bps back."""
    cli(server, "quotas", "set", "--user", "alice", "--bytes", "2kB", "--period", "day")
    call = Call(server, "alice", "wonderland")
    try:
        call.exchange(5, 1000, 0)

        def mine() -> dict[str, Any]:
            _, live, _ = http(server, "GET", "/admin/v1/allocations", key=admin)
            return next(a for a in live if a["user"] == "alice")

        assert eventually(lambda: mine()["maxBps"] == THROTTLE, 5)
        for _ in range(50):
            call.client.send_channel_data(0x4000, b"x" * 1000)
        assert eventually(lambda: mine()["traffic"]["dropped_to_peer"] > 0, 3), mine()
        # No longer over quota (removed here; a new period does the same): its own limit back.
        cli(server, "quotas", "remove", "--user", "alice")
        assert eventually(lambda: mine()["maxBps"] == LIMIT, 5), mine()
    finally:
        call.close()


def test_a_throttle_without_max_bps_is_lifted_on_the_native_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --max-bps an allocation released from a quota throttle has no limit at all
    again: the native engine's buckets for its channel are lifted, not left at the throttle."""
    monkeypatch.setenv("ICEWARD_FASTPATH", "1")
    server = start_server(
        tmp_path, "--relay-ports", "20500-20599", "--quota-throttle-bps", "2000",
        "--usage-interval", "0.5", http=True,
    )  # fmt: skip
    try:
        assert "relay path: native" in server.log_text()
        admin = cli(server, "keys", "add", "ops", "--admin")
        quota = {"user": "alice", "bytes": "2kB", "period": "day", "action": "block"}
        status, made, _ = http(server, "POST", "/admin/v1/quotas", quota, admin)
        assert status == 201, made
        call = Call(server, "alice", "wonderland")

        def mine() -> dict[str, Any]:
            _, live, _ = http(server, "GET", "/admin/v1/allocations", key=admin)
            return next(a for a in live if a["user"] == "alice")

        try:
            call.exchange(5, 1000, 0)
            assert eventually(lambda: mine()["maxBps"] == 2000, 5), mine()
            assert http(server, "DELETE", f"/admin/v1/quotas/{made['id']}", key=admin)[0] == 204
            assert eventually(lambda: mine()["maxBps"] is None, 5), mine()
            dropped = mine()["traffic"]["dropped_to_peer"]
            call.exchange(40, 1000, 0)  # 40 kB at once: 20 s of the throttle's rate
            assert mine()["traffic"]["dropped_to_peer"] == dropped
        finally:
            call.close()
    finally:
        server.stop()
