"""Real TURN servers for the doctor: iceward and coturn on loopback, or inside a network namespace.

Module-scoped servers are shared by the scenarios that only differ in the config the doctor gets;
scenarios that need a differently configured server (no loopback peers, a firewall) start their own.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from iceward.cli import app
from iceward.stun import constants as C
from iceward.stun import encode_message
from iceward.turn.credentials import mint_rest_credential
from tests.conftest import (
    HOST,
    CertAuthority,
    free_port_pair,
    free_tcp_port,
    make_test_ca,
    require_tool,
    start_server,
    stop_process,
    stun_binding,
)

SECRET = "doctor-shared-secret"
REALM = "doctor.test"
USER, PASSWORD = "alice", "wonderland"
#: Fast enough for a suite, long enough for a loaded CI machine on loopback.
TIMEOUT = "2"
#: Relay ports inside a namespace: above Linux's ephemeral range (32768-60999), so a firewall
#: rule on them never catches the doctor's own client sockets.
NS_RELAY = (62000, 62200)


# -- running the doctor ---------------------------------------------------------------------------


@dataclass
class DoctorRun:
    code: int
    output: str
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def codes(self) -> list[str]:
        return [f["code"] for f in self.report.get("findings", [])]

    def finding(self, code: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [f for f in self.report["findings"] if f["code"] == code]
        assert found, f"no {code} finding in {self.codes}:\n{self.output[-3000:]}"
        return found[0]

    def errors(self) -> list[str]:
        return [f["code"] for f in self.report["findings"] if f["severity"] == "error"]


def doctor(*args: str, json_report: bool = True) -> DoctorRun:
    """``iceward doctor ARGS`` in-process (the real Typer app), with a short timeout."""
    argv = ["doctor", "--timeout", TIMEOUT, *args] + (["--json"] if json_report else [])
    result = CliRunner().invoke(app, argv, catch_exceptions=False)
    output = result.stdout
    report = json.loads(output) if json_report and result.exit_code in (0, 1) else {}
    return DoctorRun(result.exit_code, output + result.stderr, report)


def doctor_in(prefix: list[str], *args: str) -> DoctorRun:
    """``iceward doctor ARGS --json`` as a process (inside a namespace when prefix says so)."""
    argv = [
        *prefix,
        sys.executable,
        "-m",
        "iceward",
        "doctor",
        "--timeout",
        TIMEOUT,
        *args,
        "--json",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    report = json.loads(proc.stdout) if proc.returncode in (0, 1) else {}
    return DoctorRun(proc.returncode, proc.stdout + proc.stderr, report)


def ice(servers: list[dict[str, Any]]) -> str:
    return json.dumps({"iceServers": servers})


# -- servers ------------------------------------------------------------------------------------


@dataclass
class Server:
    """A TURN server under test and how to build configs for it."""

    kind: str
    port: int
    tls_port: int
    proc: subprocess.Popen[bytes]
    log: Path
    secret: str | None = SECRET
    host: str = HOST

    def rest(self, ttl: int = 86400, now: float | None = None) -> tuple[str, str]:
        assert self.secret
        cred = mint_rest_credential(self.secret, "doctor", ttl, now or time.time())
        return cred.username, cred.password

    def urls(self, *transports: str) -> list[str]:
        out = []
        for t in transports:
            if t == "stun":
                out.append(f"stun:{self.host}:{self.port}")
            elif t == "tls":
                out.append(f"turns:{self.host}:{self.tls_port}?transport=tcp")
            else:
                out.append(f"turn:{self.host}:{self.port}?transport={t}")
        return out

    def config(
        self, *transports: str, username: str | None = None, credential: str | None = None
    ) -> str:
        """An iceServers JSON: STUN URLs alone, TURN URLs with a (default REST) credential."""
        if username is None:
            username, credential = self.rest()
        stun = [u for u in self.urls(*transports) if u.startswith("stun")]
        turn = [u for u in self.urls(*transports) if not u.startswith("stun")]
        servers: list[dict[str, Any]] = []
        if stun:
            servers.append({"urls": stun})
        if turn:
            servers.append({"urls": turn, "username": username, "credential": credential})
        return ice(servers)

    def stop(self) -> None:
        stop_process(self.proc)


def coturn_argv(
    workdir: Path,
    port: int,
    *,
    tls_port: int = 0,
    cert: CertAuthority | None = None,
    secret: str | None = SECRET,
    users: dict[str, str] | None = None,
    allow_loopback: bool = True,
    relay: tuple[int, int] | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    binary = require_tool("turnserver")
    low, high = relay or _random_relay_range()
    argv = [
        binary, "-n", f"--listening-ip={HOST}", f"--relay-ip={HOST}",
        f"--listening-port={port}", f"--min-port={low}", f"--max-port={high}",
        f"--realm={REALM}", "--lt-cred-mech", "--no-dtls", "--no-cli",
        f"--pidfile={workdir / 'turnserver.pid'}", f"--userdb={workdir / 'turndb'}",
        f"--log-file={workdir / 'coturn.log'}", "--simple-log", "--no-stdout-log",
    ]  # fmt: skip
    if secret:
        argv += ["--use-auth-secret", f"--static-auth-secret={secret}"]
    for name, password in (users or {}).items():
        argv.append(f"--user={name}:{password}")
    if cert is not None and tls_port:
        argv += [f"--tls-listening-port={tls_port}", f"--cert={cert.cert}", f"--pkey={cert.key}"]
    else:
        argv.append("--no-tls")
    if allow_loopback:
        argv.append("--allow-loopback-peers")
    return argv + list(extra)


def _random_relay_range() -> tuple[int, int]:
    low = random.randrange(49152, 65000, 100)
    return low, low + 99


def start_coturn(workdir: Path, **options: Any) -> Server:
    """coturn on loopback with free ports; waits until it answers STUN."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port_pair()
    tls_port = free_tcp_port() if options.get("cert") is not None else 0
    argv = coturn_argv(workdir, port, tls_port=tls_port, **options)
    out = (workdir / "coturn.out").open("wb")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    server = Server(
        "coturn", port, tls_port, proc, workdir / "coturn.log", options.get("secret", SECRET)
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"turnserver exited: {(workdir / 'coturn.out').read_text()}")
        if stun_binding(port) is not None:
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError("turnserver did not answer STUN")


def start_iceward(workdir: Path, cert: CertAuthority | None = None, **options: Any) -> Server:
    running = start_server(
        workdir,
        secret=SECRET,
        users={USER: PASSWORD},
        realm=REALM,
        cert=(cert.cert, cert.key) if cert else None,
        **options,
    )
    return Server("iceward", running.port, running.tls_port, running.proc, running.log_path)


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def iceward_server(ca: CertAuthority, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A healthy iceward (REST secret and a static user, TLS from the test CA, loopback peers
    allowed), shared by every scenario that only varies the config."""
    running = start_iceward(tmp_path_factory.mktemp("iceward"), ca)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def coturn_server(ca: CertAuthority, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The same for coturn (REST secret only: coturn does not mix it with static users)."""
    running = start_coturn(tmp_path_factory.mktemp("coturn"), cert=ca)
    yield running
    running.stop()


@pytest.fixture(params=["iceward", "coturn"])
def server(request: pytest.FixtureRequest) -> Server:
    """Each scenario against iceward and against coturn."""
    running: Server = request.getfixturevalue(f"{request.param}_server")
    return running


@pytest.fixture(scope="session")
def static_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """Servers with a static long-term user (coturn cannot mix it with a REST secret)."""
    started: dict[str, Server] = {}
    started["iceward"] = start_iceward(tmp_path_factory.mktemp("iceward-static"), tls=False)
    if shutil.which("turnserver"):
        started["coturn"] = start_coturn(
            tmp_path_factory.mktemp("coturn-static"), secret=None, users={USER: PASSWORD}
        )
    yield started
    for running in started.values():
        running.stop()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory for one-off servers: ``servers("coturn", allow_loopback=False, ...)``."""
    started: list[Server] = []

    def factory(kind: str, **options: Any) -> Server:
        workdir = tmp_path / f"{kind}{len(started)}"
        workdir.mkdir()
        running = (
            start_iceward(workdir, **options)
            if kind == "iceward"
            else start_coturn(workdir, **options)
        )
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


# -- network namespaces -------------------------------------------------------------------------

_BINDING = encode_message(C.BINDING, C.REQUEST, b"doctor-ready", fingerprint=True).hex()
_WAIT_STUN = """
import socket, sys, time
port, request, deadline = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), time.time() + 15
while time.time() < deadline:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(request, ("127.0.0.1", port))
            s.recvfrom(2048)
            sys.exit(0)
        except OSError:
            time.sleep(0.1)
sys.exit(1)
"""


@dataclass
class Netns:
    """A network namespace with only ``lo`` up: nothing in it is routed to the host."""

    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(self, *argv: str) -> None:
        subprocess.run([*self.prefix, *argv], check=True, capture_output=True, timeout=20)

    def start(self, argv: list[str], log: Path, port: int) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen([*self.prefix, *argv], stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        ready = subprocess.run(
            [*self.prefix, sys.executable, "-c", _WAIT_STUN, str(port), _BINDING], timeout=30
        )
        if ready.returncode != 0 or proc.poll() is not None:
            raise RuntimeError(
                f"{argv[0]} did not answer STUN in {self.name}:\n"
                f"{log.read_text(errors='replace')[-3000:]}"
            )
        return proc

    def start_iceward(self, workdir: Path, ca: CertAuthority, *extra: str) -> Server:
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "iceward", "serve", "--listen", HOST, "--port", "3478",
            "--tls-port", "443", "--cert", str(ca.cert), "--key", str(ca.key),
            "--relay-ports", f"{NS_RELAY[0]}-{NS_RELAY[1]}", "--secret", SECRET,
            "--realm", REALM, "--allow-peer", "127.0.0.0/8", "--data-dir", str(workdir / "data"),
            *extra,
        ]  # fmt: skip
        proc = self.start(argv, workdir / "server.log", 3478)
        return Server("iceward", 3478, 443, proc, workdir / "server.log")

    def start_coturn(self, workdir: Path, ca: CertAuthority) -> Server:
        workdir.mkdir(parents=True, exist_ok=True)
        argv = coturn_argv(workdir, 3478, tls_port=443, cert=ca, relay=NS_RELAY)
        proc = self.start(argv, workdir / "coturn.out", 3478)
        return Server("coturn", 3478, 443, proc, workdir / "coturn.log")


@pytest.fixture
def netns() -> Iterator[Netns]:
    require_tool("ip")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    ns = Netns(f"iw-doc-{uuid.uuid4().hex[:8]}")
    subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True)
    try:
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        for proc in ns.procs:
            stop_process(proc)
        subprocess.run(["ip", "netns", "delete", ns.name], capture_output=True)
