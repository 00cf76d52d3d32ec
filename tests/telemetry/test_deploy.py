"""The shipped Prometheus rules and Grafana dashboard: valid as they are, and built only on
metrics a running iceward exports (a renamed metric fails here, not on an operator's screen).
:func:`check_references` runs against the server of test_browser_calls.py (one server less)."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

from tests.conftest import RunningServer, require_tool

DEPLOY = Path(__file__).parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "iceward-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "iceward-dashboard.json"
METRIC = re.compile(r"\biceward[_:][A-Za-z0-9_:]+")
SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def test_rules_pass_promtool_and_the_dashboard_parses() -> None:
    promtool = require_tool("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout
    doc = json.loads(DASHBOARD.read_text())
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])
    assert all(t["expr"] for p in doc["panels"] for t in p["targets"])


def exported(server: RunningServer) -> set[str]:
    """Every series name /metrics can show (counters with _total, histograms' parts)."""
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            names.update(name + s for s in SUFFIXES if kind in ("counter", "histogram"))
    return names


def check_references(server: RunningServer) -> None:
    """The rules and the dashboard name only metrics ``server`` (run with --cert) exports, or
    the rules' own recorded series."""
    names = exported(server)
    assert "iceward_tls_certificate_not_after_seconds" in names
    rules = RULES.read_text()
    recorded = set(re.findall(r"record: (\S+)", rules))
    rule_refs = set(METRIC.findall(rules)) - recorded
    assert rule_refs and rule_refs <= names, rule_refs - names
    for needed in ("iceward_calls_total", "iceward_relay_ports", "iceward_auth_failures_total"):
        assert needed in rule_refs
    doc = json.loads(DASHBOARD.read_text())
    refs = {m for p in doc["panels"] for t in p["targets"] for m in METRIC.findall(t["expr"])}
    assert refs and refs <= names | recorded, refs - names - recorded
