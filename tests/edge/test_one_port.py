"""One TLS port for everything: HTTPS, TURN over TLS and TURN over plain TCP on the same socket.

Chromium loads the test page over ``https://localhost:P/test`` and, from that very page, relays
a data channel through ``turns:localhost:P?transport=tcp`` (no ALPN: the first decrypted bytes
route it to TURN), then through ``turn:127.0.0.1:P?transport=tcp`` (plain TCP, chosen by the first
byte). coturn's ``turnutils_uclient`` relays over TLS and over plain TCP through P at once, and
so do two aioice agents. One server of one process, then one of two workers (where the
supervisor serves the HTTPS that workers hand over), each shared by the module's tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import aioice
import pytest

from iceward.turn.credentials import mint_rest_credential
from tests.api.test_api import cli
from tests.conftest import HOST, CertAuthority, RunningServer, start_server
from tests.edge.test_proxy_recipes import v2_header
from tests.realclients.test_aioice import bounded, exchange, transfer
from tests.realclients.test_chromium import (  # noqa: F401  (fixtures)
    CONNECT_TIMEOUT_MS,
    MESSAGES,
    PAGE,
    SECRET,
    browser,
    browser_ca,
    describe,
)
from tests.realclients.test_uclient import (
    CREDENTIALS,
    EXPECTED_USER,
    TRAFFIC,
    assert_relayed,
    run_uclients,
)
from tests.realclients.test_uclient import uclient as uclient
from tests.testpage.test_reports_api import VALID

pytestmark = pytest.mark.realclient

#: A load balancer's address, as far as the server knows (--proxy-protocol-from).
PROXY = "127.0.0.3"

RELAY_SCRIPT = re.search(r"<script>(.*)</script>", PAGE.read_text(), re.S).group(1)  # type: ignore[union-attr]


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    browser_ca: CertAuthority,  # noqa: F811
    workers: int,
) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("one-port"),
        "--proxy-protocol-from",
        f"{PROXY}/32",
        cert=(browser_ca.cert, browser_ca.key),
        workers=workers,
    )
    try:
        yield running
    finally:
        running.stop()


def relay(page: Any, url: str) -> dict[str, Any]:
    rest = mint_rest_credential(SECRET, "one-port", 600, time.time())
    ice_servers = [{"urls": [url], "username": rest.username, "credential": rest.password}]
    report: dict[str, Any] = page.evaluate(
        "opts => runRelayTest(opts)",
        {"iceServers": ice_servers, "count": MESSAGES, "timeoutMs": CONNECT_TIMEOUT_MS},
    )
    return report


def test_https_page_and_turns_and_turn_tcp_on_one_port(
    browser: Any,  # noqa: F811
    server: RunningServer,
) -> None:
    port = server.tls_port
    context = browser.new_context()
    try:
        page = context.new_page()
        response = page.goto(f"https://localhost:{port}/test")
        assert response is not None and response.ok, response
        assert response.url.startswith("https://"), response.url
        assert page.locator("body").inner_text(), "empty test page"
        page.add_script_tag(content=RELAY_SCRIPT)
        page.wait_for_function("window.relayPageReady === true")
        for url, protocol in (
            (f"turns:localhost:{port}?transport=tcp", "tls"),
            (f"turn:{HOST}:{port}?transport=tcp", "tcp"),
        ):
            report = relay(page, url)
            why = f"{url}: {describe(report, server)}"
            assert report["ok"], why
            assert report["received"]["pc1"] == [f"pc2->pc1 #{i}" for i in range(MESSAGES)], why
            for name in ("pc1", "pc2"):
                assert report["selected"][name]["local"]["relayProtocol"] == protocol, why
    finally:
        context.close()
    # The TURN connections were routed by their bytes; the page's by its ALPN (http/1.1).
    log = server.log_text()
    assert "HTTP asked for where no HTTP API is served" not in log
    shared = "(TURN over TLS, TURN over TCP and HTTPS), not 443"
    assert f"# turns: on port {port} {shared}" in log


def test_uclient_over_tls_and_plain_tcp_on_the_tls_port(
    uclient: str,
    server: RunningServer,
) -> None:
    runs = run_uclients(
        uclient,
        server.tls_port,
        {
            "static": (*TRAFFIC, "-t", "-S", *CREDENTIALS["static"]),
            "rest": (*TRAFFIC, "-t", *CREDENTIALS["rest"]),
        },
    )
    for name, run in runs.items():
        assert_relayed(run, server, EXPECTED_USER[name])
    log = server.log_text()
    static = re.findall(r"allocation start client=(\w+):\S+ user='alice'", log)
    rest = re.findall(r"allocation start client=(\w+):\S+ user='\d+:someone'", log)
    assert static and set(static) == {"tls"}, static
    assert rest and set(rest) == {"tcp"}, rest


@pytest.mark.parametrize("alpn", [["http/1.1"], ["h2", "http/1.1"], None])
def test_https_api_by_alpn_or_request_line(
    server: RunningServer,
    browser_ca: CertAuthority,  # noqa: F811
    alpn: list[str] | None,
) -> None:
    ctx = ssl.create_default_context(cafile=str(browser_ca.ca_cert))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    answer = b""
    with (
        socket.create_connection((HOST, server.tls_port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == ("http/1.1" if alpn else None)
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        try:
            while chunk := tls.recv(4096):
                answer += chunk
        except (ConnectionError, ssl.SSLError):
            pass
    # With workers, a hello asking for HTTP goes to the supervisor before TLS; one without ALPN
    # is decrypted by the worker and piped to the supervisor.
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_stun_alpn_goes_to_turn(server: RunningServer, browser_ca: CertAuthority) -> None:  # noqa: F811
    from tests.net.test_limits import binding_request

    ctx = ssl.create_default_context(cafile=str(browser_ca.ca_cert))
    ctx.set_alpn_protocols(["stun.turn"])
    _, request = binding_request()
    with (
        socket.create_connection((HOST, server.tls_port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == "stun.turn"
        tls.sendall(request)
        assert tls.recv(2048)[:2] == b"\x01\x01"  # a Binding success response


@pytest.mark.parametrize("over_tls", [True, False], ids=["tls", "tcp"])
def test_aioice_relays_over_tls_and_tcp_on_the_tls_port(
    server: RunningServer,
    browser_ca: CertAuthority,  # noqa: F811
    over_tls: bool,
) -> None:
    turn_ssl: Any = (
        ssl.create_default_context(cafile=str(browser_ca.ca_cert)) if over_tls else False
    )

    def agent(controlling: bool) -> aioice.Connection:
        return aioice.Connection(
            ice_controlling=controlling,
            components=1,
            turn_server=(HOST, server.tls_port),
            turn_username="alice",
            turn_password="wonderland",
            turn_ssl=turn_ssl,
            turn_transport="tcp",
            use_ipv6=False,
            transport_policy=aioice.TransportPolicy.RELAY,
        )

    async def session() -> None:
        a, b = agent(True), agent(False)
        try:
            await bounded(asyncio.gather(a.gather_candidates(), b.gather_candidates()), "gather")
            assert [c.type for c in a.local_candidates + b.local_candidates] == ["relay"] * 2
            await exchange(a, b)
            await bounded(asyncio.gather(a.connect(), b.connect()), "ICE connect")
            await transfer(a, b, b"a>b ")
            await transfer(b, a, b"b>a ")
        finally:
            await bounded(asyncio.gather(a.close(), b.close()), "close")

    # In a thread of its own: the module's Chromium (Playwright's sync API) holds this one's loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, session()).result()


@pytest.mark.parametrize("alpn", [["h2", "http/1.1"], None], ids=["alpn", "no-alpn"])
@pytest.mark.parametrize(("claimed", "status"), [("198.51.100.7", 403), ("127.0.0.8", 200)])
def test_https_behind_a_proxy_header_sees_its_client(
    server: RunningServer,
    browser_ca: CertAuthority,  # noqa: F811
    claimed: str,
    status: int,
    alpn: list[str] | None,
) -> None:
    """With workers too, where the socket goes to the supervisor with the header's client (or,
    without ALPN, the worker pipes what it decrypted): the admin API (loopback only) refuses a
    client the header says is remote, though the connection itself comes from loopback."""
    admin = cli(server, "keys", "add", f"ops-{claimed}-{bool(alpn)}", "--admin")
    ctx = ssl.create_default_context(cafile=str(browser_ca.ca_cert))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    answer = b""
    with socket.create_connection(
        (HOST, server.tls_port), timeout=5, source_address=(PROXY, 0)
    ) as raw:
        raw.sendall(v2_header((claimed, 40000)))
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(
                b"GET /admin/v1/allocations HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                + f"Authorization: Bearer {admin}\r\n\r\n".encode()
            )
            while chunk := tls.recv(4096):
                answer += chunk
    assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer[:300]


@pytest.mark.parametrize("alpn", [["http/1.1"], None], ids=["alpn", "no-alpn"])
def test_links_the_api_answers_over_the_tls_port_are_https(
    server: RunningServer,
    browser_ca: CertAuthority,  # noqa: F811
    alpn: list[str] | None,
) -> None:
    """The HTTP server knows it is behind TLS (with workers: in the supervisor, also for what a
    worker decrypted and piped), so a report's shareable link is https."""
    ctx = ssl.create_default_context(cafile=str(browser_ca.ca_cert))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    body = json.dumps(VALID).encode()
    with (
        socket.create_connection((HOST, server.tls_port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(
            b"POST /api/v1/reports HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        answer = b""
        while chunk := tls.recv(4096):
            answer += chunk
    head, _, doc = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201"), answer[:300]
    assert json.loads(doc)["url"].startswith("https://localhost"), doc
