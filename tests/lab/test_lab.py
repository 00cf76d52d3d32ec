"""``iceward lab``: real kernel NAT in network namespaces, with aioice agents and iceward serve.

One module-scoped ``iceward lab run`` (a real process, cells in parallel) covers the representative
subset; each test then asserts one cell of the matrix it wrote, or the cleanup and error paths.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from iceward.cli import app
from iceward.lab.ca import make_lab_ca
from iceward.lab.matrix import (
    Cell,
    CellResult,
    LabOptions,
    direct_possible,
    expected,
    host_possible,
    side_of_pair,
)
from iceward.lab.topology import PROFILES
from tests.conftest import require_tool

ROWS = ["restricted/restricted", "symmetric/symmetric", "firewall/restricted"]
COLS = ["stun", "turn-udp", "turn-all"]


def _lab_ready() -> None:
    for tool in ("ip", "iptables", "tc"):
        require_tool(tool)
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")


def namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``iceward lab run`` over ROWS x COLS (9 cells, all at once); its matrix.json."""
    _lab_ready()
    out = tmp_path_factory.mktemp("lab")
    run_id = "t" + uuid.uuid4().hex[:6]
    argv = [
        sys.executable, "-m", "iceward", "lab", "run", "--rows", ",".join(ROWS),
        "--cols", ",".join(COLS), "--parallel", "9", "--out", str(out), "--deadline", "8",
        "--run-id", run_id,
    ]  # fmt: skip
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    finally:
        leftover = namespaces(f"iwl{run_id}")
        for name in leftover:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    report: dict[str, Any] = json.loads((out / "matrix.json").read_text())
    report["_proc"] = proc
    report["_out"] = out
    report["_leftover"] = leftover
    return report


def cell(report: dict[str, Any], row: str, column: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        c for c in report["cells"] if c["row"] == row and c["column"] == column
    ]
    assert len(found) == 1, f"no cell {row} {column}"
    return found[0]


def test_run_writes_outputs_and_cleans_up(matrix: dict[str, Any]) -> None:
    proc, out = matrix["_proc"], matrix["_out"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert matrix["_leftover"] == []
    assert matrix["unexpected"] == []
    assert matrix["cause_missed"] == []
    assert len(matrix["cells"]) == len(ROWS) * len(COLS)
    markdown = (out / "matrix.md").read_text()
    assert "| `symmetric/symmetric` |" in markdown
    assert "expected cause" in markdown
    for c in matrix["cells"]:
        workdir = Path(c["workdir"])
        assert (workdir / "agent-1.log").stat().st_size > 0
        assert (workdir / "agent-2.log").stat().st_size > 0
        assert "allocation" in (workdir / "server.log").read_text() or c["column"] == "stun"


def test_restricted_pair_connects_with_stun_only(matrix: dict[str, Any]) -> None:
    c = cell(matrix, "restricted/restricted", "stun")
    assert c["connected"], c
    assert c["pair"] == "srflx/srflx", c
    assert c["relay"] is False
    assert c["first_valid_ms"] is not None and c["first_valid_ms"] < 5000


def test_symmetric_pair_fails_with_stun_and_doctor_names_symmetric_nat(
    matrix: dict[str, Any],
) -> None:
    c = cell(matrix, "symmetric/symmetric", "stun")
    assert not c["connected"], c
    assert all("ICE" in a.get("error", "") for a in c["agents"]), c["agents"]
    # Both agents had server-reflexive candidates: STUN worked, the NATs blocked the checks.
    for agent in c["agents"]:
        assert any(" typ srflx" in cand for cand in agent["candidates"]), agent
    # doctor --nat inside each LAN classified the NAT (RFC 5780) and named the cause.
    assert c["doctor_cause"] == "symmetric-nat-no-turn", c
    assert c["cause_ok"] is True
    assert [nat["mapping"] for nat in c["nat"]] == ["address-and-port-dependent"] * 2, c["nat"]


def test_symmetric_pair_connects_through_one_udp_relay(matrix: dict[str, Any]) -> None:
    c = cell(matrix, "symmetric/symmetric", "turn-udp")
    assert c["connected"], c
    assert c["relay"] is True
    assert "udp" in c["relay_protocols"], c
    assert "tls" not in c["relay_protocols"] and "tcp" not in c["relay_protocols"]


def test_firewall_fails_with_udp_turn_and_doctor_names_turn_udp_only(
    matrix: dict[str, Any],
) -> None:
    c = cell(matrix, "firewall/restricted", "turn-udp")
    assert not c["connected"], c
    firewalled = c["agents"][0]
    assert not any(" typ relay" in cand for cand in firewalled["candidates"]), firewalled
    assert c["doctor_cause"] == "turn-udp-only", c
    assert c["cause_ok"] is True


def test_firewall_connects_with_turn_over_tls_443(matrix: dict[str, Any]) -> None:
    c = cell(matrix, "firewall/restricted", "turn-all")
    assert c["connected"], c
    assert c["relay"] is True
    assert c["relay_protocols"][0] == "tls", c
    assert c["pair"].startswith("relay(tls)/"), c
    firewalled = c["agents"][0]
    # Only the TLS allocation got through: one relayed candidate, no srflx.
    kinds = [cand.split(" typ ")[1].split()[0] for cand in firewalled["candidates"]]
    assert kinds.count("relay") == 1 and "srflx" not in kinds, kinds


def test_nat_classification_per_profile(tmp_path: Path) -> None:
    _lab_ready()
    argv = [
        sys.executable, "-m", "iceward", "lab", "nat", "--profiles",
        "restricted,symmetric,full-cone", "--parallel", "3", "--out", str(tmp_path), "--json",
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = {r["profile"]: (r["mapping"], r["filtering"]) for r in json.loads(proc.stdout)}
    assert found == {
        "restricted": ("endpoint-independent", "address-and-port-dependent"),
        "symmetric": ("address-and-port-dependent", "address-and-port-dependent"),
        "full-cone": ("endpoint-independent", "endpoint-independent"),
    }
    assert (tmp_path / "nat.md").exists()


def test_sigterm_removes_every_namespace(tmp_path: Path) -> None:
    _lab_ready()
    run_id = "k" + uuid.uuid4().hex[:6]
    argv = [
        sys.executable, "-m", "iceward", "lab", "run", "--rows", "cgnat/symmetric",
        "--cols", "stun", "--out", str(tmp_path), "--run-id", run_id,
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(namespaces(f"iwl{run_id}")) < 5:
            time.sleep(0.1)
        assert len(namespaces(f"iwl{run_id}")) >= 5, "the lab never built its namespaces"
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert proc.returncode != 0
        assert namespaces(f"iwl{run_id}") == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for name in namespaces(f"iwl{run_id}"):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def test_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(app, ["lab", "run", "--rows", "restricted/restricted"])
    assert result.exit_code == 2
    assert "needs root" in result.stderr


def test_bad_rows_and_cols_are_usage_errors() -> None:
    result = CliRunner().invoke(app, ["lab", "run", "--rows", "restricted/nat64"])
    assert result.exit_code == 2 and "bad row" in result.stderr
    result = CliRunner().invoke(app, ["lab", "run", "--cols", "turn-sctp"])
    assert result.exit_code == 2 and "--cols" in result.stderr


@pytest.mark.parametrize(
    ("a", "b", "column", "connected", "relay"),
    [
        ("restricted", "restricted", "stun", True, False),
        ("cgnat", "restricted", "stun", True, False),
        ("full-cone", "symmetric", "stun", True, False),
        ("restricted", "symmetric", "stun", False, None),
        ("symmetric", "symmetric", "stun", False, None),
        ("cgnat-symmetric", "restricted", "stun", False, None),
        ("symmetric", "symmetric", "turn-udp", True, True),
        ("firewall", "restricted", "turn-udp", False, None),
        ("firewall", "restricted", "turn-all", True, True),
        ("restricted", "restricted", "relay-only", True, True),
        ("none", "symmetric", "none", True, False),
        ("restricted", "restricted", "none", False, None),
    ],
)
def test_ground_truth(a: str, b: str, column: str, connected: bool, relay: bool | None) -> None:
    e = expected(PROFILES[a], PROFILES[b], column)
    assert (e.connected, e.relay) == (connected, relay)


def test_direct_and_host_rules_are_symmetric() -> None:
    for a in PROFILES.values():
        for b in PROFILES.values():
            assert direct_possible(a, b) == direct_possible(b, a)
            assert host_possible(a, b) == host_possible(b, a)


def test_browser_cells(tmp_path: Path) -> None:
    """Two Chromiums in the LANs (signalling over HTTPS 443): symmetric/symmetric connects through
    one UDP relay with TURN, and without it fails with a webrtc-internals dump that
    ``iceward analyze`` reads as symmetric-nat-no-turn."""
    _lab_ready()
    require_tool("chromium")
    require_tool("certutil")
    pytest.importorskip("playwright.sync_api")
    run_id = "b" + uuid.uuid4().hex[:6]
    argv = [
        sys.executable, "-m", "iceward", "lab", "run", "--rows", "symmetric/symmetric",
        "--cols", "stun,turn-udp", "--browser", "--parallel", "2", "--deadline", "12",
        "--out", str(tmp_path), "--run-id", run_id,
    ]  # fmt: skip
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    finally:
        leftover = namespaces(f"iwl{run_id}")
        for name in leftover:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    assert leftover == []
    report = json.loads((tmp_path / "matrix.json").read_text())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["agents"] == "chromium"

    relayed = cell(report, "symmetric/symmetric", "turn-udp")
    assert relayed["connected"] and relayed["relay"], relayed
    assert "udp" in relayed["relay_protocols"]
    assert all(a["data"].startswith("hello from ") for a in relayed["agents"])

    failed = cell(report, "symmetric/symmetric", "stun")
    assert not failed["connected"]
    for agent in failed["agents"]:
        assert any(" typ srflx" in c for c in agent["candidates"]), agent["candidates"]
    workdir = Path(failed["workdir"])
    for index in (1, 2):
        dump = workdir / f"webrtc-internals-{index}.json.gz"
        assert dump.stat().st_size > 500
    assert failed["analyze_cause"] == "symmetric-nat-no-turn", failed["analyze_errors"]
    assert failed["analyze_ok"] is True
    assert failed["doctor_cause"] == "symmetric-nat-no-turn"


def test_side_of_pair_reads_relays_from_both_ends() -> None:
    # Chromium: A's selected local end is a prflx learned from the check response, B's selected
    # pair ends on A's relay; both sides are relayed, each over UDP.
    a = {
        "local": {"type": "prflx", "address": "203.0.113.21:24007"},
        "remote": {"type": "relay", "address": "203.0.113.10:50136"},
        "candidates": ["203.0.113.10:50375 typ relay relay udp", "192.0.2.10:1 typ host"],
    }
    b = {
        "local": {"type": "srflx", "address": "203.0.113.22:42456"},
        "remote": {"type": "relay", "address": "203.0.113.10:50375"},
        "candidates": ["203.0.113.10:50136 typ relay relay udp"],
    }
    assert side_of_pair(a, b) == ("relay", "udp")
    assert side_of_pair(b, a) == ("relay", "udp")
    # aioice: a srflx path shows the host candidate locally; the peer sees srflx.
    host = {"local": {"type": "host"}, "remote": {"type": "srflx"}}
    assert side_of_pair(host, host) == ("srflx", "")
    tls = {"local": {"type": "relay", "relay_protocol": "tls"}, "remote": {"type": "srflx"}}
    assert side_of_pair(tls, host) == ("relay", "tls")


def test_a_broken_cell_never_passes_for_an_expected_failure(tmp_path: Path) -> None:
    cell_ = Cell("symmetric/symmetric", "stun", 0, LabOptions(tmp_path), make_lab_ca(tmp_path))
    assert cell_.expect.connected is False
    broken = CellResult("symmetric/symmetric", "stun", False, {}, False, error="lab setup failed")
    assert cell_._judge(broken) is False
    ice = {"connected": False, "error": "ICE: TimeoutError"}
    failed = CellResult("symmetric/symmetric", "stun", False, {}, False, agents=[ice, ice])
    assert cell_._judge(failed) is True
    crashed = dict(ice, error="RuntimeError: no relay")
    failed.agents = [ice, crashed]
    assert cell_._judge(failed) is False
