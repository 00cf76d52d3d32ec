"""Server memory per allocation and under allocate/delete churn, iceward beside coturn.

``python bench/memory_bench.py [--allocations 1000] [--churn-seconds 35] [--servers LIST]``

For each server, one after the other, on 127.0.0.1 (relay ports below the ephemeral range):

1. start it and read its RSS (VmRSS, summed over its processes) once it answers: the baseline;
2. make ``--allocations`` allocations, one UDP client socket each, kept alive: RSS again, and
   the growth per allocation;
3. keep those, and churn for ``--churn-seconds``: a new client socket at a time allocates (401,
   then signed) and deletes (Refresh LIFETIME 0) as fast as it gets answers; RSS at the end,
   and the rounds done.

Churn beside live allocations is what used to grow iceward from 245 MB to 2.1 GB in 35 s (deleted
allocations pinned in the timer heap with a 64 KiB buffer each). iceward runs ``--workers 1``
(``--workers N``: the supervisor and N workers, the baseline also shown per process)
with the challenge limit raised (every client here shares one source IP); coturn with one relay
thread. Nothing is sent anywhere but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from iceward.stun import constants as c
from iceward.stun.attributes import encode_u32
from relay_bench import (
    HOST,
    PASSWORD,
    REALM,
    USER,
    BenchError,
    Server,
    TurnClient,
    _free_port,
    iceward_command,
)

RELAY_PORTS = {"iceward": (20000, 24999), "coturn": (25000, 29999)}


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        found = re.search(r"VmRSS:\s+(\d+)", status)
        total += int(found.group(1)) if found else 0
    return total


def make_server(name: str, tmp: Path, args: argparse.Namespace) -> Server:
    port = _free_port()
    low, high = RELAY_PORTS[name]
    if name == "iceward":
        argv = [
            *iceward_command(args),
            "serve",
            "--listen", HOST,
            "--port", str(port),
            "--tls-port", "0",
            "--relay-ip", HOST,
            "--relay-ports", f"{low}-{high}",
            "--user", f"{USER}:{PASSWORD}",
            "--realm", REALM,
            "--data-dir", str(tmp / "iceward-data"),
            "--http", "off",
            "--log-level", "warning",
            "--workers", str(args.workers),
            "--max-challenges", "1000000",
        ]  # fmt: skip
        if not args.iceward_cmd:  # this tree's flag: every client here is 127.0.0.1, a load
            argv += ["--max-requests-per-source", "0"]
    else:
        binary = shutil.which("turnserver")
        if binary is None:
            raise BenchError("turnserver (coturn) not found; use --servers iceward")
        argv = [
            binary, "-n",
            f"--listening-ip={HOST}", f"--relay-ip={HOST}", f"--listening-port={port}",
            f"--min-port={low}", f"--max-port={high}", "--relay-threads=1",
            "--lt-cred-mech", f"--user={USER}:{PASSWORD}", f"--realm={REALM}",
            "--no-tls", "--no-dtls", "--no-cli",
            f"--pidfile={tmp / 'turnserver.pid'}", f"--userdb={tmp / 'turndb'}",
            f"--log-file={tmp / 'coturn-file.log'}", "--simple-log", "--no-stdout-log",
        ]  # fmt: skip
    return Server(name, argv, port, tmp / f"{name}.log", sorted(os.sched_getaffinity(0)), 0)


def delete(client: TurnClient) -> None:
    client.transact(c.REFRESH, lambda _: [(c.LIFETIME, encode_u32(0))])


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="iceward-mem-") as tmp_name:
        server = make_server(name, Path(tmp_name), args)
        server.start()
        clients: list[TurnClient] = []
        try:
            time.sleep(1.0)
            processes = [server.pid, *server.children()]
            base = rss_kib(processes)
            each = "+".join(f"{rss_kib([pid]) / 1024:.0f}" for pid in processes)
            for i in range(args.allocations):
                client = TurnClient(server.address, 0x4000 + i % 0x3FFF)
                client.allocate()
                clients.append(client)
            time.sleep(0.5)
            live = rss_kib([server.pid, *server.children()])
            rounds = refused = 0
            deadline = time.monotonic() + args.churn_seconds
            while time.monotonic() < deadline:
                churner = TurnClient(server.address, 0x4000)
                try:
                    churner.allocate()
                    delete(churner)
                    rounds += 1
                except BenchError:
                    refused += 1
                finally:
                    churner.sock.close()
            churned = rss_kib([server.pid, *server.children()])
        finally:
            for client in clients:
                client.sock.close()
            server.stop()
    return {
        "baseline_mb": base / 1024,
        "processes": each,
        "live_mb": live / 1024,
        "per_allocation_kib": (live - base) / max(1, args.allocations),
        "churn_rounds": rounds,
        "churn_refused": refused,
        "churned_mb": churned / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--allocations", type=int, default=1000)
    p.add_argument("--churn-seconds", type=float, default=35.0)
    p.add_argument("--servers", default="iceward,coturn")
    p.add_argument("--iceward-cmd", default="", help="command that runs iceward")
    p.add_argument(
        "--workers", type=int, default=1, help="iceward's --workers (the supervisor and N workers)"
    )
    args = p.parse_args(argv)
    if not 1 <= args.workers <= 16:
        p.error("--workers 1..16")
    if args.allocations > 4000:
        p.error("--allocations is at most 4000 (the relay port ranges hold 5000 each)")
    print(
        f"{'server':<8} {'baseline MB':>11} {'per process':>14} {'live MB':>8} {'KiB/alloc':>9} "
        f"{'churn rounds':>12} {'refused':>7} {'after churn MB':>14}"
    )
    for name in args.servers.split(","):
        try:
            r = measure(name.strip(), args)
        except BenchError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 2
        print(
            f"{name:<8} {r['baseline_mb']:>11.1f} {r['processes']:>14} {r['live_mb']:>8.1f} "
            f"{r['per_allocation_kib']:>9.1f} {r['churn_rounds']:>12.0f} "
            f"{r['churn_refused']:>7.0f} {r['churned_mb']:>14.1f}"
        )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
