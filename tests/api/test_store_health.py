"""A broken data store shows in /readyz and answers 503 naming it, logged once, recovery too."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.api.test_api import cli, eventually, http
from tests.conftest import HOST, RunningServer

MakeServer = Callable[..., RunningServer]
#: Lines of the process serving the API (worker processes log as ``iceward.store[wN]``).
FAILED = re.compile(r" iceward\.store data store \S+ unavailable: (.*)")
RECOVERED = re.compile(r" iceward\.store data store \S+ available again")


def ready(server: RunningServer) -> tuple[int, dict[str, object]]:
    status, doc, _ = http(server, "GET", "/readyz")
    return status, doc


def credential_answers(server: RunningServer, key: str, count: int) -> list[tuple[int, object]]:
    answers = []
    for i in range(count):
        status, doc, _ = http(server, "POST", "/api/v1/ice-servers", {"user": f"u{i}"}, key)
        answers.append((status, doc))
        status, doc, _ = http(server, "GET", f"/api/v1/turn?service=turn&key={key}")
        answers.append((status, doc))
    return answers


def assert_outage(server: RunningServer, key: str, cause: str) -> None:
    assert eventually(lambda: ready(server)[0] == 503)
    status, doc = ready(server)
    assert doc["store"] is False and doc["status"] == "not ready"
    assert cause in str(doc["reason"]) and "data store" in str(doc["reason"]), doc
    for status, doc in credential_answers(server, key, 5):
        assert status == 503, doc
        assert isinstance(doc, dict) and "data store is unavailable" in doc["detail"]
    log = server.log_text()
    failures = FAILED.findall(log)
    assert len(failures) == 1 and cause in failures[0], log
    assert "Traceback" not in log


def assert_recovery(server: RunningServer, key: str) -> None:
    assert eventually(lambda: ready(server)[0] == 200)
    assert ready(server)[1]["store"] is True
    assert all(status == 200 for status, _ in credential_answers(server, key, 2))
    assert len(RECOVERED.findall(server.log_text())) == 1


def test_a_corrupted_database(make_server: MakeServer) -> None:
    server = make_server(tls=False)
    key = cli(server, "keys", "add", "backend")
    assert ready(server)[0] == 200
    db = server.data_dir / "iceward.db"
    healthy = db.read_bytes()
    db.write_bytes(b"this is not a database, it was overwritten by mistake\n" * 200)
    assert_outage(server, key, "file is not a database")
    db.write_bytes(healthy)  # restored in place
    assert_recovery(server, key)


def test_a_deleted_data_dir(make_server: MakeServer, tmp_path: Path) -> None:
    server = make_server(tls=False)
    key = cli(server, "keys", "add", "backend")
    backup = tmp_path / "backup"
    shutil.copytree(server.data_dir, backup)
    shutil.rmtree(server.data_dir)
    assert_outage(server, key, "is missing")
    assert not server.data_dir.exists()  # no empty database made in its place
    shutil.copytree(backup, server.data_dir)  # restored from the backup: another file
    assert_recovery(server, key)


def test_a_corrupted_database_at_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "iceward.db").write_bytes(b"garbage, not SQLite\n" * 100)
    for args in (
        ["keys", "list"],
        ["serve", "--listen", HOST, "--port", "0", "--tls-port", "0", "--http", "off",
         "--secret", "s", "--workers", "1"],
    ):  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "iceward", *args, "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if "error" in line]
        prefix = "cannot start: " if args[0] == "serve" else ""
        assert errors == [
            f"iceward: error: {prefix}cannot open the data store: "
            f"{data_dir / 'iceward.db'}: file is not a database"
        ], proc.stderr
        assert "Traceback" not in proc.stderr
