"""Real Redis and PostgreSQL for the fleet tests, each in a temporary directory on loopback.

PostgreSQL refuses to run as root: when the tests run as root (CI), ``initdb`` and the server
run as the ``postgres`` user (Debian's package makes it) on a directory it owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import require_tool


def free_port() -> int:
    """A free TCP port below the relay ranges' (kernel-chosen, ephemeral range)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None, what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}: {log.read_text(errors='replace')}")


class RedisServer:
    """``redis-server`` without persistence; stop() and start() again on the same port."""

    def __init__(self, directory: Path) -> None:
        self.binary = require_tool("redis-server")
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = self.dir / "redis.log"
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--dir", str(self.dir), "--logfile", str(log)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, "redis-server", log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def cli(self, *args: str) -> str:
        """One redis-cli command's output."""
        cli = shutil.which("redis-cli") or "redis-cli"
        out = subprocess.run(
            [cli, "-p", str(self.port), *args], capture_output=True, text=True, timeout=10
        )
        return out.stdout


def _run(cmd: list[str], timeout: float, cwd: Path | None = None) -> None:
    """Run a PostgreSQL tool (in ``cwd``: the postgres user may not enter the current
    directory); its own words when it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stdout}{done.stderr}")


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    return require_tool(name)


class PostgresServer:
    """A PostgreSQL cluster of its own: initdb in a temporary directory, a unix socket there
    and a free TCP port on 127.0.0.1, trust authentication on loopback."""

    def __init__(self) -> None:
        # Its own directory, not pytest's: pytest keeps its temporary tree private to root.
        self.dir = Path(tempfile.mkdtemp(prefix="iceward-pg-"))
        self.data = self.dir / "pgdata"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")  # Debian's package makes this user
            self.as_user = [require_tool("runuser"), "-u", "postgres", "--"]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _own(self, path: Path) -> None:
        if self.as_user:
            info = pwd.getpwnam("postgres")
            os.chown(path, info.pw_uid, info.pw_gid)

    def init(self) -> None:
        self.dir.chmod(0o700)
        self._own(self.dir)
        cmd = [*self.as_user, _pg_bin("initdb"), "-D", str(self.data), "-U", "postgres"]
        cmd += ["-A", "trust", "--no-sync", "-E", "UTF8"]
        _run(cmd, 120, self.dir)

    def start(self) -> None:
        log = self.dir / "postgres.log"
        if not log.exists():
            log.touch()
            self._own(log)
        options = f"-p {self.port} -k {self.dir} -h 127.0.0.1 -c fsync=off"
        cmd = [*self.as_user, _pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(log)]
        cmd += ["-o", options, "-w", "start"]
        _run(cmd, 60, self.dir)
        _wait_port(self.port, None, "postgres", log)

    def stop(self) -> None:
        cmd = [*self.as_user, _pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"]
        _run(cmd, 60, self.dir)

    def remove(self) -> None:
        """Stop it if it runs, and delete its directory."""
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
