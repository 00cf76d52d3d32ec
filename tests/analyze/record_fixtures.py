"""Record the analyzer's Chromium fixtures: real webrtc-internals and rtcstats dumps.

    .venv/bin/python -m tests.analyze.record_fixtures            # every scenario
    .venv/bin/python -m tests.analyze.record_fixtures relay-udp  # some of them
    .venv/bin/python -m tests.analyze.record_fixtures --list

Each scenario starts a real ``iceward serve`` on loopback (as tests/conftest.py does), launches
the system Chromium (``/usr/bin/chromium`` or ``$CHROMIUM``; never a downloaded browser) through
Playwright with a test CA trusted in an NSS database under a temporary HOME (for ``turns:``),
opens chrome://webrtc-internals in one tab and tests/analyze/record_page.html in another, runs two
RTCPeerConnections there, then expands "Create a WebRTC-Internals dump" and downloads both the
"webrtc-internals dump" (gzip) and the "rtcstats dump". Files land in tests/analyze/fixtures/ as
``chromium<major>-<scenario>.internals.json.gz`` and ``chromium<major>-<scenario>.rtcstats.gz``.

Re-record when Chromium changes its dump format; tests/analyze/test_fixtures.py holds the
findings each scenario must produce. Recording is not part of the test suite (about 3 minutes:
the unreachable and failed scenarios wait for Chromium's own timeouts).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iceward.lab.browser import HEADLESS_ARGS
from tests.conftest import HOST, RunningServer, free_port_pair, make_test_ca, start_server

HERE = Path(__file__).parent
PAGE = HERE / "record_page.html"
FIXTURES = HERE / "fixtures"
CHROMIUM_ARGS = HEADLESS_ARGS
USER, PASSWORD = "alice", "wonderland"


@dataclass
class Scenario:
    description: str
    #: iceServers for the page, given the running server and a port nothing listens on.
    servers: Callable[[RunningServer, int], list[dict[str, Any]]]
    policy: str = "relay"
    delivery: str = "deliver"
    send: bool = True
    #: Seconds to keep recording after the call started (or after the internals tab opened).
    hold: float = 6.0
    #: Keep recording until this many seconds at most while ``until`` is false.
    max_wait: float = 0.0
    until: Callable[[dict[str, Any]], bool] | None = None
    #: Open chrome://webrtc-internals this many seconds after the call started (0: before).
    internals_late: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _turn(server: RunningServer, transport: str, password: str = PASSWORD) -> dict[str, Any]:
    if transport == "tls":
        url = f"turns:localhost:{server.tls_port}?transport=tcp"
    else:
        url = f"turn:{HOST}:{server.port}?transport={transport}"
    return {"urls": [url], "username": USER, "credential": password}


def _connected(report: dict[str, Any]) -> bool:
    return all(state == "connected" for state in report["connection"])


def _failed(report: dict[str, Any]) -> bool:
    return all(state == "failed" for state in report["connection"])


def _has_701(report: dict[str, Any]) -> bool:
    return any(" candidate error 701 " in e for e in report["events"])


SCENARIOS: dict[str, Scenario] = {
    "relay-udp": Scenario(
        "two relay-only peers through turn: over UDP; data both ways",
        lambda s, dead: [_turn(s, "udp")],
    ),
    "relay-tcp": Scenario(
        "two relay-only peers through turn: over TCP; data both ways",
        lambda s, dead: [_turn(s, "tcp")],
    ),
    "relay-tls": Scenario(
        "two relay-only peers through turns: (TLS, test CA trusted); data both ways",
        lambda s, dead: [_turn(s, "tls")],
    ),
    "wrong-password": Scenario(
        "relay-only peers with a wrong TURN password (UDP and TCP URLs): 401, no relay candidate",
        lambda s, dead: [
            {
                "urls": [
                    f"turn:{HOST}:{s.port}?transport=udp",
                    f"turn:{HOST}:{s.port}?transport=tcp",
                ],
                "username": USER,
                "credential": "not-the-password",
            }
        ],
        hold=8.0,
    ),
    "stun-only-relay": Scenario(
        "iceTransportPolicy relay with only a stun: URL: nothing to gather",
        lambda s, dead: [{"urls": [f"stun:{HOST}:{s.port}"]}],
        hold=8.0,
    ),
    "turn-unreachable": Scenario(
        "relay-only peers whose TURN URLs (UDP and TCP) point at a port nothing listens on",
        lambda s, dead: [
            {
                "urls": [
                    f"turn:{HOST}:{dead}?transport=udp",
                    f"turn:{HOST}:{dead}?transport=tcp",
                ],
                "username": USER,
                "credential": PASSWORD,
            }
        ],
        hold=5.0,
        max_wait=60.0,
        until=_has_701,
    ),
    "ice-failed": Scenario(
        "working TURN, but every candidate reaches the other side with a dead port: checks are"
        " never answered and ICE fails",
        lambda s, dead: [_turn(s, "udp")],
        policy="all",
        delivery="mangle",
        hold=3.0,
        max_wait=60.0,
        until=_failed,
    ),
    "direct-host": Scenario(
        "no iceServers, policy all: two peers connect host to host (mDNS host candidates)",
        lambda s, dead: [],
        policy="all",
    ),
    "late-internals": Scenario(
        "relay over UDP; chrome://webrtc-internals opened 8 s after the call started",
        lambda s, dead: [_turn(s, "udp")],
        hold=5.0,
        internals_late=8.0,
    ),
}


def chromium_path() -> str:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no chromium on PATH (apt-get install chromium); set $CHROMIUM")


def trust_ca(home: Path, ca_pem: Path) -> None:
    certutil = shutil.which("certutil")
    if certutil is None:
        raise SystemExit("certutil is missing (apt-get install libnss3-tools)")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    db = f"sql:{nssdb}"
    subprocess.run([certutil, "-d", db, "-N", "--empty-password"], check=True)
    subprocess.run(
        [certutil, "-d", db, "-A", "-t", "C,,", "-n", "iceward-test-ca", "-i", str(ca_pem)],
        check=True,
    )


def _download(internals: Any, button: str, target: Path) -> None:
    with internals.expect_download() as info:
        internals.click(button)
    download = info.value
    tmp = target.with_suffix(".part")
    download.save_as(tmp)
    data = tmp.read_bytes()
    tmp.unlink()
    if data[:2] != b"\x1f\x8b":
        data = gzip.compress(data, mtime=0)
    target.write_bytes(data)


def record(name: str, scenario: Scenario, workdir: Path, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    ca = make_test_ca(workdir / "ca")
    home = workdir / "home"
    trust_ca(home, ca.ca_cert)
    (workdir / "server").mkdir()
    server = start_server(workdir / "server", cert=(ca.cert, ca.key), users={USER: PASSWORD})
    dead = free_port_pair()
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CONFIG_HOME")}
    env["HOME"] = str(home)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium_path(), args=CHROMIUM_ARGS, env=env, headless=True
            )
            major = browser.version.split(".")[0]
            context = browser.new_context(accept_downloads=True)
            internals = None
            if not scenario.internals_late:
                internals = context.new_page()
                internals.goto("chrome://webrtc-internals")
            page = context.new_page()
            page.set_content(PAGE.read_text())
            page.wait_for_function("window.recordPageReady === true")
            page.evaluate(
                "opts => startCall(opts)",
                {
                    "iceServers": scenario.servers(server, dead),
                    "policy": scenario.policy,
                    "delivery": scenario.delivery,
                    "deadPort": dead,
                    "send": scenario.send,
                },
            )
            if scenario.internals_late:
                time.sleep(scenario.internals_late)
                internals = context.new_page()
                internals.goto("chrome://webrtc-internals")
            assert internals is not None
            deadline = time.monotonic() + scenario.max_wait
            while scenario.until is not None and time.monotonic() < deadline:
                if scenario.until(page.evaluate("callReport()")):
                    break
                time.sleep(0.5)
            time.sleep(scenario.hold)
            report = page.evaluate("stopSending()")
            time.sleep(1.2)  # one more stats poll after the last message
            internals.bring_to_front()
            internals.click("summary:has-text('Create a WebRTC-Internals dump')")
            base = out / f"chromium{major}-{name}"
            dump = base.with_name(base.name + ".internals.json.gz")
            rtcstats = base.with_name(base.name + ".rtcstats.gz")
            _download(internals, "#dump-click-target", dump)
            _download(internals, "#dump-click-target-rtcstats", rtcstats)
            page.evaluate("closeAll()")
            browser.close()
    finally:
        server.stop()
    print(f"{name}: connection {report['connection']} ice {report['ice']}", file=sys.stderr)
    for event in report["events"]:
        print(f"    {event}", file=sys.stderr)
    return [dump, rtcstats]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", help="names (default: all)")
    parser.add_argument("--out", type=Path, default=FIXTURES)
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    if args.list:
        for name, scenario in SCENARIOS.items():
            print(f"{name:18} {scenario.description}")
        return 0
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"iceward-rec-{name}-") as tmp:
            for path in record(name, SCENARIOS[name], Path(tmp), args.out):
                print(f"{path}  {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
