"""Before a body is read: its size is checked (Content-Length, then while it streams) and the
key of a route that needs one, against a real server over raw sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from iceward.api.guard import JSON_BODY_LIMIT, REPORT_BODY_LIMIT
from tests.api.test_api import cli, http, metric
from tests.conftest import HOST, RunningServer

MakeServer = Callable[..., RunningServer]
Answer = tuple[int, dict[str, str], bytes, bool]


def head(
    path: str, *, length: int | None = None, key: str | None = None, method: str = "POST"
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Content-Type: application/json"]
    if length is None:
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {length}")
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> Answer:
    """Status, headers, body of one response, and whether the server closed the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    header_text, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = header_text.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    sock.settimeout(1.0)
    try:
        closed = sock.recv(1) == b""
    except ConnectionResetError:
        closed = True
    except TimeoutError:
        closed = False
    return int(status_line.split()[1]), headers, body, closed


def ask(server: RunningServer, request: bytes, timeout: float = 3.0) -> Answer:
    with socket.create_connection((HOST, server.http_port), timeout=timeout) as sock:
        sock.sendall(request)
        return read_response(sock)


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def stream_chunked(
    server: RunningServer, path: str, total: int, key: str | None = None
) -> tuple[int, bytes, int]:
    """Send ``total`` bytes of chunked body while reading the answer: (status, body, sent)."""
    sock = socket.create_connection((HOST, server.http_port), timeout=10)
    answer: list[Answer] = []
    reader = threading.Thread(target=lambda: answer.append(read_response(sock)), daemon=True)
    sock.sendall(head(path, key=key))
    reader.start()
    chunk = b"%x\r\n%s\r\n" % (65536, b"[" * 65536)
    sent = 0
    try:
        while sent < total and not answer:
            sock.sendall(chunk)
            sent += 65536
        sock.sendall(b"0\r\n\r\n")
    except OSError:  # the server answered and closed: the rest is not wanted
        pass
    reader.join(10)
    sock.close()
    assert answer, "no answer"
    status, _, body, _ = answer[0]
    return status, body, sent


def test_a_huge_content_length_is_refused_before_the_body(make_server: MakeServer) -> None:
    server = make_server(tls=False)
    key = cli(server, "keys", "add", "backend")
    admin = cli(server, "keys", "add", "ops", "--admin")
    # 200 MB announced, nothing sent: refused at once, by length, key or not.
    for request in (head("/api/v1/ice-servers", length=200_000_000),
                    head("/api/v1/ice-servers", length=200_000_000, key=key),
                    head("/admin/v1/users", length=200_000_000, key=admin),
                    head("/api/v1/reports", length=REPORT_BODY_LIMIT + 1)):  # fmt: skip
        started = time.monotonic()
        status, headers, body, closed = ask(server, request)
        assert status == 413, body
        doc = json.loads(body)
        assert doc["limit"] in (JSON_BODY_LIMIT, REPORT_BODY_LIMIT)
        assert str(doc["limit"]) in doc["detail"]
        assert closed and headers["connection"] == "close"  # the body is never read
        assert time.monotonic() - started < 2
    # A body within the limit but no key: 401 before the body, which is never sent.
    for path in ("/api/v1/ice-servers", "/admin/v1/users"):
        status, headers, body, closed = ask(server, head(path, length=1000, key="iwk_bogus"))
        assert status == 401 and "key" in json.loads(body)["detail"]
        assert closed
    status, _, body, _ = ask(server, head("/api/v1/ice-servers", length=1000))
    assert status == 401, body
    scrape = http(server, "GET", "/metrics")[1]
    assert metric(scrape, "iceward_http_refused_total", reason="body_too_large") == 4
    assert metric(scrape, "iceward_http_refused_total", reason="unauthorized") == 3


def test_chunked_bodies_are_cut_off_at_the_limit(make_server: MakeServer) -> None:
    server = make_server(tls=False)
    key = cli(server, "keys", "add", "backend")
    before = peak_rss_kib(server.proc.pid)
    # 50 MB chunked: with a key, cut at the JSON limit; without one, refused before any of it.
    status, body, sent = stream_chunked(server, "/api/v1/ice-servers", 50 * 2**20, key)
    assert status == 413 and json.loads(body)["limit"] == JSON_BODY_LIMIT, body
    assert sent < 50 * 2**20
    status, body, _ = stream_chunked(server, "/api/v1/ice-servers", 50 * 2**20)
    assert status == 401, body
    status, body, _ = stream_chunked(server, "/api/v1/reports", 50 * 2**20)
    assert status == 413 and json.loads(body)["limit"] == REPORT_BODY_LIMIT, body
    grown = peak_rss_kib(server.proc.pid) - before
    assert grown < 8 * 1024, f"the server's peak RSS grew by {grown} KiB"
    scrape = http(server, "GET", "/metrics")[1]
    assert metric(scrape, "iceward_http_refused_total", reason="body_too_large") == 2
    # Requests of a normal size still work, chunked or not.
    status, doc, _ = http(server, "POST", "/api/v1/ice-servers", {"user": "u"}, key)
    assert status == 200, doc
    body = json.dumps({"user": "chunked"}).encode()
    request = head("/api/v1/ice-servers", key=key) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    status, _, answer, _ = ask(server, request)
    assert status == 200 and b"iceServers" in answer
