"""What usage accounting and a bandwidth limit cost per relayed round trip, in instructions.

``python bench/usage_cost_bench.py --base-cmd "CMD"`` runs the same fixed workload through
iceward under valgrind's callgrind, on the native fast path and on the Python path, for:

* ``base``: ``--base-cmd``, an iceward build to compare with (e.g. the commit before usage
  accounting and bandwidth limits were added: ``git archive COMMIT``, its extension compiled);
* ``iceward``: this tree, no limit (usage records every 60 s, as by default);
* ``limited``: this tree with ``--limited-args`` (usage records every second and a ``--max-bps``
  no flow reaches: every datagram pays the limiter, none is dropped).

Each server starts with instrumentation off (``--instr-atstart=no``); once ``--clients``
allocations with a channel to a local echo peer are set up, ``callgrind_control -i on`` starts
counting, ``--round-trips`` ChannelData round trips (client -> relay -> echo peer -> relay ->
client, one in flight per client) run, ``callgrind_control -i off`` stops it, and the dump's
instruction total is divided by the round trips. Instruction counts do not depend on what else
the machine does, unlike the CPU time ``relay_bench.py`` measures; timers that fire during the
window (the once-a-second tick, the usage interval) are in the count, as they are in production.
Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from iceward.stun import constants as c
from iceward.stun.message import encode_message, parse_message
from relay_bench import HOST, PASSWORD, REALM, USER, BenchError, TurnClient

PORTS = {"base": (60000, 60999), "iceward": (61000, 61999), "limited": (62000, 62999)}


def start(
    name: str, command: list[str], extra: list[str], path: str, tmp: Path
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The server under callgrind, instrumentation off; (process, port, callgrind out file)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    low, high = PORTS[name]
    out = tmp / f"callgrind.{name}.{path}.out"
    argv = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=yes",
        f"--callgrind-out-file={out}.%p",
        *command, "serve", "--listen", HOST, "--port", str(port), "--tls-port", "0",
        "--relay-ip", HOST, "--relay-ports", f"{low}-{high}", "--user", f"{USER}:{PASSWORD}",
        "--realm", REALM, "--allow-peer", "127.0.0.0/8", "--data-dir", str(tmp / f"{name}-data"),
        "--http", "off", "--log-level", "info", "--workers", "1", *extra,
    ]  # fmt: skip
    env = {**os.environ, "ICEWARD_FASTPATH": "1" if path == "native" else "0"}
    log = open(tmp / f"{name}.{path}.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    sent: set[bytes] = set()  # any probe's answer counts: under valgrind they come late
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(1.0)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"{name} exited: {(tmp / f'{name}.{path}.log').read_text()}")
            txid = os.urandom(12)
            sent.add(txid)
            probe.sendto(encode_message(c.BINDING, c.REQUEST, txid), (HOST, port))
            try:
                if parse_message(probe.recv(2048)).transaction_id in sent:
                    return proc, port, out
            except (TimeoutError, ConnectionRefusedError):
                time.sleep(0.5)
    proc.kill()
    raise BenchError(f"{name} did not start under valgrind")


def round_trips(clients: list[TurnClient], echo: socket.socket, count: int, size: int) -> None:
    payload = b"x" * size
    frames = [
        bytes([cl.channel >> 8, cl.channel & 0xFF, size >> 8, size & 0xFF]) + payload
        for cl in clients
    ]
    for cl in clients:
        cl.sock.settimeout(10)
    echo.settimeout(10)
    done = 0
    while done < count:
        for cl, frame in zip(clients, frames, strict=True):
            cl.sock.send(frame)
        for _ in clients:
            data, addr = echo.recvfrom(65536)
            echo.sendto(data, addr)
        for cl in clients:
            if len(cl.sock.recv(65536)) != 4 + size:
                raise BenchError("a round trip came back with the wrong size")
        done += len(clients)


def instructions(out: Path) -> int:
    """The instruction total of a callgrind dump (``summary:`` or ``totals:``)."""
    for line in out.read_text().splitlines():
        match = re.match(r"(?:summary|totals):\s+(\d+)", line)
        if match:
            return int(match[1])
    raise BenchError(f"no instruction total in {out}")


def measure(
    name: str, command: list[str], extra: list[str], path: str, args: argparse.Namespace, tmp: Path
) -> float:
    proc, port, out = start(name, command, extra, path, tmp)
    try:
        echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        echo.bind((HOST, 0))
        clients = []
        for i in range(args.clients):
            client = TurnClient((HOST, port), 0x4000 + i)
            client.allocate()
            client.bind(echo.getsockname())
            clients.append(client)
        round_trips(clients, echo, 200, args.payload)  # warm: every path and cache taken once
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                       capture_output=True)  # fmt: skip
        round_trips(clients, echo, args.round_trips, args.payload)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True,
                       capture_output=True)  # fmt: skip
        for client in clients:
            client.sock.close()
        echo.close()
    finally:
        proc.terminate()
        proc.wait(120)
    total = sum(instructions(p) for p in tmp.glob(f"{out.name}*"))
    return total / args.round_trips


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--base-cmd", help="command running the iceward build to compare with")
    p.add_argument(
        "--iceward-cmd", help="command that runs this iceward [this Python -m iceward]"
    )
    p.add_argument(
        "--limited-args", default="--max-bps 1000000000 --usage-interval 1",
        help="flags of 'limited' [--max-bps 1000000000 --usage-interval 1]",
    )  # fmt: skip
    p.add_argument("--paths", default="native,python", help="relay paths [native,python]")
    p.add_argument("--clients", type=int, default=4, help="allocations [4]")
    p.add_argument("--round-trips", type=int, default=20000, help="measured round trips [20000]")
    p.add_argument("--payload", type=int, default=100, help="payload bytes [100]")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        p.error("valgrind (callgrind) is needed")
    variants: list[tuple[str, list[str], list[str]]] = []
    if args.base_cmd:
        variants.append(("base", shlex.split(args.base_cmd), []))
    # Not the venv's console script: valgrind follows the interpreter, not the script's #!.
    own = shlex.split(args.iceward_cmd) if args.iceward_cmd else [sys.executable, "-m", "iceward"]
    variants.append(("iceward", own, []))
    variants.append(("limited", own, shlex.split(args.limited_args)))
    with tempfile.TemporaryDirectory(prefix="usage-cost-") as tmp:
        print(
            f"instructions per round trip (callgrind), {args.round_trips} round trips of "
            f"{args.payload} B over {args.clients} allocations"
        )
        for path in [x.strip() for x in args.paths.split(",") if x.strip()]:
            results = {}
            for name, command, extra in variants:
                results[name] = measure(name, command, extra, path, args, Path(tmp))
                print(f"  {path:<7} {name:<8} {results[name]:>12,.0f} Ir/rt", flush=True)
            for name in ("iceward", "limited"):
                if "base" in results:
                    print(f"  {path:<7} {name}/base {results[name] / results['base']:.4f}")
            print(f"  {path:<7} limited/iceward {results['limited'] / results['iceward']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
