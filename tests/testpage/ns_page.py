"""Open a test link in Chromium, share the report, print the result as JSON (in a namespace).

``python -m tests.testpage.ns_page URL [SCREENSHOT]``: used by test_netns.py through
``ip netns exec NS``, so that the browser's whole network is the namespace's.
"""

from __future__ import annotations

import json
import sys

from playwright.sync_api import sync_playwright

from tests.realclients.test_chromium import CHROMIUM_ARGS, chromium_path
from tests.testpage.helpers import RESULT_JS, RUN_TIMEOUT_MS


def main(url: str, screenshot: str | None) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(url)
            page.wait_for_function("document.body.dataset.state === 'done'", timeout=RUN_TIMEOUT_MS)
            result = page.evaluate(RESULT_JS)
            if screenshot:
                page.screenshot(path=screenshot, full_page=True)
            page.click("#share")
            page.locator("#share-link").wait_for(timeout=10_000)
            result["shared"] = page.locator("#share-link").get_attribute("href")
        finally:
            browser.close()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
