"""STUN Binding and the TURN control plane, iceward against coturn, one core each:
``python bench/control_bench.py --suite binding|allocate|all``

What it measures, per server, side by side in one run:

* ``binding``: STUN Binding requests answered per second and the server's CPU time per request.
  The load is ``bench/loadgen.c`` (built here with gcc, as relay_bench.py does) with every client
  in its STUN mode: ``--clients`` UDP sockets each keep ``--window`` Binding requests (no
  attributes) in flight, replacing each as its answer comes back, busy-polling on its own CPU.
* ``allocate``: authenticated allocation cycles per second and the CPU time per cycle, driven by
  this process (Python, iceward's own codec) over ``--clients`` UDP sockets, each with one
  transaction in flight:

      alloc:     Allocate -> 401 -> signed Allocate (LIFETIME) -> Refresh(LIFETIME 0)
      alloc+pc:  Allocate -> 401 -> signed Allocate -> CreatePermission -> ChannelBind
                 -> Refresh(0)

  The difference of the two rows is what a CreatePermission and a ChannelBind cost. The client
  busy-polls, as loadgen.c does, so the servers never pay for waking it. The client is Python,
  so it may be the bottleneck: "client busy" near 100% with "server core" well under 100% says
  so, and then the CPU time per cycle is the figure that counts, not the rate.

``--servers iceward,base,coturn --base-cmd CMD`` adds ``base``, another iceward build (e.g. the
commit before a change, run as ``env PYTHONPATH=OLD/src .venv/bin/python -m iceward``), measured
in the same rounds; the table then also prints iceward/base.

``--live N`` holds N allocations, each with a channel, open on each server for the whole run, so
the cycles run beside them as on a busy server (what a server does per allocation that grows
with the allocations it already holds shows there).

How: both servers are started by relay_bench.py's helpers (iceward ``serve --workers 1`` at log
level info, coturn ``turnserver`` with one relay thread, both pinned to ``--server-cpu``; the load
on ``--client-cpu``) and stay up the whole run; the measurements alternate between them, round by
round, so a disturbance on this shared machine hits both alike, and medians over ``--rounds`` are
shown. CPU time is the server processes' utime+stime from /proc/PID/stat over the measured
window (softirq work done in their context included), which stays meaningful when the machine
is busy; the rates are wall-clock and are not. The ratios iceward/coturn are printed: a rate
ratio above 1 and a CPU ratio below 1 mean iceward is ahead.

Everything stays on 127.0.0.1; the servers are stopped at exit, on Ctrl-C and on SIGTERM.
Example: ``python bench/control_bench.py --suite all --rounds 3``.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import relay_bench
from iceward.stun import constants as c
from iceward.stun.attributes import (
    encode_channel_number,
    encode_one_byte,
    encode_u32,
    encode_xor_address,
)
from iceward.stun.integrity import long_term_key
from iceward.stun.message import StunError, encode_message, parse_message
from relay_bench import (
    CLK_TCK,
    HOST,
    PASSWORD,
    REALM,
    USER,
    BenchError,
    Server,
    TurnClient,
    _proc_times,
    build_loadgen,
    drain,
    make_coturn,
    make_iceward,
    run_loadgen,
)

ALLOC_LIFETIME = 600
#: Wider relay ranges than relay_bench.py's (a thousand ports each), below Linux's ephemeral
#: range: coturn keeps a released relay port bound for a while, and thousands of allocations a
#: second would exhaust a thousand ports.
RELAY_PORTS = {"iceward": (10000, 19999), "coturn": (20000, 29999), "base": (30000, 32767)}
PEER = (HOST, 9)  # CreatePermission / ChannelBind name it; nothing is ever sent to it
RETRANSMIT = 0.5  # seconds before a request is sent again


# --------------------------------------------------------------------------------------------
# Allocation cycles


class Cycler:
    """One UDP socket running allocation cycles, one transaction in flight."""

    def __init__(self, server: tuple[str, int], full: bool, index: int) -> None:
        self.server = server
        # One source IP each (127.0.1.x): servers rate-limit 401 challenges per source IP.
        self.source = f"127.0.1.{1 + index % 250}"
        self.sock = self._socket()
        #: Set when a cycle ended and a new socket took the old one's place.
        self.renewed = False
        self.steps = ["401", "allocate", "permission", "channel", "refresh"]
        if not full:
            self.steps = ["401", "allocate", "refresh"]
        self.step = 0
        self.key = long_term_key(USER, REALM, PASSWORD)
        self.nonce: bytes | None = None
        self.channel = 0x4000 + index % 0x4000
        self.txid = b""
        self.data = b""
        self.sent_at = 0.0
        self.cycles = self.retransmits = self.errors = 0

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.source, 0))
        sock.connect(self.server)
        sock.setblocking(False)
        return sock

    def _auth(self) -> list[tuple[int, bytes]]:
        assert self.nonce is not None
        return [(c.USERNAME, USER.encode()), (c.REALM, REALM.encode()), (c.NONCE, self.nonce)]

    def send(self, now: float) -> None:
        """The current step's request, with a fresh transaction id."""
        name = self.steps[self.step]
        txid = os.urandom(12)
        transport = (c.REQUESTED_TRANSPORT, encode_one_byte(c.TRANSPORT_UDP))
        if name == "401":
            data = encode_message(c.ALLOCATE, c.REQUEST, txid, [transport])
        else:
            if name == "allocate":
                method, attrs = c.ALLOCATE, [transport, (c.LIFETIME, encode_u32(ALLOC_LIFETIME))]
            elif name == "permission":
                attrs = [(c.XOR_PEER_ADDRESS, encode_xor_address(PEER, txid))]
                method = c.CREATE_PERMISSION
            elif name == "channel":
                method, attrs = (
                    c.CHANNEL_BIND,
                    [
                        (c.CHANNEL_NUMBER, encode_channel_number(self.channel)),
                        (c.XOR_PEER_ADDRESS, encode_xor_address(PEER, txid)),
                    ],
                )
            else:
                method, attrs = c.REFRESH, [(c.LIFETIME, encode_u32(0))]
            data = encode_message(
                method, c.REQUEST, txid, attrs + self._auth(), integrity_key=self.key
            )
        self.txid, self.data, self.sent_at = txid, data, now
        self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError:
            pass  # the retransmission timer sends it again

    def retransmit(self, now: float) -> None:
        if now - self.sent_at >= RETRANSMIT:
            self.retransmits += 1
            self.sent_at = now
            self._write(self.data)

    def receive(self, now: float) -> None:
        while True:
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                return
            if len(data) < 20 or data[8:20] != self.txid:
                continue  # a late answer to a retransmitted request
            self._answer(data, now)

    def _answer(self, data: bytes, now: float) -> None:
        name = self.steps[self.step]
        success = (data[0] & 0x01) == 0x01 and (data[1] & 0x10) == 0
        if name == "401" or not success:
            try:
                msg = parse_message(data)
            except StunError:
                self.errors += 1
                return self.send(now)
            nonce = msg.get(c.NONCE)
            code = msg.get(c.ERROR_CODE)
            status = (code[2] & 0x07) * 100 + code[3] if code and len(code) >= 4 else 0
            if status in (401, 438) and nonce is not None:
                self.nonce = nonce
            if name == "401" and status == 401:
                self.step = 1
            elif status != 438:  # 438: the same request again with the new nonce
                self.errors += 1
                # Start over, freeing whatever this 5-tuple may still hold.
                last = len(self.steps) - 1
                self.step = last if self.nonce is not None and self.step != last else 0
            return self.send(now)
        self.step += 1
        if self.step == len(self.steps):
            # Each allocation from a new client port, as new calls come: coturn keeps a
            # deleted allocation's 5-tuple for a while (437 to a new Allocate from it).
            self.step = 0
            self.cycles += 1
            self.sock.close()
            self.sock = self._socket()
            self.renewed = True
        self.send(now)


def server_pids(server: Server) -> list[int]:
    return [server.pid, *server.children()]


def server_jiffies(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += _proc_times(Path(f"/proc/{pid}/stat").read_text())
        except OSError:
            pass
    return total


def run_cycles(args: argparse.Namespace, server: Server, full: bool) -> dict[str, Any]:
    """Closed-loop allocation cycles for --warmup + --duration seconds; figures of the window."""
    cyclers = [Cycler(server.address, full, i) for i in range(args.clients)]
    poller = select.epoll()
    by_fd = {cy.sock.fileno(): cy for cy in cyclers}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    pids = server_pids(server)
    try:
        start = time.monotonic()
        for cy in cyclers:
            cy.send(start)
        measure_at, end = start + args.warmup, start + args.warmup + args.duration
        measuring = False
        base = (0, 0, 0, 0.0)  # cycles, server jiffies, own cpu, time
        next_scan = start + 0.1
        while True:
            now = time.monotonic()
            if not measuring and now >= measure_at:
                own = os.times()
                base = (
                    sum(cy.cycles for cy in cyclers),
                    server_jiffies(pids),
                    own.user + own.system,
                    now,
                )
                measuring = True
            elif measuring and now >= end:
                break
            for fd, _ in poller.poll(0):  # busy-polling: see the module's docstring
                cy = by_fd[fd]
                cy.receive(time.monotonic())
                if cy.renewed:  # the old socket left the epoll set as it closed
                    cy.renewed = False
                    by_fd[cy.sock.fileno()] = cy
                    poller.register(cy.sock.fileno(), select.EPOLLIN)
            if now >= next_scan:
                next_scan = now + 0.1
                for cy in cyclers:
                    cy.retransmit(now)
        own = os.times()
        cycles = sum(cy.cycles for cy in cyclers) - base[0]
        jiffies = server_jiffies(pids) - base[1]
        seconds = now - base[3]
        client_cpu = own.user + own.system - base[2]
        if server.proc is None or server.proc.poll() is not None:
            raise BenchError(f"{server.name} died during the run:\n{server.log_tail()}")
        return {
            "server": server.name,
            "workload": "alloc+pc" if full else "alloc",
            "seconds": seconds,
            "count": cycles,
            "per_s": cycles / seconds,
            "cpu_us": jiffies * 1e6 / CLK_TCK / cycles if cycles else float("nan"),
            "server_busy": jiffies / CLK_TCK / seconds,
            "client_busy": client_cpu / seconds,
            "retransmits": sum(cy.retransmits for cy in cyclers),
            "errors": sum(cy.errors for cy in cyclers),
        }
    finally:
        poller.close()
        for cy in cyclers:
            # Leave nothing allocated behind: one Refresh(0) each, unanswered or not.
            if cy.nonce is not None and cy.step not in (0,):
                cy.step = len(cy.steps) - 1
                cy.send(time.monotonic())
            cy.sock.close()


# --------------------------------------------------------------------------------------------
# Binding


def run_binding(
    args: argparse.Namespace, loadgen: Path, server: Server, echo: socket.socket
) -> dict[str, Any]:
    socks = []
    try:
        for _ in range(args.clients):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind((HOST, 0))
            s.connect(server.address)
            socks.append(s)
        raw = run_loadgen(args, loadgen, server, [(s.fileno(), 0) for s in socks], echo, 100)
    finally:
        for s in socks:
            drain(s)
            s.close()
    return {
        "server": server.name,
        "workload": "binding",
        "seconds": raw["seconds"],
        "count": raw["round_trips"],
        "per_s": raw["round_trips_per_s"],
        "cpu_us": raw["proc_cpu_us_per_rt"],
        "server_busy": raw["server_core_busy"],
        "client_busy": 1 - raw["generator_idle"],
        "retransmits": raw["lost"],
        "errors": raw["bad"],
    }


# --------------------------------------------------------------------------------------------
# Report


def summarize(results: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for workload in dict.fromkeys(r["workload"] for r in results):
        row: dict[str, Any] = {"workload": workload}
        for name in names:
            runs = [r for r in results if r["workload"] == workload and r["server"] == name]
            if runs:
                row[name] = {
                    key: statistics.median(r[key] for r in runs)
                    for key in ("per_s", "cpu_us", "server_busy", "client_busy")
                }
        if "iceward" in row and "base" in row:
            row["base_cpu_ratio"] = row["iceward"]["cpu_us"] / row["base"]["cpu_us"]
        if "iceward" in row and "coturn" in row:
            row["rate_ratio"] = row["iceward"]["per_s"] / row["coturn"]["per_s"]
            row["cpu_ratio"] = row["iceward"]["cpu_us"] / row["coturn"]["cpu_us"]
            # Requests (or cycles) per second of CPU: what one core would do if the server
            # had it all to itself; the goal's "per core".
            row["per_core_ratio"] = 1 / row["cpu_ratio"]
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], names: list[str]) -> None:
    print(f"{'workload':<10}{'server':<9}{'per s':>10}{'CPU us':>9}{'per CPU-s':>11}"
          f"{'srv core':>10}{'client':>8}")  # fmt: skip
    for row in rows:
        for name in names:
            m = row.get(name)
            if m is None:
                continue
            per_cpu_s = 1e6 / m["cpu_us"] if m["cpu_us"] else float("nan")
            print(
                f"{row['workload']:<10}{name:<9}{m['per_s']:>10,.0f}{m['cpu_us']:>9.1f}"
                f"{per_cpu_s:>11,.0f}{m['server_busy']:>10.0%}{m['client_busy']:>8.0%}"
            )
        if "rate_ratio" in row:
            print(
                f"{row['workload']:<10}{'ratio':<9}{row['rate_ratio']:>9.2f}x"
                f"{row['cpu_ratio']:>8.2f}x{row['per_core_ratio']:>10.2f}x"
                "   iceward/coturn (rate, CPU per request, requests per CPU-second)"
            )
        if "base_cpu_ratio" in row:
            print(
                f"{row['workload']:<10}{'ratio':<9}{'':>10}{row['base_cpu_ratio']:>8.2f}x"
                "   iceward/base (CPU per request)"
            )
        print()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--suite", choices=("binding", "allocate", "all"), default="all")
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per run [4]")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring [1]")
    p.add_argument("--clients", type=int, default=16, help="client sockets [16]")
    p.add_argument("--window", type=int, default=8, help="Binding requests in flight each [8]")
    p.add_argument("--rounds", type=int, default=3, help="runs per server and workload [3]")
    p.add_argument(
        "--live",
        type=int,
        default=0,
        help="allocations, each with a channel, held open on each server the whole run, so the "
        "cycles run beside them as on a busy server [0]",
    )
    p.add_argument(
        "--servers",
        default="iceward,coturn",
        help="which to run: iceward, base, coturn [iceward,coturn]",
    )
    p.add_argument("--base-cmd", help="command that runs the 'base' server's iceward build")
    p.add_argument("--server-cpu", type=int, default=1, help="CPU of the servers [1]")
    p.add_argument("--client-cpu", type=int, default=0, help="CPU of the clients [0]")
    p.add_argument("--nice", type=int, default=0, help="nice value of servers and clients [0]")
    p.add_argument("--iceward-cmd", help="command that runs iceward [.venv/bin/iceward]")
    p.add_argument(
        "--iceward-path",
        choices=("auto", "native", "python"),
        default="auto",
        help="native fast path when built (auto), or forced (python: ICEWARD_FASTPATH=0)",
    )
    p.add_argument("--json", action="store_true", help="print results as JSON")
    args = p.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not args.servers or any(s not in ("iceward", "base", "coturn") for s in args.servers):
        p.error("--servers: iceward, base and/or coturn")
    if "base" in args.servers and not args.base_cmd:
        p.error("--servers base needs --base-cmd")
    if not 1 <= args.clients <= 1000 or not 1 <= args.window <= 4096:
        p.error("--clients 1..1000, --window 1..4096")
    if not 0 <= args.live <= 9000:
        p.error("--live 0..9000")
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 60 or not 1 <= args.rounds <= 50:
        p.error("--duration 0..600 s, --warmup 0..60 s, --rounds 1..50")
    cpus = os.sched_getaffinity(0)
    if args.server_cpu == args.client_cpu or not {args.server_cpu, args.client_cpu} <= cpus:
        p.error(f"--server-cpu and --client-cpu must be two different CPUs of {sorted(cpus)}")
    # What relay_bench.py's helpers read.
    args.server_cpu_list = [args.server_cpu]
    args.workers = args.coturn_relay_threads = 1
    args.no_gso = args.sleep = False
    return args


def _on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    os.sched_setaffinity(0, {args.client_cpu})
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    tmp = Path(tempfile.mkdtemp(prefix="control-bench-"))
    servers: list[Server] = []
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    live: list[TurnClient] = []
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # loadgen wants one; unused here
    echo.bind((HOST, 0))
    relay_bench.ICEWARD_RELAY_PORTS = RELAY_PORTS["iceward"]
    relay_bench.COTURN_RELAY_PORTS = RELAY_PORTS["coturn"]
    # make_iceward reads its ports here (ICEWARD_RELAY_PORTS was read at import).
    relay_bench.VARIANT_PORTS.update(iceward=RELAY_PORTS["iceward"], base=RELAY_PORTS["base"])
    try:
        loadgen = build_loadgen(tmp)
        makers = {
            "iceward": make_iceward,
            "coturn": make_coturn,
            "base": lambda a, t: make_iceward(a, t, "base"),
        }
        for name in args.servers:
            server = makers[name](args, tmp)
            servers.append(server)
            server.start()
            log(f"# {server.name}: pid {server.pid}, CPUs {server.affinity()}{server.relay_path()}")
            for i in range(args.live):
                client = TurnClient(server.address, 0x4000 + i % 0x3FFF)
                live.append(client)
                client.allocate()
                client.bind(PEER)
            if args.live:
                log(f"#   {args.live} allocations with a channel each held open")
        workloads = []
        if args.suite in ("binding", "all"):
            workloads.append("binding")
        if args.suite in ("allocate", "all"):
            workloads += ["alloc", "alloc+pc"]
        results = []
        for rnd in range(args.rounds):
            for workload in workloads:
                for server in servers:
                    if workload == "binding":
                        r = run_binding(args, loadgen, server, echo)
                    else:
                        r = run_cycles(args, server, workload == "alloc+pc")
                    r["round"] = rnd
                    results.append(r)
                    log(
                        f"#   {server.name:<8} {workload:<9} {r['per_s']:>10,.0f}/s "
                        f"{r['cpu_us']:7.1f} us  server core {r['server_busy']:.0%}  client "
                        f"busy {r['client_busy']:.0%}  retransmits/lost {r['retransmits']}  "
                        f"errors {r['errors']}"
                    )
        names = [s.name for s in servers]
        rows = summarize(results, names)
        if args.json:
            print(json.dumps({"summary": rows, "runs": results}, indent=2))
        else:
            print()
            print_table(rows, names)
        return 0
    except BenchError as exc:
        print(f"control_bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("control_bench: interrupted", file=sys.stderr)
        return 130
    finally:
        for server in servers:
            server.stop()
        for client in live:
            client.sock.close()
        echo.close()


if __name__ == "__main__":
    sys.exit(main())
