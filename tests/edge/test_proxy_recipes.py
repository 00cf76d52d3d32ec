"""The README's load-balancer recipes, run with the real Debian packages in front of a server.

nginx (``stream``, ``ssl_preread`` routing by ALPN, ``proxy_protocol on``) and HAProxy (TCP mode,
``send-proxy-v2``) are started from the README's own configuration blocks, with only the ports
and the test's scaffolding (pid file, foreground, the website behind nginx) added. Through each,
a TURN client on its own loopback address allocates over TLS: the XOR-MAPPED-ADDRESS and the
admin API's client address are that client's, not the proxy's. A PROXY header from a source not
in ``--proxy-protocol-from``, and a listed source without one, are refused and counted.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iceward.stun import attributes as A
from iceward.stun import constants as C
from tests.api.test_api import cli, http, metric
from tests.conftest import (
    CertAuthority,
    RunningServer,
    free_tcp_port,
    make_test_ca,
    require_tool,
    start_server,
    stop_process,
)
from tests.net.test_limits import binding_request
from tests.net.turnclient import BlockingTurnClient

README = Path(__file__).parents[2] / "README.md"
#: Where the proxies run (the server trusts it) and where clients come from (it does not).
PROXY_HOST = "127.0.0.1"
CLIENT_NGINX, CLIENT_HAPROXY, STRANGER = "127.0.0.5", "127.0.0.6", "127.0.0.2"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
CONNECTION_TIMEOUT = 2


def recipe(name: str) -> str:
    """The configuration block under ``<!-- recipe: NAME -->`` in the README."""
    found = re.search(rf"<!-- recipe: {name} -->\n```\w*\n(.*?)```", README.read_text(), re.S)
    assert found, f"no {name} recipe in README.md"
    return found.group(1)


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")
        try:
            socket.create_connection((PROXY_HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {port}:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return make_test_ca(tmp_path_factory.mktemp("proxy-ca"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, ca: CertAuthority) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("proxied"),
        "--proxy-protocol-from",
        f"{PROXY_HOST}/32",
        "--connection-timeout",
        str(CONNECTION_TIMEOUT),
        "--max-connections-per-source",
        "2",
        cert=(ca.cert, ca.key),
        workers=1,
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def admin_key(server: RunningServer) -> str:
    return cli(server, "keys", "add", "ops", "--admin")


@pytest.fixture(scope="module")
def nginx(
    tmp_path_factory: pytest.TempPathFactory, server: RunningServer, ca: CertAuthority
) -> Iterator[int]:
    """nginx on a loopback port with the README's stream block; the website is nginx too."""
    binary = require_tool("nginx")
    assert os.path.exists(STREAM_MODULE), "libnginx-mod-stream is not installed (.ci/run does)"
    work = tmp_path_factory.mktemp("nginx")
    front, website = free_tcp_port(), free_tcp_port()
    stream = (
        recipe("nginx")
        .replace("127.0.0.1:5349", f"127.0.0.1:{server.tls_port}")
        .replace("127.0.0.1:8443", f"127.0.0.1:{website}")
        .replace("listen 443;", f"listen {PROXY_HOST}:{front};")
    )
    temp = " ".join(
        f"{kind}_temp_path {work}/{kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    config = work / "nginx.conf"
    config.write_text(
        f"load_module {STREAM_MODULE};\n"
        f"daemon off; master_process off; pid {work}/nginx.pid; error_log {work}/error.log;\n"
        "events {}\n"
        f"{stream}\n"
        "http {\n"
        f"  access_log off; {temp} uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;\n"
        f"  server {{ listen 127.0.0.1:{website} ssl proxy_protocol;\n"
        f"    ssl_certificate {ca.cert}; ssl_certificate_key {ca.key};\n"
        '    location / { return 200 "website for $proxy_protocol_addr\\n"; } }\n'
        "}\n"
    )
    log = work / "nginx.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-c", str(config), "-e", str(work / "error.log")], stdout=out, stderr=out
        )
    try:
        wait_listening(front, proc, work / "error.log")
        yield front
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def haproxy(tmp_path_factory: pytest.TempPathFactory, server: RunningServer) -> Iterator[int]:
    binary = require_tool("haproxy")
    work = tmp_path_factory.mktemp("haproxy")
    front = free_tcp_port()
    config = work / "haproxy.cfg"
    config.write_text(
        recipe("haproxy")
        .replace("127.0.0.1:5349", f"127.0.0.1:{server.tls_port}")
        .replace("bind :443", f"bind {PROXY_HOST}:{front}")
    )
    log = work / "haproxy.out"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=out, stderr=out)
    try:
        wait_listening(front, proc, log)
        yield front
    finally:
        stop_process(proc)


def tls_to(
    port: int, source: str, ca: CertAuthority, alpn: list[str] | None = None
) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(ca.ca_cert))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    raw = socket.create_connection((PROXY_HOST, port), timeout=5, source_address=(source, 0))
    return ctx.wrap_socket(raw, server_hostname="localhost")


def allocate_through(
    port: int, source: str, ca: CertAuthority
) -> tuple[BlockingTurnClient, tuple[str, int]]:
    """A TURN allocation over TLS through the proxy on ``port`` from ``source``: the client and
    the XOR-MAPPED-ADDRESS the server answered."""
    sock = tls_to(port, source, ca)
    client = BlockingTurnClient(
        (PROXY_HOST, port), "alice", "wonderland", transport="tcp", timeout=5, sock=sock
    )
    txid = os.urandom(12)
    attrs = [(C.REQUESTED_TRANSPORT, A.encode_one_byte(C.TRANSPORT_UDP))]
    reply = client.request(C.ALLOCATE, attrs, txid)
    mapped = A.decode_xor_address(reply.get(C.XOR_MAPPED_ADDRESS) or b"", txid)
    return client, mapped


def assert_client_seen(
    server: RunningServer, admin_key: str, proxy_port: int, source: str, ca: CertAuthority
) -> None:
    client, mapped = allocate_through(proxy_port, source, ca)
    try:
        own = client.sock.getsockname()
        assert mapped == (source, own[1]), (mapped, own)
        status, allocations, _ = http(server, "GET", "/admin/v1/allocations", key=admin_key)
        assert status == 200, allocations
        clients = [a["client"] for a in allocations]
        assert {"transport": "tls", "address": f"{source}:{own[1]}"} in clients, clients
    finally:
        client.close()
    assert f"client=tls:{source}:{own[1]}" in server.log_text()


def test_nginx_ssl_preread_recipe(
    nginx: int, server: RunningServer, admin_key: str, ca: CertAuthority
) -> None:
    assert_client_seen(server, admin_key, nginx, CLIENT_NGINX, ca)
    # A browser's ALPN goes to the website, with the client's address too.
    with tls_to(nginx, CLIENT_NGINX, ca, ["h2", "http/1.1"]) as web:
        web.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := web.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and f"website for {CLIENT_NGINX}".encode() in answer


def test_haproxy_send_proxy_v2_recipe(
    haproxy: int, server: RunningServer, admin_key: str, ca: CertAuthority
) -> None:
    assert_client_seen(server, admin_key, haproxy, CLIENT_HAPROXY, ca)


def closed_without_answer(sock: socket.socket) -> bool:
    try:
        return sock.recv(2048) == b""
    except ConnectionResetError:
        return True


def test_proxy_header_from_an_unlisted_source_and_none_from_a_listed_one_refused(
    server: RunningServer,
) -> None:
    before = {
        reason: metric(http(server, "GET", "/metrics")[1], "iceward_dropped_total", reason=reason)
        for reason in ("proxy_untrusted", "proxy_missing")
    }
    _, request = binding_request()
    v1 = b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 443\r\n"
    v2 = (
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"
        + bytes([198, 51, 100, 7, 192, 0, 2, 1])
        + b"\x9c\x40\x01\xbb"
    )
    for port, header in ((server.tls_port, v1), (server.port, v2)):
        with socket.create_connection(
            (PROXY_HOST, port), timeout=5, source_address=(STRANGER, 0)
        ) as sock:
            sock.sendall(header + request)
            assert closed_without_answer(sock)
    with socket.create_connection((PROXY_HOST, server.port), timeout=5) as sock:
        sock.sendall(request)  # from the proxy's address, without a header
        assert closed_without_answer(sock)
    after = http(server, "GET", "/metrics")[1]
    assert (
        metric(after, "iceward_dropped_total", reason="proxy_untrusted")
        >= before["proxy_untrusted"] + 2
    )
    assert (
        metric(after, "iceward_dropped_total", reason="proxy_missing")
        >= before["proxy_missing"] + 1
    )
    log = server.log_text()
    assert f"PROXY protocol refused from {STRANGER}" in log
    assert "198.51.100.7" not in log  # the address a refused header claimed is nobody
    assert log.count(f"PROXY protocol refused from {STRANGER}:") == 1  # once a minute


def v2_header(client: tuple[str, int]) -> bytes:
    ip = socket.inet_aton(client[0])
    addresses = ip + socket.inet_aton(PROXY_HOST) + client[1].to_bytes(2, "big") + b"\x01\xbb"
    return b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + addresses


@pytest.mark.parametrize(("claimed", "status"), [("198.51.100.7", 403), ("127.0.0.8", 200)])
def test_https_on_the_tls_port_sees_the_client_a_proxy_header_names(
    server: RunningServer, admin_key: str, ca: CertAuthority, claimed: str, status: int
) -> None:
    """The admin API is for loopback (and --admin-allow) only: the address that decides is the
    client's from the header, not the proxy's (loopback here, which would always pass)."""
    ctx = ssl.create_default_context(cafile=str(ca.ca_cert))
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((PROXY_HOST, server.tls_port), timeout=5) as raw:
        raw.sendall(v2_header((claimed, 40000)))
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(
                b"GET /admin/v1/allocations HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                + f"Authorization: Bearer {admin_key}\r\n\r\n".encode()
            )
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
    assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer[:300]


def dropped(server: RunningServer, reason: str) -> float:
    return metric(http(server, "GET", "/metrics")[1], "iceward_dropped_total", reason=reason)


def test_slow_cut_and_lying_headers_are_refused_within_the_connection_timeout(
    server: RunningServer,
) -> None:
    _, request = binding_request()
    cases = {
        "proxy_timeout": b"PROXY TCP4 198.51.100.30 192.0.2.1 4",  # and then nothing
        "proxy_too_long": b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff",  # claims 64 KiB
        "proxy_malformed": b"PROXY TCP4 banana 192.0.2.1 1 2\r\n" + request,
        "proxy_missing": request,
    }
    before = {reason: dropped(server, reason) for reason in [*cases, "proxy_closed"]}
    for reason, data in cases.items():
        start = time.monotonic()
        with socket.create_connection(
            (PROXY_HOST, server.port), timeout=CONNECTION_TIMEOUT + 3
        ) as sock:
            sock.sendall(data)
            assert closed_without_answer(sock), reason
        assert time.monotonic() - start < CONNECTION_TIMEOUT + 1.5, reason
    with socket.create_connection((PROXY_HOST, server.tls_port), timeout=5) as sock:
        sock.sendall(v2_header(("198.51.100.31", 1))[:20])  # cut short: the sender goes away
    deadline = time.monotonic() + 5
    while (
        dropped(server, "proxy_closed") < before["proxy_closed"] + 1 and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    for reason in [*cases, "proxy_closed"]:
        assert dropped(server, reason) >= before[reason] + 1, reason
    assert "198.51.100.3" not in server.log_text()


def test_the_per_source_cap_counts_the_client_a_header_names(server: RunningServer) -> None:
    """--max-connections-per-source 2: the proxy's own address is never the one counted."""

    def through_proxy(client: str) -> tuple[socket.socket, bool]:
        sock = socket.create_connection((PROXY_HOST, server.port), timeout=5)
        _, request = binding_request()
        sock.sendall(v2_header((client, 5000 + len(opened))) + request)
        answered = not closed_without_answer(sock)
        return sock, answered

    opened: list[socket.socket] = []
    before = dropped(server, "connection_cap")
    try:
        for _ in range(2):
            sock, answered = through_proxy("198.51.100.40")
            opened.append(sock)
            assert answered
        sock, answered = through_proxy("198.51.100.40")  # a third from that client: refused
        opened.append(sock)
        assert not answered
        sock, answered = through_proxy("198.51.100.41")  # another client behind the same proxy
        opened.append(sock)
        assert answered
    finally:
        for sock in opened:
            sock.close()
    assert dropped(server, "connection_cap") == before + 1


def test_two_open_connections_claiming_one_client_address_and_port(server: RunningServer) -> None:
    """The second would share the first's five-tuple (its allocation, its nonce): refused."""
    _, request = binding_request()
    before = dropped(server, "proxy_duplicate")
    header = v2_header(("198.51.100.50", 6000))
    with socket.create_connection((PROXY_HOST, server.port), timeout=5) as first:
        first.sendall(header + request)
        assert not closed_without_answer(first)
        with socket.create_connection((PROXY_HOST, server.port), timeout=5) as second:
            second.sendall(header + request)
            assert closed_without_answer(second)
        first.sendall(request)  # the first one is untouched
        assert not closed_without_answer(first)
    assert dropped(server, "proxy_duplicate") == before + 1
