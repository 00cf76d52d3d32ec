"""The relay port range firewalled in a network namespace: the SDK's record of a call that
allocates but never gets data through the relay is judged relay-ports-blocked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.testpage.helpers import ROOT, iceward
from tests.testpage.test_netns import HTTP, blocked_relay_server, netns  # noqa: F401 - fixture

pytestmark = pytest.mark.realclient


def test_a_call_through_a_blocked_relay_range_is_judged_relay_ports_blocked(
    netns: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    prefix = ["ip", "netns", "exec", netns]
    with blocked_relay_server(netns, tmp_path) as (data_dir, _):
        key = iceward("keys", "add", "app", "--data-dir", str(data_dir)).stdout.strip()
        run = subprocess.run(
            [*prefix, sys.executable, "-m", "tests.telemetry.ns_call", f"http://{HTTP}", key],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(run.stdout)
    assert result["state"] != "connected", result
    assert [p.get("status") for p in result["posted"]] == [201, 201], result
    calls = json.loads(iceward("calls", "list", "--json", "--data-dir", str(data_dir)).stdout)
    assert len(calls) == 2
    for call in calls:
        assert (call["outcome"], call["cause"]) == ("failed", "relay-ports-blocked"), call
        assert call["region"] == "lab"
