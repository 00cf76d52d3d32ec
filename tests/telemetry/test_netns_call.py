"""The relay port range firewalled in a network namespace: the SDK's record of a call that
allocates but never gets data through the relay is judged relay-ports-blocked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.realclients.test_chromium import chromium_path
from tests.testpage.helpers import ROOT, iceward
from tests.testpage.test_netns import _WAIT_HTTP, HTTP, RELAY, netns  # noqa: F401 - fixture

pytestmark = pytest.mark.realclient


def test_a_call_through_a_blocked_relay_range_is_judged_relay_ports_blocked(
    netns: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    require_tool("iptables")
    chromium_path()
    prefix = ["ip", "netns", "exec", netns]
    data_dir = tmp_path / "data"
    log = tmp_path / "server.log"
    argv = [
        sys.executable, "-m", "iceward", "serve", "--listen", "127.0.0.1", "--port", "3478",
        "--tls-port", "0", "--relay-ports", f"{RELAY[0]}-{RELAY[1]}", "--secret", "ns-secret",
        "--allow-peer", "127.0.0.0/8", "--http", HTTP, "--data-dir", str(data_dir),
    ]  # fmt: skip
    with log.open("wb") as out:
        server = subprocess.Popen([*prefix, *argv], stdout=out, stderr=subprocess.STDOUT)
    try:
        ready = subprocess.run([*prefix, sys.executable, "-c", _WAIT_HTTP], timeout=30)
        assert ready.returncode == 0, log.read_text()
        subprocess.run(
            [*prefix, "iptables", "-A", "INPUT", "-p", "udp", "--dport",
             f"{RELAY[0]}:{RELAY[1]}", "-j", "DROP"],
            check=True, timeout=20,
        )  # fmt: skip
        key = iceward("keys", "add", "app", "--data-dir", str(data_dir)).stdout.strip()
        run = subprocess.run(
            [*prefix, sys.executable, "-m", "tests.telemetry.ns_call", f"http://{HTTP}", key],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(run.stdout)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    assert result["state"] != "connected", result
    assert [p.get("status") for p in result["posted"]] == [201, 201], result
    calls = json.loads(iceward("calls", "list", "--json", "--data-dir", str(data_dir)).stdout)
    assert len(calls) == 2
    for call in calls:
        assert (call["outcome"], call["cause"]) == ("failed", "relay-ports-blocked"), call
        assert call["region"] == "lab"
