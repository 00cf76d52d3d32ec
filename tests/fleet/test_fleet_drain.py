"""Draining in a fleet, with a real client: ``turnutils_uclient`` keeps relaying through a
draining node with nothing lost, and its next Allocate is sent (300 Try Alternate) to the other
serving node of the region, found in the fleet's heartbeats (no ``--alternate-server``
anywhere); the drained node exits 0 once its last allocation ends. (The one-process server's
drain in a fleet is in test_fleet.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.test_api import cli, http
from tests.conftest import RunningServer, require_tool, start_server, stop_process
from tests.fleet.conftest import wait_for
from tests.fleet.services import RedisServer
from tests.test_drain import ALLOCATION_END, Uclient, drain_cli, wait_exit

NODE_A, NODE_B = "127.0.0.2", "127.0.0.3"


@pytest.mark.realclient
def test_uclient_relays_through_a_fleet_drain_and_is_sent_to_the_regions_other_node(
    tmp_path: Path,
) -> None:
    uclient = require_tool("turnutils_uclient")
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    nodes: list[RunningServer] = []
    runs: list[Uclient] = []

    def node(name: str, host: str, workers: int) -> RunningServer:
        workdir = tmp_path / name
        workdir.mkdir()
        flags = ("--cluster", redis.url, "--node-id", name, "--region", "eu")
        server = start_server(
            workdir, *flags, "--relay-ports", "21000-21099", host=host, tls=False, workers=workers
        )
        nodes.append(server)
        return server

    try:
        # Two workers on the draining node: the fleet lives in its supervisor, which sends the
        # workers the alternates it finds there.
        a, b = node("a", NODE_A, 2), node("b", NODE_B, 1)
        admin = cli(a, "keys", "add", "ops", "--admin")

        def sees_b_serving() -> bool:
            status, doc, _ = http(a, "GET", "/admin/v1/fleet", key=admin)
            states = {n["id"]: n["state"] for n in doc["nodes"]} if status == 200 else {}
            return states.get("b") == "serving"

        wait_for(sees_b_serving, 10, "node a sees node b serving")
        first = Uclient(uclient, NODE_A, a.port)
        runs.append(first)
        first.wait_streaming()
        done = drain_cli("--admin-url", a.http_url, "--admin-key", admin)
        assert done.returncode == 0, done.stderr

        second = Uclient(uclient, NODE_A, a.port)  # sent to b by the 300
        runs.append(second)
        for run in (first, second):
            sent, received, lost = run.finish()
            assert sent > 0 and received == sent and lost == ["0"], run.output[-2000:]
        assert "error 300" in second.output
        ends_on_b = [int(n) for n in ALLOCATION_END.findall(b.log_text())]
        assert len(ends_on_b) >= 4 and sum(ends_on_b) > 0, b.log_text()[-3000:]
        assert wait_exit(a, 30) == 0  # drained: uclient's allocations were its last
        assert http(b, "GET", "/readyz")[0] == 200  # b serves on
    finally:
        for run in runs:
            if run.proc.poll() is None:
                run.proc.kill()
        for server in nodes:
            stop_process(server.proc)
        redis.stop()
