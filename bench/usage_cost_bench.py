"""What usage accounting and a bandwidth limit cost per relayed round trip, in instructions.

``python bench/usage_cost_bench.py --base-cmd "CMD"`` runs the same fixed workload through
iceward under valgrind's callgrind, on the native fast path and on the Python path, for:

* ``base``: ``--base-cmd``, an iceward build to compare with (e.g. the commit before usage
  accounting and bandwidth limits were added: ``git archive COMMIT``, its extension compiled
  with this tree's flags, sysconfig's CFLAGS then ``-O2 -std=gnu11``: another ``-O`` level or a
  missing ``-DNDEBUG`` moves the count by more than what is measured here);
* ``iceward``: this tree, no limit (usage records every 60 s, as by default: none in the window);
* ``limited``: this tree with ``--limited-args`` (a ``--max-bps`` no flow reaches: every datagram
  pays the limiter, none is dropped);
* ``accounting``: this tree with ``--usage-interval 1``: a usage record per allocation every
  second. Its idle instructions per second, less ``iceward``'s, over the records it wrote, are
  the price of one usage record (read, batched, written).

Each server starts with instrumentation off (``--instr-atstart=no``); once ``--clients``
allocations with a channel to a local echo peer are set up, ``callgrind_control -i on`` starts
counting, ``--round-trips`` ChannelData round trips (client -> relay -> echo peer -> relay ->
client, one in flight per client) run, ``callgrind_control -i off`` stops it, and the dump's
instruction total is divided by the round trips ("Ir/rt"). The same server is then counted idle
for ``--idle`` seconds ("idle Ir/s": its once-a-second tick, usage intervals and their batch
writes); "Ir/rt traffic" is the loaded count less the idle rate over the loaded window: the
work per round trip itself. Under valgrind the window is long, so time-driven work weighs far
more per round trip than at a real server's rates: compare "traffic", and read "idle Ir/s"
as the price of the accounting itself. Instruction counts do not depend on what else the
machine does, unlike the CPU time ``relay_bench.py`` measures.
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
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from iceward.stun import constants as c
from iceward.stun.message import encode_message, parse_message
from relay_bench import HOST, PASSWORD, REALM, USER, BenchError, TurnClient

PORTS = {
    "base": (60000, 60999),
    "iceward": (61000, 61999),
    "limited": (62000, 62999),
    "accounting": (59000, 59999),
}


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
    """The instruction total of a callgrind dump (its ``totals:`` line; 0 for an empty one)."""
    for line in out.read_text().splitlines():
        match = re.match(r"totals:\s+(\d+)", line)
        if match:
            return int(match[1])
    return 0


def measure(
    name: str, command: list[str], extra: list[str], path: str, args: argparse.Namespace, tmp: Path
) -> Result:
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
        control(proc.pid, "-i", "on")
        started = time.monotonic()
        round_trips(clients, echo, args.round_trips, args.payload)
        busy = time.monotonic() - started
        control(proc.pid, "-i", "off")
        control(proc.pid, "--dump")
        loaded = collected(out)
        control(proc.pid, "-i", "on")
        time.sleep(args.idle)  # the same server, idle: its timers, ticks, usage intervals
        control(proc.pid, "-i", "off")
        control(proc.pid, "--dump")
        idle = collected(out) - loaded
        for client in clients:
            client.sock.close()
        echo.close()
    finally:
        proc.terminate()
        proc.wait(120)
    if loaded == 0 or idle == 0:
        raise BenchError(f"callgrind counted nothing for {name} ({path})")
    idle_rate = idle / args.idle
    return Result(loaded / args.round_trips, (loaded - idle_rate * busy) / args.round_trips,
                  idle_rate, busy)  # fmt: skip


def control(pid: int, *command: str) -> None:
    subprocess.run(["callgrind_control", *command, str(pid)], check=True, capture_output=True)


def collected(out: Path) -> int:
    """Instructions in every dump of ``out`` so far."""
    return sum(instructions(p) for p in out.parent.glob(f"{out.name}*"))


@dataclass(frozen=True)
class Result:
    #: Instructions per round trip in the loaded window, all in.
    per_rt: float
    #: The same less what the idle server spends over as long (the per-datagram work).
    per_rt_traffic: float
    #: Instructions per second of the idle server.
    idle_per_s: float
    #: Seconds the loaded window lasted (under valgrind).
    seconds: float


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--base-cmd", help="command running the iceward build to compare with")
    p.add_argument("--iceward-cmd", help="command that runs this iceward [this Python -m iceward]")
    p.add_argument(
        "--limited-args", default="--max-bps 1000000000",
        help="flags of 'limited' [--max-bps 1000000000]",
    )  # fmt: skip
    p.add_argument("--paths", default="native,python", help="relay paths [native,python]")
    p.add_argument("--clients", type=int, default=4, help="allocations [4]")
    p.add_argument("--round-trips", type=int, default=20000, help="measured round trips [20000]")
    p.add_argument("--payload", type=int, default=100, help="payload bytes [100]")
    p.add_argument("--idle", type=float, default=10.0, help="seconds measured idle [10]")
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
    variants.append(("accounting", own, ["--usage-interval", "1"]))
    with tempfile.TemporaryDirectory(prefix="usage-cost-") as tmp:
        print(
            f"instructions per round trip (callgrind), {args.round_trips} round trips of "
            f"{args.payload} B over {args.clients} allocations"
        )
        print(
            f"{'path':<8}{'server':<11}{'Ir/rt':>10}{'Ir/rt traffic':>15}{'idle Ir/s':>13}"
            f"{'window s':>10}"
        )
        for path in [x.strip() for x in args.paths.split(",") if x.strip()]:
            results: dict[str, Result] = {}
            for name, command, extra in variants:
                r = results[name] = measure(name, command, extra, path, args, Path(tmp))
                print(
                    f"{path:<8}{name:<11}{r.per_rt:>10,.0f}{r.per_rt_traffic:>15,.0f}"
                    f"{r.idle_per_s:>13,.0f}{r.seconds:>10.1f}",
                    flush=True,
                )
            extra = results["accounting"].idle_per_s - results["iceward"].idle_per_s
            print(
                f"{path:<8}one usage record: {extra / args.clients:,.0f} instructions "
                f"({args.clients} records a second)"
            )
            pairs = [("limited", "iceward")]
            if "base" in results:
                pairs = [("iceward", "base"), ("limited", "base"), *pairs]
            for a, b in pairs:
                ra, rb = results[a], results[b]
                print(
                    f"{path:<8}{a}/{b}: {ra.per_rt_traffic / rb.per_rt_traffic:.4f} per round "
                    f"trip of traffic, {ra.per_rt / rb.per_rt:.4f} all in"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
