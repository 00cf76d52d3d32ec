"""Proof with Debian's Chromium: an app page using /sdk/iceward.js makes real calls through a
real ``iceward serve`` (host to host, relayed over UDP, a wrong credential), and a real
Prometheus scrapes the server meanwhile. The stored outcomes, their causes, the dashboard, the
joined iceServers and the failure-rate alert come from those calls alone."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iceward.lab.browser import CHROMIUM_ARGS
from tests.api.test_api import cli, http
from tests.conftest import (
    CertAuthority,
    RunningServer,
    free_tcp_port,
    make_test_ca,
    require_tool,
    start_server,
)
from tests.realclients.test_chromium import chromium_path, trust_ca
from tests.telemetry.test_deploy import check_references

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.realclient

PAGE = Path(__file__).with_name("app_page.html")
RULES = Path(__file__).parents[2] / "deploy" / "prometheus" / "iceward-rules.yml"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    """The server's TLS certificate, trusted by the browser (turns: is validated)."""
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, ca: CertAuthority) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("calls"), "--node-id", "node-1", cert=(ca.cert, ca.key)
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, server: RunningServer) -> Iterator[str]:
    """A real Prometheus scraping the server every second, with the shipped rules where only
    the failure alert's ``for:`` is shortened (the shipped file keeps 10m)."""
    binary = require_tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    rules = RULES.read_text()
    assert "for: 10m" in rules
    (work / "rules.yml").write_text(rules.replace("for: 10m", "for: 2s", 1))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(work / "rules.yml")],
        "scrape_configs": [
            {
                "job_name": "iceward",
                "static_configs": [{"targets": [f"127.0.0.1:{server.http_port}"]}],
            }
        ],
    }
    (work / "prometheus.yml").write_text(json.dumps(config))
    port = free_tcp_port()
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _targets_up(url) < 1:
            time.sleep(0.3)
        assert _targets_up(url) == 1, (work / "prometheus.log").read_text()[-2000:]
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _targets_up(url: str) -> int:
    try:
        targets = _get(url + "/api/v1/targets")["data"]["activeTargets"]
    except OSError:
        return 0
    return sum(1 for t in targets if t["health"] == "up")


def _alerts(url: str) -> dict[str, str]:
    alerts = _get(url + "/api/v1/alerts")["data"]["alerts"]
    return {a["labels"]["alertname"]: a["state"] for a in alerts}


@pytest.fixture(scope="module")
def page(
    tmp_path_factory: pytest.TempPathFactory, server: RunningServer, ca: CertAuthority
) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("chromium-home")
    trust_ca(home, ca.ca_cert)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True,
            env={**os.environ, "HOME": str(home)},
        )  # fmt: skip
        try:
            pg = browser.new_page()
            pg.goto(server.http_url + "/healthz")  # the app's origin: same-origin posts
            pg.set_content(PAGE.read_text())
            pg.wait_for_function("window.appReady === true")
            yield pg
        finally:
            browser.close()


def test_calls_from_chromium_are_judged_shown_and_alerted_on(
    server: RunningServer, prometheus: str, page: Any
) -> None:
    key = cli(server, "keys", "add", "web")
    admin = cli(server, "keys", "add", "ops", "--admin")

    def issue(region: str, transports: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"user": "u", "region": region}
        if transports:
            body["transports"] = transports
        status, doc, headers = http(server, "POST", "/api/v1/ice-servers", body, key=key)
        assert status == 200, doc
        return {**doc, "requestId": headers["x-request-id"]}

    def call(doc: dict[str, Any], name: str, **kw: Any) -> dict[str, Any]:
        tags = {"app": "proof", "room name": "Zürich"}
        args = {"iceServers": doc["iceServers"], "token": doc["telemetryToken"], "callId": name,
                "tags": tags, "timeoutMs": 10_000, **kw}  # fmt: skip
        result: dict[str, Any] = page.evaluate("(args) => window.call(args)", args)
        return result

    direct = call({"iceServers": [], "telemetryToken": issue("eu")["telemetryToken"]}, "direct")
    assert direct["state"] == "connected" and direct["message"] == "hello", direct
    relay_doc = issue("us", ["udp"])
    relayed = call(relay_doc, "relay", policy="relay")
    assert relayed["state"] == "connected" and relayed["message"] == "hello", relayed
    wrong = issue("us", ["udp"])
    for server_entry in wrong["iceServers"]:
        if "credential" in server_entry:
            server_entry["credential"] = "not-the-password"
    refused = call(wrong, "wrong", policy="relay", timeoutMs=2500)
    assert refused["state"] != "connected", refused
    tls = call(issue("ap", ["tls"]), "tls", policy="relay")
    assert tls["state"] == "connected" and tls["message"] == "hello", tls
    for result in (direct, relayed, refused, tls):
        assert [p.get("status") for p in result["posted"]] == [201, 201], result["posted"]

    calls = json.loads(cli(server, "calls", "list", "--json"))
    by_call = {c["callId"]: c for c in calls}
    assert set(by_call) == {f"{n}-{s}" for n in ("direct", "relay", "wrong", "tls") for s in "ab"}
    for side in "ab":
        assert by_call[f"direct-{side}"]["outcome"] == "connected-direct", by_call
        assert by_call[f"direct-{side}"]["path"] == "host-host"
        relay = by_call[f"relay-{side}"]
        assert (relay["outcome"], relay["relayProtocol"]) == ("connected-relay", "udp"), relay
        assert relay["region"] == "us" and relay["browser"] == "chrome"
        assert relay["tags"] == ["app=proof", "room_name=Zürich"]  # the SDK made the key fit
        failed = by_call[f"wrong-{side}"]
        assert (failed["outcome"], failed["cause"]) == ("failed", "turn-auth-failed"), failed
        assert by_call[f"direct-{side}"]["timeToConnectedMs"] > 0
        over_tls = by_call[f"tls-{side}"]
        assert (over_tls["outcome"], over_tls["relayProtocol"]) == ("connected-relay", "tls")

    # One call joined to the exact iceServers it was issued.
    shown = json.loads(cli(server, "calls", "show", by_call["relay-a"]["id"], "--json"))
    assert shown["issuance"]["requestId"] == relay_doc["requestId"]
    issued_urls = [u for s in shown["issuance"]["iceServers"] for u in s["urls"]]
    assert issued_urls == [u for s in relay_doc["iceServers"] for u in s["urls"]]
    assert shown["record"]["config"]["iceServers"] == [
        {"urls": s["urls"]} for s in relay_doc["iceServers"]
    ]
    assert "credential" not in json.dumps(shown["record"])
    pairs = shown["record"]["pairs"]
    assert any(p["state"] == "succeeded" and p["requestsSent"] > 0 for p in pairs), pairs

    # The dashboard: 2 failed of 8, 4 relayed of 6 connected.
    basic = "Basic " + base64.b64encode(f"ops:{admin}".encode()).decode()
    status, html, _ = http(server, "GET", "/dashboard", headers={"Authorization": basic})
    assert status == 200
    assert "ICE failure rate<b>25.0%</b>" in html and "relay share<b>66.7%</b>" in html
    assert "turn-auth-failed" in html
    # On a phone-sized screen, as an operator sees it (ICEWARD_SCREENSHOT=path keeps a copy).
    phone = page.context.browser.new_context(
        viewport={"width": 390, "height": 844}, extra_http_headers={"Authorization": basic}
    )
    try:
        view = phone.new_page()
        view.goto(server.http_url + "/dashboard")
        assert view.evaluate("document.documentElement.scrollWidth") <= 400
        shot = os.environ.get("ICEWARD_SCREENSHOT")
        if shot:
            view.screenshot(path=shot, full_page=True)
    finally:
        phone.close()

    # Prometheus saw the failures and the shipped failure-rate rule fires.
    alert = "IcewardIceFailureRateHigh"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alerts(prometheus).get(alert) != "firing":
        time.sleep(0.5)
    assert _alerts(prometheus).get(alert) == "firing", _alerts(prometheus)

    # A page left mid-call: the SDK posts on pagehide with sendBeacon.
    left = call(issue("eu"), "leave", keepOpen=True)
    assert left["state"] == "connected", left
    page.goto(server.http_url + "/healthz")
    deadline = time.monotonic() + 10
    beacons: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(beacons) < 2:
        time.sleep(0.3)
        beacons = [c for c in json.loads(cli(server, "calls", "list", "--json"))
                   if c["callId"].startswith("leave-")]  # fmt: skip
    assert sorted(c["outcome"] for c in beacons) == ["connected-direct"] * 2, beacons
    record = json.loads(cli(server, "calls", "show", beacons[0]["id"], "--json"))["record"]
    assert record["reason"] == "pagehide"


def test_shipped_rules_and_dashboard_name_exported_metrics(server: RunningServer) -> None:
    check_references(server)
