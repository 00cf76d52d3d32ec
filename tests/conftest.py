"""Shared test fixtures: a real ``iceward serve`` process on loopback, and a test CA for TLS."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from iceward.certs import CertFiles, make_ca_and_server_cert
from iceward.stun import constants as C
from iceward.stun import encode_message, parse_message

HOST = "127.0.0.1"
IN_CI = bool(os.environ.get("CI"))
#: Worker processes test servers run with (``make test`` runs the relay suites again with 2).
TEST_WORKERS = int(os.environ.get("ICEWARD_TEST_WORKERS", "1"))


def require_tool(name: str) -> str:
    """Path of an external tool; skip with a reason off CI, fail in CI (which must install it)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port_pair() -> int:
    """A port free for both UDP and TCP on loopback (the server uses the same number for both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((HOST, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((HOST, port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port pair")


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        t.bind((HOST, 0))
        return int(t.getsockname()[1])


class PortTaken(RuntimeError):
    """A server given fixed ports found one taken (by whatever bound it since it was picked)."""


def with_fixed_ports(start: Callable[[int, int], RunningServer], tries: int = 5) -> RunningServer:
    """``start(port, tls_port)`` for a server whose flags must name its ports beforehand (RFC
    5780's alternate port, URLs it hands out): ports picked free here and, since another
    process may take one before the server binds it, picked again when the server says so."""
    for attempt in range(tries):
        port = free_port_pair()
        tls_port = free_tcp_port()
        while tls_port == port:
            tls_port = free_tcp_port()
        try:
            return start(port, tls_port)
        except PortTaken:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def stun_binding(port: int, host: str = HOST, timeout: float = 0.2) -> tuple[str, int] | None:
    """One UDP Binding request; the XOR-MAPPED-ADDRESS or None if nothing answered."""
    from iceward.stun.attributes import decode_xor_address

    txid = os.urandom(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(encode_message(C.BINDING, C.REQUEST, txid, fingerprint=True), (host, port))
        try:
            data, _ = s.recvfrom(2048)
        except OSError:
            return None
    msg = parse_message(data)
    value = msg.get(C.XOR_MAPPED_ADDRESS)
    return decode_xor_address(value, txid) if value else None


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL after 10 s; the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)


@dataclass
class RunningServer:
    proc: subprocess.Popen[bytes]
    port: int
    tls_port: int
    data_dir: Path
    log_path: Path
    secret: str
    users: dict[str, str] = field(default_factory=dict)
    host: str = HOST
    http_port: int = 0

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        return stop_process(self.proc)


def start_server(
    workdir: Path,
    *extra: str,
    secret: str = "test-shared-secret",
    users: dict[str, str] | None = None,
    tls: bool = True,
    cert: tuple[Path, Path] | None = None,
    allow_loopback: bool = True,
    realm: str | None = "iceward.test",
    http: bool = True,
    workers: int | None = None,
    port: int = 0,
    tls_port: int | None = None,
    host: str = HOST,
) -> RunningServer:
    """Start ``iceward serve`` as a subprocess on loopback and wait until every worker is up.

    The server binds ports the kernel picks (``--port 0``, ``--tls-port -1``) and says which in
    its ``--ready-file``: no port is chosen here and then hoped to stay free. ``port`` and
    ``tls_port`` ask for fixed ones (a test whose flags must name them beforehand); ``host`` is
    the address it listens on (127.0.0.2, .3...: one node each)."""
    users = {"alice": "wonderland"} if users is None else users
    if tls_port is None:
        tls_port = -1 if tls else 0
    data_dir = workdir / "data"
    log_path = workdir / "server.log"
    ready_file = workdir / "ready.json"
    cmd = [
        sys.executable,
        "-m",
        "iceward",
        "serve",
        "--listen",
        host,
        "--port",
        str(port),
        "--tls-port",
        str(tls_port),
        "--data-dir",
        str(data_dir),
        "--log-level",
        "debug",
        "--ready-file",
        str(ready_file),
    ]
    if realm:
        cmd += ["--realm", realm]
    cmd += ["--http", "127.0.0.1:0" if http else "off"]
    cmd += ["--workers", str(workers or TEST_WORKERS)]
    if secret:
        cmd += ["--secret", secret]
    for name, password in users.items():
        cmd += ["--user", f"{name}:{password}"]
    if allow_loopback:
        cmd += ["--allow-peer", "127.0.0.0/8"]
    if cert is not None:
        cmd += ["--cert", str(cert[0]), "--key", str(cert[1])]
    cmd += list(extra)
    log_file = log_path.open("wb")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    server = RunningServer(proc, port, 0, data_dir, log_path, secret, dict(users), host)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = server.log_text()
            taken = port != 0 and "the port is in use" in log
            raise (PortTaken if taken else RuntimeError)(f"iceward serve exited early:\n{log}")
        if ready_file.exists():  # written whole once every listener and worker is up
            bound = json.loads(ready_file.read_text())
            server.port = bound["port"]
            server.tls_port = bound["tls_port"] or 0
            if bound["http"]:
                server.http_port = int(bound["http"].rpartition(":")[2])
            if stun_binding(server.port, host) is not None and (not http or _ready(server)):
                return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"iceward serve did not start:\n{server.log_text()}")


def _ready(server: RunningServer) -> bool:
    try:
        with urllib.request.urlopen(server.http_url + "/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Factory fixture: ``make_server(*extra_flags, **options)``; every server stopped after."""
    started: list[RunningServer] = []

    def factory(*extra: str, **options: object) -> RunningServer:
        workdir = tmp_path / f"server{len(started)}"
        workdir.mkdir(exist_ok=True)  # again after PortTaken
        server = start_server(workdir, *extra, **options)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


CertAuthority = CertFiles


def make_test_ca(directory: Path, names: tuple[str, ...] = ("localhost", HOST)) -> CertAuthority:
    """A CA and a server certificate it signs for ``names`` (DNS names or IPs)."""
    return make_ca_and_server_cert(directory, names)


@pytest.fixture
def test_ca(tmp_path: Path) -> CertAuthority:
    return make_test_ca(tmp_path / "ca")
