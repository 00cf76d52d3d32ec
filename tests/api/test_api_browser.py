"""Chromium fetches its iceServers from the HTTP API, as an app would, and relays through them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import RunningServer
from tests.realclients.test_chromium import (  # noqa: F401 - fixtures
    PAGE,
    browser,
    browser_ca,
    describe,
)

pytestmark = pytest.mark.realclient

FETCH_AND_RELAY = """
async ({key, transport}) => {
  const response = await fetch('/api/v1/ice-servers', {
    method: 'POST',
    headers: {'Authorization': 'Bearer ' + key, 'Content-Type': 'application/json'},
    body: JSON.stringify({user: 'browser-user', ttl: 600, transports: [transport]}),
  });
  const doc = await response.json();
  const report = await runRelayTest({iceServers: doc.iceServers, count: 10, timeoutMs: 20000});
  return {status: response.status, doc, report};
}
"""


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_chromium_relays_with_credentials_from_the_api(
    browser: Any,  # noqa: F811
    make_server: Callable[..., RunningServer],
    transport: str,
) -> None:
    server = make_server()
    key = subprocess.run(
        [sys.executable, "-m", "iceward", "keys", "add", "web", "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(server.http_url + "/healthz")  # the API's origin: same-origin fetch, no CORS
        page.set_content(PAGE.read_text())
        page.wait_for_function("window.relayPageReady === true")
        result = page.evaluate(FETCH_AND_RELAY, {"key": key, "transport": transport})
    finally:
        context.close()
    assert result["status"] == 200, result
    turn = next(s for s in result["doc"]["iceServers"] if "username" in s)
    assert turn["urls"] == [f"turn:127.0.0.1:{server.port}?transport={transport}"]
    report = result["report"]
    why = describe(report, server)
    assert report["ok"], why
    assert report["received"]["pc2"] == [f"pc1->pc2 #{i}" for i in range(10)], why
    for name in ("pc1", "pc2"):
        local = report["selected"][name]["local"]
        assert local["candidateType"] == "relay" and local["relayProtocol"] == transport
    log = server.log_text()
    assert "user='browser-user'" in log and turn["credential"] not in log
