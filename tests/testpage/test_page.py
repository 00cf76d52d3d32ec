"""The browser connectivity test page in Debian's Chromium against a real ``iceward serve``.

The page gets its config from a test link (token), or a pasted iceServers JSON, gathers per URL,
tests the relay data path per TURN transport and shows a verdict in the findings vocabulary.
Screenshots of the runs go to docs/screenshots/ (the README shows them).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from iceward.diagnose.address import internal_reason
from tests import conftest
from tests.conftest import CertAuthority, RunningServer, free_tcp_port
from tests.realclients.test_chromium import (  # noqa: F401 - fixtures
    CHROMIUM_ARGS,
    browser,
    browser_ca,
    chromium_path,
)
from tests.testpage.helpers import (
    codes,
    iceward,
    make_link,
    overflowing,
    row,
    screenshot,
    wait_done,
)

pytestmark = pytest.mark.realclient

VIEWPORT = {"width": 1000, "height": 800}
#: Hosts the page's internal-address check must judge as the server's diagnose.address does.
HOSTS = [
    "100.64.0.1", "100.128.0.1", "0.1.2.3", "fe80::1", "FE80::1%eth0", "::ffff:10.0.0.1",
    "::ffff:8.8.8.8", "64:ff9b::a00:1", "64:ff9b::808:808", "64:ff9b:1:a00:1::", "2002:a00:1::",
    "2002:808:808::", "2001:0:4136:e378:8000:63bf:f5ff:fffe", "::127.0.0.1", "::1.2.3.4", "::",
    "::1", "fd00::1", "fc00::", "fec0::1", "ff02::1", "100::1", "fdn.example", "fc.example",
    "203.0.113.5", "2001:db8::1", "8.8.8.8", "localhost", "x.localhost", "printer.local",
    "[::1]", "169.254.169.254", "169.254.1.1", "198.18.0.1", "224.0.0.1", "255.255.255.255",
    "192.0.0.8", "::ffff:0:7f00:1", "10.0.0.1", "172.16.5.4", "172.32.0.1", "192.168.1.1",
    "1.2.3.04", "1:2:3:4:5:6:7::", "1::2::3", "turn.example.org",
]  # fmt: skip


def server_with_urls(
    make_server: Callable[..., RunningServer],
    monkeypatch: pytest.MonkeyPatch,
    *,
    tcp_port: int | None = None,
    tls: bool = True,
    **options: Any,
) -> RunningServer:
    """A server whose --public-url list names its own ports (localhost for the TLS certificate),
    or a closed port for TURN over TCP."""

    def start(port: int, tls_port: int) -> RunningServer:
        if tcp_port in (port, tls_port):
            raise conftest.PortTaken("the closed port was picked for the server")
        urls = [
            f"stun:127.0.0.1:{port}",
            f"turn:127.0.0.1:{port}?transport=udp",
            f"turn:127.0.0.1:{tcp_port or port}?transport=tcp",
        ]
        if tls:
            urls.append(f"turns:localhost:{tls_port}?transport=tcp")
        flags = [arg for u in urls for arg in ("--public-url", u)]
        tls_flag = tls_port if tls else 0
        return make_server(*flags, tls=tls, port=port, tls_port=tls_flag, **options)

    server = conftest.with_fixed_ports(start)  # the URLs name the ports: fixed, not port 0
    return server


@pytest.fixture
def page(browser: Any) -> Any:  # noqa: F811
    context = browser.new_context(viewport=VIEWPORT)
    try:
        yield context.new_page()
    finally:
        context.close()


def test_healthy_setup_every_transport_green_then_shared(
    page: Any,
    make_server: Callable[..., RunningServer],
    browser_ca: CertAuthority,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = server_with_urls(make_server, monkeypatch, cert=(browser_ca.cert, browser_ca.key))
    page.goto(make_link(server))
    result = wait_done(page)
    context = json.dumps(result, indent=1)
    assert row(result, "stun", "udp")["status"] == "ok", context
    for transport in ("udp", "tcp", "tls"):
        r = row(result, "turn", transport)
        assert r["status"] == "ok", context
        assert r["relay"] >= 1 and r["relayProtocol"] == transport, context
        assert r["datapath"]["delivered"] == r["datapath"]["sent"] == 20, context
        assert r["datapath"]["rttP50"] is not None, context
        cells = f"tr[data-kind=turn][data-transport={transport}][data-status=ok]"
        assert page.locator(cells).count() == 1
    assert codes(result, "error") == [], context
    assert result["summary"].startswith("TURN over"), context
    assert "UDP" in result["summary"] and "TLS" in result["summary"], context
    assert page.locator("#answer").inner_text() == "Calls from this network will connect."
    # The one sentence when only TCP/TLS relays, and the internal-address check against the
    # server's own (the page gets the peer policy's table from /test/policy.json).
    relayed_only = page.evaluate(
        """() => answerFor([{kind: "turn", transport: "udp", status: "fail"},
          {kind: "turn", transport: "tls", status: "ok"},
          {kind: "turn", transport: "tcp", status: "warn"}], [])"""
    )
    assert relayed_only == (
        "Calls from this network will connect only through the relay (TURN over TCP/TLS)."
    )
    page_says = page.evaluate("(hosts) => hosts.map((h) => internalReason(h))", HOSTS)
    assert page_says == [internal_reason(h) for h in HOSTS]
    # Titles and fixes come from the server's vocabulary, not from the page.
    assert (
        page.locator("#findings li[data-code=no-tls-443]")
        .inner_text()
        .count("No turns: URL on port 443")
        == 1
    )
    screenshot(page, "test-page-healthy.png")

    # Which pair does the browser pick with every candidate allowed?
    page.click("#run-all")
    page.wait_for_function(
        "document.body.dataset.state === 'done' && window.iceward.allPolicy !== null"
    )
    after = page.evaluate("() => window.iceward.findings.map(f => f.code)")
    assert {"relay-in-use", "direct-path"} & set(after), after
    assert page.locator("#all-policy").is_visible()

    # Share with support: stored, listed, rendered, analysable.
    page.click("#share")
    link = page.locator("#share-link")
    link.wait_for(timeout=10_000)
    url = link.get_attribute("href")
    assert url and "/reports/" in url
    report_id = url.rsplit("/", 1)[1]
    listed = json.loads(
        iceward("reports", "list", "--json", "--data-dir", str(server.data_dir)).stdout
    )
    assert [r["id"] for r in listed] == [report_id]
    shown = iceward("reports", "show", report_id, "--data-dir", str(server.data_dir), check=False)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "TURN over" in shown.stdout and "turns:localhost" in shown.stdout
    stored = json.loads(
        iceward("reports", "show", report_id, "--json", "--data-dir", str(server.data_dir)).stdout
    )
    assert "credential" not in json.dumps(stored)
    assert stored["rows"] and stored["getStats"]

    page.goto(url)
    page.wait_for_function("document.body.dataset.state === 'report'")
    assert page.locator("#summary").inner_text() == result["summary"]
    assert page.locator("tr[data-kind=turn][data-transport=tcp][data-status=ok]").count() == 1
    screenshot(page, "test-page-report.png")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing wider than it
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert overflowing(page) == []  # the table stacks: relay and errors columns on screen
    screenshot(page, "test-page-phone.png")
    with page.expect_download() as info:
        page.click("#download")
    downloaded = tmp_path / "report.json"
    info.value.save_as(downloaded)
    analysed = iceward("analyze", "--json", str(downloaded), check=False)
    assert analysed.returncode in (0, 1), analysed.stderr
    analysis = json.loads(analysed.stdout)
    assert analysis["peerConnections"], analysis


def test_wrong_credential_on_a_phone_one_finding_and_the_report_analysed(
    page: Any, make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """A credential refused on every URL: one turn-auth-failed listing them, a credential valid
    for years flagged as the doctor does, the answer for the user, a page that fits a phone and
    locks its buttons while it runs; the shared report (no getStats(): nothing connected) is
    what support runs iceward analyze on."""
    server = make_server(tls=False)
    urls = [f"turn:127.0.0.1:{server.port}?transport={t}" for t in ("udp", "tcp")]
    years = f"{int(time.time()) + 3 * 365 * 86400}:alice"
    config = {"iceServers": [{"urls": urls, "username": years, "credential": "not-the-password"}]}
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(server.http_url + "/test")
    page.evaluate(
        """() => { window.lockedWhileRunning = [];
          new MutationObserver(() => { if (document.body.dataset.state === 'running')
            window.lockedWhileRunning.push(['run', 'run-all', 'widen'].map(
              (id) => document.getElementById(id).disabled)); })
          .observe(document.body, {attributes: true, attributeFilter: ['data-state']}); }"""
    )
    # Labelled controls (what a screen reader announces) drive the page.
    page.get_by_label(re.compile("Paste an iceServers JSON")).fill(json.dumps(config))
    page.get_by_role("button", name="Run the test").click()
    result = wait_done(page)
    context = json.dumps(result, indent=1)
    assert page.evaluate("window.lockedWhileRunning") == [[True, True, True]]
    assert page.get_by_role("button", name="Allow microphone, then rerun").is_enabled()
    for transport in ("udp", "tcp"):
        r = row(result, "turn", transport)
        assert r["status"] == "fail" and r["relay"] == 0, context
        assert any(e["code"] == 401 for e in r["errors"]), context
    assert codes(result, "error") == ["turn-auth-failed"], context
    [refused] = [f for f in result["findings"] if f["code"] == "turn-auth-failed"]
    assert refused["subject"] == ", ".join(urls), context
    assert [line.split(": ")[0] for line in refused["evidence"]] == urls, context
    [static] = [f for f in result["findings"] if f["code"] == "static-credentials"]
    assert static["severity"] == "warning", context
    assert re.search(r"is valid for 109[45] d", static["evidence"][0]), context
    assert result["answer"] == (
        "Calls from this network will not connect: "
        "The TURN server refused the credential (401/441)."
    ), context
    assert page.locator("#answer").inner_text() == result["answer"]
    assert page.locator("#findings li[data-code=turn-auth-failed]").count() == 1
    assert overflowing(page) == [], context
    screenshot(page, "test-page-auth-failed.png")
    page.click("#share")
    report_id = page.locator("#share-link").get_attribute("href", timeout=10_000).rsplit("/")[-1]
    stored = iceward("reports", "show", report_id, "--json", "--data-dir", str(server.data_dir))
    assert json.loads(stored.stdout)["getStats"] == []
    path = tmp_path / "report.json"
    path.write_text(stored.stdout)
    analysed = iceward("analyze", "--json", str(path), check=False)
    assert analysed.returncode == 1, analysed.stdout + analysed.stderr
    analysis = json.loads(analysed.stdout)
    assert analysis["findings"][0]["code"] == "turn-auth-failed", analysed.stdout
    assert analysis["input"]["answer"] == result["answer"]


def test_turn_tcp_port_closed_and_a_self_signed_turns_certificate(
    page: Any, make_server: Callable[..., RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The closed TCP port is turn-unreachable; the turns: port answers but with iceward's own
    self-signed certificate, which the browser refuses: tls-certificate-invalid, as the doctor
    says, not "nothing answers"."""
    closed = free_tcp_port()  # bound by nobody: connections are refused
    server = server_with_urls(make_server, monkeypatch, tcp_port=closed)  # no --cert
    page.goto(make_link(server))
    result = wait_done(page)
    context = json.dumps(result, indent=1)
    tcp, tls = row(result, "turn", "tcp"), row(result, "turn", "tls")
    assert tcp["status"] == "fail" and tls["status"] == "fail", context
    assert row(result, "turn", "udp")["status"] == "ok", context
    unreachable = [f for f in result["findings"] if f["code"] == "turn-unreachable"]
    assert [f["subject"] for f in unreachable] == [tcp["url"]], context
    [certificate] = [f for f in result["findings"] if f["code"] == "tls-certificate-invalid"]
    assert certificate["subject"] == tls["url"], context
    assert "the TLS handshake is what fails" in " ".join(certificate["evidence"]), context
    assert tls["note"] == "certificate refused", context
    assert result["answer"] == "Calls from this network will connect.", context
    assert page.locator("tr[data-kind=turn][data-transport=tcp][data-status=fail]").count() == 1
    assert page.locator("tr[data-kind=turn][data-transport=udp][data-status=ok]").count() == 1
    screenshot(page, "test-page-tcp-closed.png")


def test_credentials_url_of_a_backend(page: Any, make_server: Callable[..., RunningServer]) -> None:
    """The config from a credentials URL (here the server's own token endpoint, same origin)."""
    server = make_server(tls=False)
    token = make_link(server).partition("?t=")[2]
    page.goto(server.http_url + "/test")
    page.get_by_label(re.compile("credentials URL")).fill(
        f"{server.http_url}/api/v1/test-ice-servers?t={token}"
    )
    page.get_by_role("button", name="Run the test").click()
    result = wait_done(page)
    context = json.dumps(result, indent=1)
    assert row(result, "turn", "udp")["status"] == "ok", context
    assert row(result, "turn", "tcp")["status"] == "ok", context
    assert "the credentials URL" in page.locator("#config-source").inner_text()


@pytest.fixture
def media_browser(browser: Any) -> Any:  # noqa: F811
    """A Chromium with a fake microphone (no hardware needed), launched by the same Playwright
    as the module's browser. Permission is still asked for, as for a real user."""
    args = [*CHROMIUM_ARGS, "--use-fake-device-for-media-stream"]
    b = browser.browser_type.launch(executable_path=chromium_path(), args=args, headless=True)
    try:
        yield b
    finally:
        b.close()


def test_microphone_permission_widens_gathering(
    media_browser: Any, make_server: Callable[..., RunningServer]
) -> None:
    """Granted microphone access shows host addresses instead of mDNS names."""
    server = make_server(tls=False)
    context = media_browser.new_context()
    page = context.new_page()
    page.goto(server.http_url + "/test")
    config = [{"urls": f"stun:127.0.0.1:{server.port}"}]
    page.get_by_label(re.compile("Paste an iceServers JSON")).fill(json.dumps(config))
    page.get_by_role("button", name="Run the test").click()
    before = wait_done(page)["facts"]
    assert before["mdnsHost"] is True and before["getUserMedia"] == "not-asked", before
    context.grant_permissions(["microphone"])  # the user answers the prompt with "Allow"
    page.get_by_role("button", name="Allow microphone, then rerun").click()
    page.wait_for_function(
        "document.body.dataset.state === 'done' && window.iceward.facts.widenedGathering !== null",
        timeout=30_000,
    )
    facts = page.evaluate("window.iceward.facts")
    assert facts["getUserMedia"] == "granted", facts
    assert facts["mdnsHost"] is False and facts["widenedGathering"] is True, facts
    assert "widened gathering" in page.locator("#facts").inner_text()
    context.close()
