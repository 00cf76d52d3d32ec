"""One relayed call from the SDK's app page, printed as JSON (run inside a namespace).

``python -m tests.telemetry.ns_call BASE_URL API_KEY``: used by test_netns_call.py through
``ip netns exec NS``, so that the browser's whole network is the namespace's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from iceward.lab.browser import CHROMIUM_ARGS
from tests.realclients.test_chromium import chromium_path

PAGE = Path(__file__).with_name("app_page.html")
CALL = """async (key) => {
  const r = await fetch('/api/v1/ice-servers', {method: 'POST',
    headers: {'Authorization': 'Bearer ' + key, 'Content-Type': 'application/json'},
    body: JSON.stringify({user: 'ns-user', transports: ['udp'], region: 'lab'})});
  const doc = await r.json();
  return window.call({iceServers: doc.iceServers, token: doc.telemetryToken, callId: 'blocked',
                      policy: 'relay', timeoutMs: 7000});
}"""


def main(base_url: str, key: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page()
            page.goto(base_url + "/healthz")
            page.set_content(PAGE.read_text())
            page.wait_for_function("window.appReady === true")
            result = page.evaluate(CALL, key)
        finally:
            browser.close()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
