"""Chromium's own TURN client against a real ``iceward serve``.

Two relay-only RTCPeerConnections in one page (tests/realclients/relay_page.html) connect through
the server over each TURN transport (UDP, TCP, TLS) with static and REST credentials, move data
both ways over a data channel, and report the selected candidate pair from getStats(). An expired
REST credential must be refused (401) and never connect.

Chromium is the system one (``/usr/bin/chromium`` or ``$CHROMIUM``), never a downloaded build. It
validates ``turns:`` certificates, so the test CA is trusted in an NSS database under a private
HOME given to the browser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iceward.lab.browser import HEADLESS_ARGS
from iceward.turn.credentials import mint_rest_credential
from tests.conftest import CertAuthority, RunningServer, make_test_ca, require_tool

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.realclient

PAGE = Path(__file__).with_name("relay_page.html")
SECRET = "test-shared-secret"
MESSAGES = 20
CONNECT_TIMEOUT_MS = 10_000
REFUSED_WAIT_MS = 8_000
CHROMIUM_ARGS = HEADLESS_ARGS


def chromium_path() -> str:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return require_tool("chromium")


def trust_ca(home: Path, ca_pem: Path) -> None:
    """An NSS database under ``home`` trusting ``ca_pem`` for TLS servers (what Chromium reads)."""
    certutil = require_tool("certutil")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    db = f"sql:{nssdb}"
    subprocess.run([certutil, "-d", db, "-N", "--empty-password"], check=True)
    subprocess.run(
        [certutil, "-d", db, "-A", "-t", "C,,", "-n", "iceward-test-ca", "-i", str(ca_pem)],
        check=True,
    )


@pytest.fixture(scope="module")
def browser_ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    """One test CA for the module: the browser is launched trusting it, servers present its leaf."""
    return make_test_ca(tmp_path_factory.mktemp("chromium-ca"))


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, browser_ca: CertAuthority) -> Iterator[Any]:
    executable = chromium_path()
    home = tmp_path_factory.mktemp("chromium-home")
    trust_ca(home, browser_ca.ca_cert)
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CONFIG_HOME")}
    env["HOME"] = str(home)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, env=env, headless=True
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    pg = context.new_page()
    pg.set_content(PAGE.read_text())
    pg.wait_for_function("window.relayPageReady === true")
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture
def server(make_server: Callable[..., RunningServer], browser_ca: CertAuthority) -> RunningServer:
    return make_server(cert=(browser_ca.cert, browser_ca.key))


def turn_url(server: RunningServer, transport: str) -> str:
    if transport == "tls":
        # The certificate names localhost; Chromium checks it against the URL's host.
        return f"turns:localhost:{server.tls_port}?transport=tcp"
    return f"turn:{server.host}:{server.port}?transport={transport}"


def credentials(kind: str) -> tuple[str, str]:
    if kind == "static":
        return "alice", "wonderland"
    rest = mint_rest_credential(SECRET, "chromium", 600, time.time())
    return rest.username, rest.password


def describe(report: dict[str, Any], server: RunningServer) -> str:
    """Failure context: the page's report and the tail of the server's debug log."""
    tail = "\n".join(server.log_text().splitlines()[-60:])
    return f"page report: {report}\n--- server log (tail) ---\n{tail}"


@pytest.mark.parametrize("auth", ["static", "rest"])
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_relay_data_channel(page: Any, server: RunningServer, transport: str, auth: str) -> None:
    username, password = credentials(auth)
    ice_servers = [
        {"urls": [turn_url(server, transport)], "username": username, "credential": password}
    ]
    report: dict[str, Any] = page.evaluate(
        "opts => runRelayTest(opts)",
        {"iceServers": ice_servers, "count": MESSAGES, "timeoutMs": CONNECT_TIMEOUT_MS},
    )
    context = describe(report, server)
    assert report["ok"], context
    assert report["received"]["pc1"] == [f"pc2->pc1 #{i}" for i in range(MESSAGES)], context
    assert report["received"]["pc2"] == [f"pc1->pc2 #{i}" for i in range(MESSAGES)], context
    for name in ("pc1", "pc2"):
        selected = report["selected"][name]
        assert selected["pairId"], context
        assert selected["local"]["candidateType"] == "relay", context
        assert selected["remote"]["candidateType"] == "relay", context
        assert selected["local"]["relayProtocol"] == transport, context
        # Relayed addresses are the server's: loopback here.
        assert selected["local"]["address"] == server.host, context
    assert report["errors"] == [], context
    # Chromium reports TURN error responses it could not recover from (a 401 after retrying
    # with the nonce, 4xx/5xx on Allocate/CreatePermission...) as icecandidateerror.
    assert [e for e in report["candidateErrors"] if e["errorCode"] < 700] == [], context


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_expired_rest_credential_refused(page: Any, server: RunningServer, transport: str) -> None:
    expired = mint_rest_credential(SECRET, "x", 1, time.time() - 3600)
    ice_servers = [
        {
            "urls": [turn_url(server, transport)],
            "username": expired.username,
            "credential": expired.password,
        }
    ]
    report: dict[str, Any] = page.evaluate(
        "opts => runRefusedTest(opts)", {"iceServers": ice_servers, "waitMs": REFUSED_WAIT_MS}
    )
    context = describe(report, server)
    assert report["ok"], context
    for name in ("pc1", "pc2"):
        assert report["gatheringComplete"].get(name), context
        assert [c for c in report["candidates"][name] if c["type"] == "relay"] == [], context
        assert "connected" not in report["states"][name], context
        assert report["finalStates"][name] != "connected", context
    assert any(e["errorCode"] == 401 for e in report["candidateErrors"]), context
    log_text = server.log_text()
    refusals = [
        line
        for line in log_text.splitlines()
        if "auth refused" in line and expired.username in line and "expired" in line
    ]
    assert refusals, context
