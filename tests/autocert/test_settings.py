"""``--acme`` settings that cannot work: one line naming the setting, exit 2 (real CLI)."""

from __future__ import annotations

from pathlib import Path

from ..test_cli_errors import serve


def test_bad_acme_values_are_named(tmp_path: Path) -> None:
    line = serve(
        tmp_path,
        "--acme", "1.2.3.4",
        "--acme-directory", "http://acme.example/dir",
        "--acme-email", "nobody",
    )  # fmt: skip
    assert "acme: ACME domain '1.2.3.4' must be a DNS name with a dot" in line, line
    assert "acme-directory: ACME directory 'http://acme.example/dir' must be an https" in line
    assert "acme-email: ACME email 'nobody' is not an email address" in line


def test_acme_with_what_excludes_it(tmp_path: Path) -> None:
    line = serve(tmp_path, "--acme", "turn.example.com", "--acme-challenge", "http-01")
    assert "--acme needs TLS: --tls-port 0 turns it off" in line, line


def test_http_01_needs_the_http_api(tmp_path: Path) -> None:
    line = serve(
        tmp_path, "--acme", "turn.example.com", "--acme-challenge", "http-01", "--tls-port", "-1"
    )
    assert "--acme-challenge http-01 needs --acme-http or the HTTP API (--http)" in line, line
