"""``iceward serve --log-format json``: one JSON object a line, stable fields, no secret."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_api import http
from tests.conftest import HOST, RunningServer, free_port_pair, stop_process, stun_binding
from tests.net.turnclient import BlockingTurnClient, TurnError

SECRET = "json-log-shared-secret"
PASSWORD = "wonderland-json"


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_log_lines_carry_allocation_and_refusal_fields_and_no_secret(
    tmp_path: Path,
) -> None:
    port = free_port_pair()
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    cmd = [
        sys.executable, "-m", "iceward", "serve", "--listen", HOST, "--port", str(port),
        "--tls-port", "0", "--data-dir", str(tmp_path / "data"), "--http", f"{HOST}:0",
        "--workers", "2", "--secret", SECRET, "--user", f"alice:{PASSWORD}",
        "--allow-peer", "127.0.0.0/8", "--realm", "iceward.test", "--log-format", "json",
        "--log-level", "debug",  # allocation_start is a debug line
    ]  # fmt: skip
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
    server = RunningServer(proc, port, 0, tmp_path / "data", stderr, SECRET)
    try:
        deadline = time.monotonic() + 20
        while not server.http_port:
            assert proc.poll() is None and time.monotonic() < deadline, server.log_text()
            for line in json_lines(server.log_text()):
                if line["message"].startswith("HTTP API on http://"):
                    server.http_port = int(line["message"].rsplit(":", 1)[1])
            time.sleep(0.1)
        while http(server, "GET", "/readyz")[0] != 200 or stun_binding(port) is None:
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.1)
        keys = subprocess.run(
            [sys.executable, "-m", "iceward", "keys", "add", "app", "--data-dir",
             str(server.data_dir)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        app_key = keys.stdout.strip()
        status, issued, _ = http(server, "POST", "/api/v1/ice-servers", {"user": "u1"}, app_key)
        assert status == 200
        minted = issued["iceServers"][-1]["credential"]

        wrong = BlockingTurnClient((HOST, port), "alice", "not-the-password")
        with pytest.raises(TurnError):
            wrong.allocate()
        wrong.close()
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind((HOST, 0))
        client = BlockingTurnClient((HOST, port), "alice", PASSWORD)
        try:
            relayed = client.allocate()
            with pytest.raises(TurnError) as refused:
                client.create_permission(("10.0.0.1", 9))
            assert refused.value.code == 403
            client.channel_bind(0x4000, peer.getsockname())
            for _ in range(5):
                client.send_channel_data(0x4000, b"x" * 100)
                peer.recvfrom(200)
            peer.sendto(b"y" * 40, relayed)
            assert client.receive_data() == (0x4000, b"y" * 40)
            client.refresh(0)
        finally:
            client.close()
            peer.close()
    finally:
        assert stop_process(proc) == 0
    text = stderr.read_text()

    # Every line is a JSON object (the "# ..." hints after start-up are the CLI's, not logs).
    for line in text.splitlines():
        assert line.startswith(("{", "# ")), line
    lines = json_lines(text)
    for line in lines:
        assert list(line)[:5] == ["ts", "level", "logger", "event", "message"]
        assert line["ts"].endswith("Z") and line["level"] in {"debug", "info", "warning", "error"}
    events = {line["event"]: line for line in lines if line["event"] != "log"}

    auth = events["auth_refused"]
    assert auth["user"] == "alice" and auth["client"].startswith("127.0.0.1:")
    assert auth["transport"] == "udp" and auth["reason"] and auth["level"] == "warning"
    assert auth["worker"] in (0, 1)
    refusal = events["peer_refused"]
    assert refusal["peer"].startswith("10.0.0.1") and refusal["reason"]
    start, end = events["allocation_start"], events["allocation_end"]
    assert start["allocation"] == end["allocation"] and start["worker"] == end["worker"]
    assert start["relayed"] == end["relayed"] == [f"{relayed[0]}:{relayed[1]}"]
    assert start["user"] == end["user"] == "alice" and end["client"] == start["client"]
    assert end["transport"] == "udp" and isinstance(end["duration_s"], float)
    assert end["reason"] and end["reason"] == end["reason"].strip()
    assert (end["packets_to_peer"], end["bytes_to_peer"]) == (5, 500)
    assert (end["packets_to_client"], end["bytes_to_client"]) == (1, 40)
    issuance = [line for line in lines if line["message"].startswith("issued ")]
    assert issuance and "<redacted>" in issuance[0]["message"]
    for secret in (SECRET, PASSWORD, app_key, minted):
        assert secret not in text


def test_text_lines_are_logging_s_own_format_with_the_date_formatted_once_a_second() -> None:
    import logging

    from iceward.runtime import TextFormatter

    fmt = "%(asctime)s %(levelname)s %(name)s %(message)s"
    ours, stdlib = TextFormatter(fmt), logging.Formatter(fmt)
    for created in (1700000000.0, 1700000000.9996, 1700000001.25, 1700000000.5, time.time()):
        record = logging.LogRecord("iceward.x", logging.INFO, "", 0, "m %s", ("a",), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == stdlib.format(record)
