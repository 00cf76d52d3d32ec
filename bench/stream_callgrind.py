"""User-space instructions per relayed round trip of iceward with TCP or TLS clients (callgrind).

``python bench/stream_callgrind.py --transport tcp --tree DIR [--tree DIR2 ...]``

Each ``--tree`` is an iceward source tree whose ``src`` holds a built extension (for another
commit: ``git archive COMMIT | tar -x -C DIR``, then compile ``src/iceward/net/_fastpath.c``
there with the same flags for every tree, e.g. ``gcc -shared -fPIC -O2 -DNDEBUG -std=gnu11
-I$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')``); default: this
tree. For each tree and payload, ``iceward serve --workers 1`` runs under valgrind's callgrind
(pinned to CPU 1, ``PYTHONPATH=TREE/src``) and ``bench/loadgen.c`` (built with OpenSSL, pinned
to CPU 0) relays through it as ``relay_bench.py --client-transport`` does: 16 connections, 8
messages in flight each, to a UDP echo peer. The counts are zeroed before each generator run; a
1 ms run (the connections' TLS handshakes and TURN set-up alone) is subtracted from a
``--seconds`` run, over that run's round trips. Kernel work (the syscalls, TCP, the crypto done
in the kernel: none here) is not counted; ``relay_bench.py``'s CPU time has it. Instruction
counts do not depend on what else the machine runs. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iceward.stun import constants as c
from iceward.stun.message import encode_message
from relay_bench import HOST, PASSWORD, REALM, USER, _free_port, build_loadgen, make_certificate

HERE = Path(__file__).resolve().parent
CLIENTS = 16
WINDOW = 8


def _ctl(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def _total(files: list[str]) -> int:
    total = 0
    for name in files:
        with open(name) as f:
            for line in f:
                if line.startswith("summary:"):
                    total += int(line.split()[1])
                    break
    return total


def _wait_answer(port: int, deadline: float, log: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        while True:
            if time.monotonic() > deadline:
                raise SystemExit(f"iceward did not start under valgrind:\n{log.read_text()}")
            try:
                s.sendto(encode_message(c.BINDING, c.REQUEST, os.urandom(12)), (HOST, port))
                s.recv(2048)
                return
            except OSError:
                time.sleep(0.5)


def measure(
    tree: Path, transport: str, payload: int, seconds: float, loadgen: Path, tmp: Path
) -> tuple[float, int]:
    """(user-space instructions per round trip, round trips) for one tree and payload."""
    port = _free_port()
    out = tmp / f"cg.{os.getpid()}.{payload}"
    log = tmp / "iceward.log"
    argv = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
        sys.executable, "-m", "iceward", "serve", "--listen", HOST, "--port", str(port),
        "--relay-ip", HOST, "--relay-ports", "62000-62999", "--user", f"{USER}:{PASSWORD}",
        "--realm", REALM, "--allow-peer", "127.0.0.0/8", "--data-dir", str(tmp / "data"),
        "--http", "off", "--log-level", "warning", "--workers", "1",
    ]  # fmt: skip
    tls_port = None
    if transport == "tls":
        tls_port = _free_port()
        cert, key = make_certificate(tmp)
        argv += ["--tls-port", str(tls_port), "--cert", str(cert), "--key", str(key)]
    else:
        argv += ["--tls-port", "0"]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, {1}),
        )
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind((HOST, 0))
    counts = []
    try:
        _wait_answer(port, time.monotonic() + 180, log)
        for duration in (0.001, seconds):
            conns = [
                socket.create_connection((HOST, tls_port or port), timeout=30)
                for _ in range(CLIENTS)
            ]
            _ctl(proc.pid, "-z")
            run = subprocess.run(
                [
                    str(loadgen), "0", str(int(duration * 1000)), str(WINDOW), str(payload),
                    str(proc.pid), "1", "0", str(echo.fileno()),
                    *(f"{conn.fileno()}:{0x4000 + i}" for i, conn in enumerate(conns)),
                ],
                pass_fds=[echo.fileno(), *(conn.fileno() for conn in conns)],
                capture_output=True,
                text=True,
                env={
                    **os.environ,
                    "LOADGEN_STREAM": transport,
                    "LOADGEN_TURN": f"{USER}:{REALM}:{PASSWORD}:{HOST}:{echo.getsockname()[1]}",
                },
                preexec_fn=lambda: os.sched_setaffinity(0, {0}),
                timeout=duration + 300,
            )  # fmt: skip
            if run.returncode != 0:
                raise SystemExit(f"loadgen failed: {run.stderr}")
            for conn in conns:
                conn.close()
            time.sleep(1.0)  # the server ends those allocations inside the count
            _ctl(proc.pid, "-d")
            files: list[str] = []
            for _ in range(100):
                files = glob.glob(f"{out}.*.*")  # the dumps (.PID.N), not the final file
                if files and _total(files):
                    break
                time.sleep(0.2)
            counts.append((_total(files), json.loads(run.stdout)["round_trips"]))
            for name in files:
                os.remove(name)
    finally:
        proc.terminate()
        proc.wait(60)
        echo.close()
    (setup, _), (full, round_trips) = counts
    return (full - setup) / max(round_trips, 1), round_trips


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--transport", choices=("tcp", "tls"), default="tcp")
    p.add_argument("--tree", action="append", type=Path, help="iceward source tree [this one]")
    p.add_argument("--payloads", default="100,1200", help="payload sizes [100,1200]")
    p.add_argument("--seconds", type=float, default=6.0, help="loaded run under valgrind [6]")
    args = p.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("stream_callgrind: valgrind is not installed", file=sys.stderr)
        return 2
    trees = args.tree or [HERE.parent]
    payloads = [int(x) for x in args.payloads.split(",") if x.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="stream-callgrind-"))
    try:
        loadgen = build_loadgen(tmp, stream=True)
        for payload in payloads:
            for tree in trees:
                ir, round_trips = measure(tree, args.transport, payload, args.seconds, loadgen, tmp)
                print(
                    f"{args.transport} {payload:>5} B  {ir:>10,.0f} Ir/rt  "
                    f"({round_trips} round trips)  {tree}",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
