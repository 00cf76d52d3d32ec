"""The data dir holds secrets: 0700, every file in it 0600, an older install fixed on start."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from iceward.net.tlsfiles import ensure_self_signed
from iceward.store import Store
from iceward.turn.credentials import rest_password
from tests.api.test_api import cli, http
from tests.conftest import RunningServer

MakeServer = Callable[..., RunningServer]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def modes(data_dir: Path) -> dict[str, int]:
    """Every directory and file under ``data_dir`` (itself included) with its mode."""
    found = {".": mode(data_dir)}
    for root, dirs, files in os.walk(data_dir):
        for name in [*dirs, *files]:
            path = Path(root) / name
            found[str(path.relative_to(data_dir))] = mode(path)
    return found


def old_install(data_dir: Path) -> dict[str, int]:
    """A data dir as an older version left it: 0755 directories, 0644 files, a secret inside."""
    data_dir.mkdir()
    store = Store(f"sqlite:///{data_dir / 'iceward.db'}")
    store.add_secret("2026-01", "an-old-shared-secret-value")
    store.close()
    (data_dir / "rest-secret").write_text("old-rest-secret\n")
    (data_dir / "notes.txt").write_text("anything the operator left here\n")
    ensure_self_signed(data_dir / "tls", ["127.0.0.1"])
    loose = {".": 0o755, "tls": 0o755}
    for name in ("iceward.db", "rest-secret", "notes.txt", "tls/cert.pem", "tls/key.pem"):
        loose[name] = 0o644
    for name, m in loose.items():
        (data_dir / name).chmod(m)
    assert modes(data_dir) == loose
    return loose


def assert_private(data_dir: Path) -> None:
    for name, m in modes(data_dir).items():
        is_dir = (data_dir / name).is_dir()
        assert m == (0o700 if is_dir else 0o600), f"{name}: {m:04o}"


def test_an_old_install_is_tightened_on_start(make_server: MakeServer, tmp_path: Path) -> None:
    data_dir = tmp_path / "old"
    loose = old_install(data_dir)
    server = make_server("--data-dir", str(data_dir))
    server.data_dir = data_dir
    assert_private(data_dir)
    log = server.log_text()
    for name, old in loose.items():
        path = data_dir if name == "." else data_dir / name
        new = 0o700 if path.is_dir() else 0o600
        line = f"tightened the permissions of {path} from {old:04o} to {new:04o}"
        assert log.count(line) == 1, (line, log)
    # The secrets still work: the old store's secret signs new credentials.
    key = cli(server, "keys", "add", "backend")
    status, doc, _ = http(server, "POST", "/api/v1/ice-servers", {"user": "u"}, key)
    assert status == 200, doc
    turn = next(s for s in doc["iceServers"] if "username" in s)
    assert turn["credential"] == rest_password("an-old-shared-secret-value", turn["username"])
    assert_private(data_dir)


def test_a_cli_command_opening_the_store_tightens_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "old"
    old_install(data_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "iceward", "secrets", "list", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2026-01" in proc.stdout
    assert f"tightened the permissions of {data_dir / 'iceward.db'} from 0644 to 0600" in (
        proc.stderr
    )
    assert_private(data_dir)
    again = subprocess.run(
        [sys.executable, "-m", "iceward", "secrets", "list", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert again.returncode == 0 and "tightened" not in again.stderr


def test_a_fresh_install_is_created_private(make_server: MakeServer) -> None:
    # No --secret, no --user: the REST secret is made in the data dir; TLS is self-signed there.
    server = make_server(secret="", users={})
    cli(server, "secrets", "add", "2026-11")
    key = cli(server, "keys", "add", "backend")
    status, _, _ = http(server, "POST", "/api/v1/ice-servers", {"user": "u"}, key)
    assert status == 200
    found = modes(server.data_dir)
    assert {".", "iceward.db", "rest-secret", "test-link-key", "tls", "tls/cert.pem"} <= set(found)
    assert_private(server.data_dir)
    assert "tightened" not in server.log_text()  # created so, not fixed afterwards


def test_a_data_dir_behind_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    old_install(real)
    link = tmp_path / "link"
    link.symlink_to(real)
    proc = subprocess.run(
        [sys.executable, "-m", "iceward", "keys", "list", "--data-dir", str(link)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"tightened the permissions of {link} from 0755 to 0700" in proc.stderr
    assert_private(real)
