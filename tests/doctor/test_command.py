"""Input: files, stdin, inline JSON, the app's credentials URL; usage errors exit 2 in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from iceward.doctor.fetch import masked_header, masked_url
from tests.conftest import CertAuthority, RunningServer
from tests.doctor.conftest import Server, doctor

TOKEN = "Bearer doctor-test"
MakeServer = Callable[..., RunningServer]


class Backend:
    """A stand-in for the app's backend: hands out iceServers to authorised callers."""

    def __init__(self) -> None:
        self.body = b"{}"
        self.content_type = "application/json"
        self.date: str | None = None
        self.seen_headers: list[dict[str, str]] = []
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                backend.seen_headers.append(dict(self.headers))
                if self.headers.get("Authorization") != TOKEN:
                    self.send_response(401)
                    self.end_headers()
                    self.wfile.write(b"login required")
                    return
                self.send_response(200)
                self.send_header("Content-Type", backend.content_type)
                self.end_headers()
                self.wfile.write(backend.body)

            def date_time_string(self, timestamp: float | None = None) -> str:
                return backend.date or super().date_time_string(timestamp)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/turn"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend()
    yield b
    b.close()


def test_credentials_url_shows_the_served_config(backend: Backend, iceward_server: Server) -> None:
    server = iceward_server
    backend.body = server.config("udp", "tcp").encode()
    backend.date = "Mon, 01 Jan 2001 00:00:00 GMT"  # a backend with a badly wrong clock
    run = doctor(
        "--credentials-url",
        backend.url,
        "--header",
        f"Authorization: {TOKEN}",
        "--ignore",
        "no-tls-443",
    )
    assert run.code == 0, run.output
    assert backend.seen_headers[0]["Authorization"] == TOKEN
    source = run.report["source"]
    assert (source["kind"], source["location"], source["http_status"]) == ("url", backend.url, 200)
    assert source["clock_skew_s"] < -365 * 86400
    served = run.report["config"]["iceServers"][0]
    assert served["urls"] == server.urls("udp", "tcp")
    assert served["credential"].endswith("(28 chars)")  # masked in the report
    assert run.report["urls"][0]["rest_expires_in_s"] > 86000
    password = json.loads(backend.body)["iceServers"][0]["credential"]
    assert password not in run.output
    terminal = doctor(
        "--credentials-url",
        backend.url,
        "--header",
        f"Authorization: {TOKEN}",
        "--ignore",
        "no-tls-443",
        json_report=False,
    )
    assert f"Config served by GET {backend.url} (HTTP 200, application/json; its clock" in (
        terminal.output
    )
    assert '"credential": "' + password[:4] + "…(28 chars)" in terminal.output
    assert password not in terminal.output


def test_credentials_url_serving_garbage(backend: Backend) -> None:
    backend.body = b"<html><body>Welcome</body></html>"
    backend.content_type = "text/html"
    run = doctor("--credentials-url", backend.url, "--header", f"Authorization: {TOKEN}")
    assert (run.code, run.codes) == (1, ["bad-ice-config"])
    evidence = run.finding("bad-ice-config")["evidence"]
    assert "not JSON" in evidence[0] and "<html>" in evidence[0]
    assert evidence[1] == f"as served by GET {backend.url} (HTTP 200, Content-Type text/html)"


def test_credentials_url_refusing_us(backend: Backend) -> None:
    run = doctor("--credentials-url", backend.url)
    assert run.code == 2
    assert run.output.strip() == (
        f"iceward doctor: error: GET {backend.url}: HTTP 401 Unauthorized (does it need "
        "--header 'Authorization: ...'?): login required"
    )


def test_iceward_credentials_api_posted_with_its_key_masked(make_server: MakeServer) -> None:
    """README's own endpoint: POST /api/v1/ice-servers with a Bearer key; the key never shows,
    and a TTL of exactly --call-length (3600) is fine."""
    server = make_server(tls=False)
    data_dir = str(server.data_dir)
    key = subprocess.run(
        [sys.executable, "-m", "iceward", "keys", "add", "backend", "--data-dir", data_dir],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    url = f"{server.http_url}/api/v1/ice-servers?api_key={key}&region=eu"
    bearer = f"Authorization: Bearer {key}"
    got = doctor("--credentials-url", url, "-H", bearer, json_report=False)
    assert got.code == 2 and key not in got.output, got.output
    assert "HTTP 405 Method Not Allowed (the endpoint wants POST: use --method POST" in got.output
    body = '{"user": "user-42", "ttl": 3600}'
    args = ["--credentials-url", url, "-H", bearer, "--data", body, "--ignore", "no-tls-443"]
    run = doctor(*args)
    assert run.code == 0 and key not in run.output, run.output
    assert "turn-credential-expired" not in run.codes
    assert run.report["source"]["location"] == (
        f"{server.http_url}/api/v1/ice-servers?api_key=…({len(key)} chars)&region=eu"
    )
    assert run.report["source"]["method"] == "POST"
    assert f"Authorization: Bearer …({len(key)} chars)" in run.report["source"]["headers"]
    terminal = doctor(*args, json_report=False)
    assert key not in terminal.output
    assert f"Config served by POST {server.http_url}/api/v1/ice-servers?api_key=…" in (
        terminal.output
    )


def test_urls_and_headers_are_masked() -> None:
    assert masked_url("https://u:hunter22@h.example/p?token=abcdef&room=lobby-7&x&n=1#f") == (
        "https://u:…(8 chars)@h.example/p?token=…(6 chars)&room=lobb…(7 chars)&x&n=1#f"
    )
    assert masked_header("X-Api-Key", "abcdef") == "X-Api-Key: …(6 chars)"
    assert masked_header("Accept-Language", "en") == "Accept-Language: en"
    bad = doctor("--credentials-url", "http://127.0.0.1:1/", "-H", "Authorization Bearer s3cr3t")
    assert bad.code == 2 and "s3cr3t" not in bad.output, bad.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give exactly one of --ice-servers"),
        (["--ice-servers", "[]", "--credentials-url", "http://x"], "give exactly one"),
        (["--ice-servers", "/nonexistent/ice.json"], "no such file: /nonexistent/ice.json"),
        (["--ice-servers", "[]", "--header", "A: b"], "apply to --credentials-url only"),
        (["--ice-servers", "[]", "--data", "{}"], "apply to --credentials-url only"),
        (["--credentials-url", "http://127.0.0.1:1/", "--data", "{nope"], "--data: not JSON"),
        (
            ["--credentials-url", "http://127.0.0.1:1/", "--method", "GET", "--data", "{}"],
            "--data is sent with --method POST only",
        ),
        (["--credentials-url", "http://127.0.0.1:1/", "--method", "PUT"], "GET or POST"),
        (["--credentials-url", "ftp://x/y"], "must be http:// or https://"),
        (
            ["--credentials-url", "http://127.0.0.1:1/", "--header", "nocolon"],
            "expected 'Name: value'",
        ),
        (["--credentials-url", "http://127.0.0.1:1/"], "Connection refused"),
        (["--ice-servers", "[]", "--ignore", "no-such-code"], "unknown finding code"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    run = doctor(*args, json_report=False)
    assert run.code == 2
    lines = run.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.output
    assert "Traceback" not in run.output


def test_a_ca_file_that_is_no_pem_certificate_is_named(tmp_path: Path, ca: CertAuthority) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = tmp_path / "ca.der"
    der.write_bytes(
        x509.load_pem_x509_certificate(ca.ca_cert.read_bytes()).public_bytes(Encoding.DER)
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    cases = [
        (der, "a DER (binary) certificate; give it as PEM: openssl x509 -inform DER"),
        (ca.key, "a private key, not a certificate"),
        (garbage, "a '-----BEGIN CERTIFICATE-----' block that does not decode"),
        (tmp_path / "ice", "not a PEM certificate"),
    ]
    (tmp_path / "ice").write_text("[]")
    for path, problem in cases:
        run = doctor("--ice-servers", "[]", "--ca-file", str(path), json_report=False)
        lines = run.output.strip().splitlines()
        assert run.code == 2 and len(lines) == 1, run.output
        assert lines[0].startswith(f"iceward doctor: error: --ca-file {path}: {problem}")


def test_file_and_stdin(tmp_path: Path) -> None:
    doc = json.dumps({"iceServers": [{"urls": "stun:127.0.0.1:9"}], "iceTransportPolicy": "all"})
    path = tmp_path / "ice.json"
    path.write_text(doc)
    from_file = doctor("--ice-servers", str(path))
    assert from_file.report["source"] == {
        "kind": "file",
        "location": str(path),
        "http_status": None,
        "content_type": None,
        "clock_skew_s": None,
        "method": None,
        "headers": [],
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "iceward",
            "doctor",
            "--ice-servers",
            "-",
            "--json",
            "--timeout",
            "1",
        ],
        input=doc,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["source"]["kind"] == "stdin"
    assert [f["code"] for f in report["findings"]] == ["no-turn", "stun-unreachable"]
    assert proc.stderr == ""  # no progress noise when stderr is not a terminal


def test_findings_carry_the_contract_fields(server: Server) -> None:
    run = doctor("--ice-servers", server.config("stun"))
    for finding in run.report["findings"]:
        assert {"code", "severity", "title", "evidence", "fix"} <= set(finding)
        assert finding["severity"] in ("error", "warning", "info")
        assert finding["evidence"] and finding["fix"]
