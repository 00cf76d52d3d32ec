"""Shared helpers of the test page tests: the iceward CLI, page runs, screenshots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.conftest import RunningServer

ROOT = Path(__file__).resolve().parents[2]
# The README's screenshots are refreshed with ICEWARD_SCREENSHOTS=docs/screenshots make test;
# otherwise a run leaves the tracked ones alone and writes to a scratch folder.
SCREENSHOTS = Path(
    os.environ.get("ICEWARD_SCREENSHOTS") or Path(tempfile.gettempdir()) / "iceward-screenshots"
).resolve()
RUN_TIMEOUT_MS = 60_000
RESULT_JS = """() => ({
  state: document.body.dataset.state,
  summary: window.iceward.summary,
  answer: window.iceward.answer,
  findings: window.iceward.findings,
  rows: window.iceward.rows,
  facts: window.iceward.facts,
  status: document.getElementById('status').textContent,
})"""


def iceward(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iceward", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


def make_link(server: RunningServer, ttl: int = 600) -> str:
    out = iceward(
        "test-link", "--data-dir", str(server.data_dir), "--base-url", server.http_url,
        "--ttl", str(ttl),
    )  # fmt: skip
    return out.stdout.strip()


def wait_done(page: Any) -> dict[str, Any]:
    page.wait_for_function("document.body.dataset.state === 'done'", timeout=RUN_TIMEOUT_MS)
    result: dict[str, Any] = page.evaluate(RESULT_JS)
    return result


def row(result: dict[str, Any], kind: str, transport: str) -> dict[str, Any]:
    rows = [r for r in result["rows"] if r["kind"] == kind and r["transport"] == transport]
    assert len(rows) == 1, json.dumps(result, indent=1)
    return rows[0]


def codes(result: dict[str, Any], severity: str | None = None) -> list[str]:
    return [f["code"] for f in result["findings"] if severity is None or f["severity"] == severity]


#: Visible elements whose right edge is past the viewport (cut off on a phone), if any.
OVERFLOWING_JS = """() => [...document.querySelectorAll('body *')].filter((e) => {
  const r = e.getBoundingClientRect();
  return r.width > 0 && r.height > 0 && r.right > window.innerWidth + 0.5;
}).map((e) => `${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''}.${e.className}`)"""


def overflowing(page: Any) -> list[str]:
    found: list[str] = page.evaluate(OVERFLOWING_JS)
    return found


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)
