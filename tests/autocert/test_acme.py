"""``serve --acme`` against Debian's pebble: a certificate obtained over TLS-ALPN-01 on the TLS
port, renewed (pebble issues short-lived certificates), swapped in while a call relayed over
an older TLS connection keeps flowing; HTTP-01 on the HTTP API; failures as one log line."""

from __future__ import annotations

import concurrent.futures
import functools
import socket
import ssl
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from iceward.autocert.client import AcmeFailure, OrderSpec, obtain
from iceward.autocert.files import AcmeFiles

from ..conftest import HOST, PortTaken, RunningServer, free_tcp_port, start_server
from ..net.turnclient import BlockingTurnClient
from .pebble import Pebble, running_pebble

DOMAIN = "turn.iceward.test"
#: Seconds pebble's certificates are valid: renewed at half-life, so every 8 s or so.
VALIDITY = 16


def served_certificate(port: int, root: Path, name: str = DOMAIN) -> x509.Certificate:
    """The certificate a TLS client verifying against ``root`` for ``name`` is shown."""
    ctx = ssl.create_default_context(cafile=str(root))
    with (
        socket.create_connection((HOST, port), timeout=3) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def wait_for(check: Callable[[], object], seconds: float, what: str) -> object:
    deadline = time.monotonic() + seconds
    while True:
        try:
            result = check()
            if result:
                return result
        except (OSError, ssl.SSLError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def metric(server: RunningServer, line_start: str) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in /metrics")


def test_obtained_over_tls_alpn_renewed_and_swapped_under_a_live_relay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers: the supervisor orders, whichever worker the validator reaches answers it,
    both load the renewed certificate; the relay on the first TLS connection never notices."""
    for _ in range(3):  # pebble must be told the TLS port before the server binds it
        tls_port = free_tcp_port()
        with running_pebble(tmp_path / "pebble", tls_port=tls_port, validity=VALIDITY) as pebble:
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pebble.api_ca))
            (tmp_path / "server").mkdir(exist_ok=True)
            try:
                server = start_server(
                    tmp_path / "server",
                    "--acme", DOMAIN,
                    "--acme-directory", pebble.directory,
                    "--acme-email", "ops@iceward.test",
                    tls_port=tls_port,
                    workers=2,
                )  # fmt: skip
            except PortTaken:
                continue
            try:
                check_renewal_under_a_live_relay(server, pebble)
            except BaseException:
                print(server.log_text()[-6000:], pebble.log_text()[-3000:], sep="\n---\n")
                raise
            finally:
                server.stop()
            return
    raise AssertionError("no free TLS port for pebble and the server")


def check_renewal_under_a_live_relay(server: RunningServer, pebble: Pebble) -> None:
    root = pebble.issuing_root
    first = wait_for(lambda: served_certificate(server.tls_port, root), 20, "the first certificate")
    assert isinstance(first, x509.Certificate)

    # A call relayed over TLS: allocation, channel, data both ways.
    client = BlockingTurnClient((HOST, server.tls_port), "alice", "wonderland", transport="tcp")
    ctx = ssl.create_default_context(cafile=str(root))
    client.sock = ctx.wrap_socket(client.sock, server_hostname=DOMAIN)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((HOST, 0))
    peer.settimeout(3)
    try:
        relayed = client.allocate()
        client.create_permission(peer.getsockname())
        client.channel_bind(0x4000, peer.getsockname())

        def round_trip(text: bytes) -> None:
            client.send_channel_data(0x4000, text)
            data, source = peer.recvfrom(100)
            assert data == text and source[:2] == relayed
            peer.sendto(text[::-1], relayed)
            assert client.receive_data() == (0x4000, text[::-1])

        round_trip(b"before renewal")
        assert client.sock.getpeercert(binary_form=True) == first.public_bytes(Encoding.DER)

        def renewed() -> x509.Certificate | None:
            cert = served_certificate(server.tls_port, root)
            return cert if cert.serial_number != first.serial_number else None

        second = wait_for(renewed, VALIDITY + 15, "the renewed certificate")
        assert isinstance(second, x509.Certificate)
        for _ in range(6):  # whichever worker accepts, the new one
            assert served_certificate(server.tls_port, root).serial_number != first.serial_number
        round_trip(b"after renewal, same TLS connection")
    finally:
        client.close()
        peer.close()

    log = server.log_text()
    assert "answering the TLS-ALPN-01 validation for turn.iceward.test" in log
    assert "Traceback" not in log
    assert metric(server, 'iceward_acme_renewals_total{outcome="success"}') >= 2
    not_after = metric(server, f'iceward_tls_certificate_not_after_seconds{{domain="{DOMAIN}"}}')
    assert not_after >= second.not_valid_after_utc.timestamp() - 1
    acme_dir = server.data_dir / "acme"
    for path in acme_dir.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    assert {p.name for p in acme_dir.iterdir()} >= {"account-key.pem", "cert.pem", "key.pem"}
    assert not list((acme_dir / "tls-alpn-01").iterdir())  # challenges removed once validated


def test_http_01_on_its_own_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pebble fetches /.well-known/acme-challenge/TOKEN from ``--acme-http``, a port serving
    nothing else (the supervisor's; its workers, without HTTP, load the certificate); the HTTP
    API answers the same route."""
    for attempt in range(3):  # pebble must be told the port before the server binds it
        http_port = free_tcp_port()
        workdir = tmp_path / f"try{attempt}"
        with running_pebble(workdir / "pebble", http_port=http_port) as pebble:
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pebble.api_ca))
            (workdir / "server").mkdir()
            try:
                server = start_server(
                    workdir / "server",
                    "--acme", DOMAIN,
                    "--acme-directory", pebble.directory,
                    "--acme-challenge", "http-01",
                    "--acme-http", f"{HOST}:{http_port}",
                    workers=2,
                )  # fmt: skip
            except RuntimeError as exc:
                if "cannot listen" in str(exc):
                    continue
                raise
            try:
                fetch = functools.partial(served_certificate, server.tls_port, pebble.issuing_root)
                cert = wait_for(fetch, 20, "the certificate")
                assert isinstance(cert, x509.Certificate)
                log = server.log_text()
                assert "TLS-ALPN-01" not in log and "Traceback" not in log
                assert not list((server.data_dir / "acme" / "http-01").iterdir())
                for url in (
                    f"{server.http_url}/.well-known/acme-challenge/no-such-token",
                    f"http://{HOST}:{http_port}/.well-known/acme-challenge/no-such-token",
                    f"http://{HOST}:{http_port}/metrics",  # the challenge port serves no API
                    f"http://{HOST}:{http_port}/.well-known/acme-challenge/..%2Facme%2Fkey.pem",
                ):
                    with pytest.raises(urllib.error.HTTPError) as missing:
                        urllib.request.urlopen(url, timeout=5)
                    assert missing.value.code == 404, url
            finally:
                server.stop()
            return
    raise AssertionError("no free HTTP port for pebble and the server")


def test_failures_are_one_line_naming_url_or_domain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreachable directory and a failed challenge, in a running server: one log line
    each, counted, and the placeholder still served. A URL that is no ACME directory and a CA
    not trusted, by the same client called directly: one line each too."""
    nobody = free_tcp_port()  # pebble validates there: nothing answers
    with running_pebble(tmp_path / "pebble", tls_port=nobody) as pebble:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pebble.api_ca))
        unreachable = "https://127.0.0.1:1/dir"
        cases = {
            unreachable: f"ACME directory {unreachable} unreachable: Connection refused",
            pebble.directory: f"tls-alpn-01 challenge failed at {pebble.directory}: {DOMAIN}: ",
        }

        def start(index: int, directory: str) -> RunningServer:
            workdir = tmp_path / f"server{index}"
            workdir.mkdir()
            return start_server(workdir, "--acme", DOMAIN, "--acme-directory", directory)

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            servers = list(pool.map(start, (0, 1), cases))
        try:
            for server, expected in zip(servers, cases.values(), strict=True):

                def failed(server: RunningServer = server) -> bool:
                    return "not obtained" in server.log_text()

                wait_for(failed, 20, expected)
                lines = [line for line in server.log_text().splitlines() if "not obtained" in line]
                assert len(lines) == 1, lines
                assert f"certificate for {DOMAIN} not obtained: {expected}" in lines[0], lines[0]
                assert lines[0].endswith("retrying in 60 s")
                assert "Traceback" not in server.log_text()
                assert metric(server, 'iceward_acme_renewals_total{outcome="failure"}') == 1
                assert metric(server, 'iceward_acme_renewals_total{outcome="success"}') == 0
                placeholder = served_certificate_unverified(server.tls_port)
                assert placeholder.issuer == placeholder.subject  # self-signed, still served
        finally:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                list(pool.map(RunningServer.stop, servers))

        files = AcmeFiles.of(tmp_path / "direct")
        files.prepare([DOMAIN])
        not_a_directory = pebble.directory.replace("/dir", "/nonce-plz")
        with pytest.raises(AcmeFailure, match=f"^{not_a_directory} is not an ACME directory"):
            obtain(OrderSpec(not_a_directory, None, [DOMAIN], "tls-alpn-01"), files)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pebble.issuing_root))  # the wrong CA
        with pytest.raises(AcmeFailure) as untrusted:
            obtain(OrderSpec(pebble.directory, None, [DOMAIN], "tls-alpn-01"), files)
        assert str(untrusted.value).startswith(
            f"ACME directory {pebble.directory}: TLS certificate not trusted ("
        )
        assert "\n" not in str(untrusted.value)


def served_certificate_unverified(port: int) -> x509.Certificate:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((HOST, port), timeout=3) as raw,
        ctx.wrap_socket(raw, server_hostname=DOMAIN) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)
