"""iceward under systemd: the unit file passes ``systemd-analyze verify``, and a real
``iceward serve`` speaks sd_notify to a ``$NOTIFY_SOCKET`` this test listens on."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.api.test_api import http
from tests.conftest import (
    HOST,
    RunningServer,
    free_port_pair,
    require_tool,
    stop_process,
    stun_binding,
)
from tests.net.turnclient import BlockingTurnClient

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "systemd" / "iceward.service"


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    text = UNIT.read_text()
    for needed in (
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=iceward",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LimitNOFILE=",
    ):
        assert needed in text
    # verify insists that ExecStart's binary exists: point it at this installation's.
    binary = Path(sys.executable).parent / "iceward"
    assert binary.exists()
    copy = tmp_path / "iceward.service"
    copy.write_text(text.replace("ExecStart=/usr/local/bin/iceward ", f"ExecStart={binary} "))
    done = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True)
    said = [line for line in (done.stdout + done.stderr).splitlines() if "iceward" in line]
    assert done.returncode == 0 and not said, done.stdout + done.stderr


class NotifyListener:
    """The socket systemd would listen on; every datagram with the sender's pid."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.received: list[tuple[int, dict[str, str]]] = []

    def next(self, timeout: float) -> tuple[int, dict[str, str]] | None:
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return None
        pid = -1
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", value[:12])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.received.append((pid, fields))
        return pid, fields

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.next(max(0.01, deadline - time.monotonic()))
            if got is not None and key in got[1] and value in (None, got[1][key]):
                return got[1]
        raise AssertionError(f"no {key}={value or '*'} in {self.received}")


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_notifies_ready_status_watchdog_reload_and_stopping(
    tmp_path: Path, workers: int
) -> None:
    # A path with one worker, the abstract namespace ("@") with two.
    name = str(tmp_path / "notify") if workers == 1 else f"@iceward-test-{os.urandom(6).hex()}"
    listener = NotifyListener(name if workers == 1 else b"\0" + name[1:].encode())
    port = free_port_pair()
    log_path = tmp_path / "server.log"
    env = dict(os.environ, NOTIFY_SOCKET=name, WATCHDOG_USEC="300000")
    env.pop("WATCHDOG_PID", None)
    cmd = [
        sys.executable, "-m", "iceward", "serve", "--listen", HOST, "--port", str(port),
        "--tls-port", "0", "--data-dir", str(tmp_path / "data"), "--http", f"{HOST}:0",
        "--workers", str(workers), "--relay-ports", "20000-20099", "--secret", "s",
        "--user", "alice:wonderland", "--realm", "iceward.test",
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = RunningServer(proc, port, 0, tmp_path / "data", log_path, "s")
    try:
        ready = listener.wait_for("READY", "1")
        # READY only once everything answers: STUN, the HTTP API, every worker.
        assert stun_binding(port) is not None
        found = re.search(r"HTTP API on http://[^ ]+:(\d+)", server.log_text())
        assert found, server.log_text()
        server.http_port = int(found.group(1))
        status, body, _ = http(server, "GET", "/readyz")
        assert status == 200 and body["workers"] == {"up": workers, "total": workers}
        assert ready["MAINPID"] == str(proc.pid)
        assert ready["STATUS"] == f"0 allocations, {workers}/{workers} workers up"

        listener.wait_for("WATCHDOG", "1", timeout=2)
        client = BlockingTurnClient((HOST, port), "alice", "wonderland")
        try:
            client.allocate()
            listener.wait_for("STATUS", f"1 allocation, {workers}/{workers} workers up", 10)
        finally:
            client.close()

        proc.send_signal(signal.SIGHUP)
        listener.wait_for("RELOADING", "1", timeout=5)
        listener.wait_for("READY", "1", timeout=5)
        proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING", "1", timeout=5)
        assert proc.wait(20) == 0
    finally:
        stop_process(proc)
        listener.sock.close()
    # Only the main process notifies (systemd's NotifyAccess=main would drop a worker's).
    assert {pid for pid, _ in listener.received} == {proc.pid}
