"""One fleet shared by the tests of a module: a real Redis, a real PostgreSQL and three
``iceward serve`` nodes on 127.0.0.2 and 127.0.0.3 (region eu) and 127.0.0.4 (region us)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from iceward.store import Store
from tests.conftest import TEST_WORKERS, stop_process, stun_binding
from tests.fleet.services import PostgresServer, RedisServer

SECRET = "fleet-test-shared-secret"
#: Seconds the nodes answer API keys from their last good reading while PostgreSQL is down.
KEY_GRACE = 4.0
#: --user-quota of every node: counted over the fleet.
USER_QUOTA = 2
#: Node id -> (listen address, region).
NODES = {"n1": ("127.0.0.2", "eu"), "n2": ("127.0.0.3", "eu"), "n3": ("127.0.0.4", "us")}
#: Started by a test of its own, beside the three.
LATE_NODES = {"n4": ("127.0.0.5", "us")}


def place(node_id: str) -> tuple[str, str]:
    """A node's address and region."""
    return NODES.get(node_id) or LATE_NODES.get(node_id, ("127.0.0.5", "eu"))


@dataclass
class Node:
    id: str
    ip: str
    region: str
    workdir: Path
    proc: subprocess.Popen[bytes]
    port: int = 0
    tls_port: int = 0
    http_port: int = 0
    flags: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log_text(self) -> str:
        return (self.workdir / "server.log").read_text(errors="replace")


def node_command(
    node_id: str, ip: str, region: str, workdir: Path, redis_url: str, database: str, *extra: str
) -> list[str]:
    return [
        sys.executable, "-m", "iceward", "serve",
        "--listen", ip, "--port", "0", "--tls-port", "-1",
        "--relay-ports", "20000-20999",
        "--data-dir", str(workdir / "data"), "--ready-file", str(workdir / "ready.json"),
        "--http", "127.0.0.1:0", "--workers", str(TEST_WORKERS), "--log-level", "debug",
        "--realm", "iceward.test", "--secret", SECRET, "--allow-peer", "127.0.0.0/8",
        "--cluster", redis_url, "--node-id", node_id, "--region", region,
        "--database", database, "--api-key-grace", str(KEY_GRACE),
        "--user-quota", str(USER_QUOTA),
        *extra,
    ]  # fmt: skip


def launch(workdir: Path, cmd: list[str]) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ready.json").unlink(missing_ok=True)
    log = (workdir / "server.log").open("ab")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(node: Node, timeout: float = 60) -> Node:
    ready = node.workdir / "ready.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise RuntimeError(f"node {node.id} exited early:\n{node.log_text()}")
        if ready.exists():
            bound = json.loads(ready.read_text())
            node.port, node.tls_port = bound["port"], bound["tls_port"] or 0
            node.http_port = int(bound["http"].rpartition(":")[2])
            if stun_binding(node.port, node.ip) is not None:
                return node
        time.sleep(0.05)
    raise RuntimeError(f"node {node.id} did not start:\n{node.log_text()}")


def http(
    url: str, method: str = "GET", body: Any = None, key: str | None = None, timeout: float = 5
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


def wait_for(check: Any, timeout: float, what: str, step: float = 0.1) -> Any:
    """Poll ``check()`` until it returns something true; its value, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(step)


@dataclass
class Fleet:
    redis: RedisServer
    postgres: PostgresServer
    nodes: dict[str, Node]
    api_key: str
    admin_key: str
    root: Path

    def issue(self, node: str, **body: Any) -> tuple[int, Any]:
        body.setdefault("user", "u1")
        return http(self.nodes[node].url + "/api/v1/ice-servers", "POST", body, self.api_key)

    def fleet_view(self, node: str) -> dict[str, Any]:
        status, doc = http(self.nodes[node].url + "/admin/v1/fleet", key=self.admin_key)
        assert status == 200, doc
        return dict(doc)

    def command(self, node_id: str, *extra: str) -> list[str]:
        ip, region = place(node_id)
        workdir = self.root / node_id
        return node_command(node_id, ip, region, workdir, self.redis.url, self.postgres.url, *extra)

    def start(self, node_id: str, *extra: str) -> Node:
        ip, region = place(node_id)
        workdir = self.root / node_id
        proc = launch(workdir, self.command(node_id, *extra))
        node = Node(node_id, ip, region, workdir, proc, flags=list(extra))
        self.nodes[node_id] = node
        return node

    def kill(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)


def write_region_map(path: Path) -> Path:
    path.write_text(
        "# test networks\n"
        "198.51.100.0/24 eu\n"
        "203.0.113.0/24 us\n"
        "2001:db8:e::/48 eu\n"
        "2001:db8:1::/48 us\n"
    )
    return path


@contextmanager
def running_fleet(root: Path, start: Callable[[Fleet], Fleet]) -> Iterator[Fleet]:
    """A fleet in ``root`` with its own Redis and PostgreSQL, as ``start`` brings it up; after,
    its nodes are stopped together (each takes a moment) and both services removed."""
    fleet = Fleet(RedisServer(root / "redis"), PostgresServer(), {}, "", "", root)
    try:
        yield start(fleet)
    finally:
        for node in fleet.nodes.values():
            if node.proc.poll() is None:
                node.proc.terminate()
        for node in fleet.nodes.values():
            stop_process(node.proc)
        fleet.redis.stop()
        fleet.postgres.remove()


def start_services(fleet: Fleet) -> None:
    """Redis and PostgreSQL up, and the fleet's API keys made in the store."""
    fleet.redis.start()
    fleet.postgres.init()
    fleet.postgres.start()
    store = Store(fleet.postgres.url)
    fleet.api_key = store.add_api_key("app")
    fleet.admin_key = store.add_api_key("ops", admin=True)
    store.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("fleet"), start_fleet) as running:
        yield running


def start_fleet(fleet: Fleet) -> Fleet:
    from tests.fleet.mmdb import write_mmdb

    root = fleet.root
    start_services(fleet)
    region_map = write_region_map(root / "regions.txt")
    geoip = write_mmdb(
        root / "geo.mmdb",
        {"192.0.2.0/24": {"continent": {"code": "EU"}, "country": {"iso_code": "DE"}}},
    )
    extra = ["--region-map", str(region_map), "--geoip", str(geoip)]
    extra += ["--region-fallback", "eu=us", "--region-fallback", "ap=us"]
    for node_id in NODES:
        fleet.start(node_id, *extra)
    for node in fleet.nodes.values():
        wait_ready(node)
    wait_for(
        lambda: all(len(fleet.fleet_view(n)["nodes"]) == 3 for n in NODES),
        10,
        "the three nodes see each other",
    )
    return fleet
