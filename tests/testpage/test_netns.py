"""The relay port range firewalled: server and Chromium in a network namespace of their own.

Allocations still work (relay candidates are gathered) but no data crosses the relay, which only
the data path step shows: relay-ports-blocked, with every TURN row red.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.realclients.test_chromium import chromium_path
from tests.testpage.helpers import ROOT, SCREENSHOTS, codes, iceward

pytestmark = pytest.mark.realclient

RELAY = (62000, 62200)
HTTP = "127.0.0.1:8080"
_WAIT_HTTP = f"""
import sys, time, urllib.request
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen("http://{HTTP}/readyz", timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit(1)
"""


@pytest.fixture
def netns() -> Iterator[str]:
    require_tool("ip")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = f"iw-tp-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        # Chromium gathers on its network interfaces, never on lo: give it one (a documentation
        # address on a veth pair whose both ends stay in the namespace); loopback still reaches
        # the server.
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", "iwtp0", "type", "veth", "peer", "name", "iwtp1"],
            ["ip", "addr", "add", "192.0.2.10/24", "dev", "iwtp0"],
            ["ip", "link", "set", "iwtp0", "up"],
            ["ip", "link", "set", "iwtp1", "up"],
        ):
            subprocess.run(["ip", "netns", "exec", name, *argv], check=True, timeout=20)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@contextlib.contextmanager
def blocked_relay_server(netns: str, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``iceward serve`` inside ``netns`` with its relay port range dropped by iptables (the
    allocations work, no data crosses): its data dir and log, until the block ends."""
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
        yield data_dir, log
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def test_relay_ports_blocked(netns: str, tmp_path: Path) -> None:
    prefix = ["ip", "netns", "exec", netns]
    with blocked_relay_server(netns, tmp_path) as (data_dir, log):
        link = iceward(
            "test-link", "--data-dir", str(data_dir), "--base-url", f"http://{HTTP}"
        ).stdout.strip()
        started = time.monotonic()
        run = subprocess.run(
            [*prefix, sys.executable, "-m", "tests.testpage.ns_page", link,
             str(SCREENSHOTS / "test-page-relay-blocked.png")],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(run.stdout)
    context = json.dumps(result, indent=1) + f"\n--- server log ---\n{log.read_text()[-3000:]}"
    turn_rows = [r for r in result["rows"] if r["kind"] == "turn"]
    assert {r["transport"] for r in turn_rows} == {"udp", "tcp"}, context
    for r in turn_rows:
        assert r["relay"] >= 1, context  # the allocation works...
        assert r["status"] == "fail", context  # ...the data does not cross
        assert r["datapath"] and r["datapath"]["delivered"] == 0, context
    assert codes(result, "error") == ["relay-ports-blocked", "relay-ports-blocked"], context
    assert result["summary"].startswith("Allocations work but data"), context
    assert result["answer"] == (
        "Calls from this network will not connect: "
        "Allocations work but data through the relay does not."
    ), context
    assert time.monotonic() - started < 60
    # The shared report reaches the analyzer, which sees a relay-only call that never connected
    # and keeps the page's own diagnosis.
    report_id = result["shared"].rsplit("/", 1)[1]
    stored = iceward("reports", "show", report_id, "--json", "--data-dir", str(data_dir)).stdout
    path = tmp_path / "report.json"
    path.write_text(stored)
    analysed = iceward("analyze", "--json", str(path), check=False)
    assert analysed.returncode == 1, analysed.stdout + analysed.stderr
    analysis = json.loads(analysed.stdout)
    [connection] = analysis["peerConnections"]
    assert connection["outcome"] == "not-connected", analysed.stdout
    assert analysis["findings"][0]["code"] == "relay-ports-blocked", analysed.stdout
