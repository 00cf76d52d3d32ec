"""Instructions per allocation cycle of iceward alone, counted by callgrind:
``python bench/control_callgrind.py [--cycles 2000] [--full] [--python]``

CPU time on a shared machine moves with the neighbours; an instruction count does not. This
runs ``iceward serve`` (the same flags as control_bench.py) under ``valgrind --tool=callgrind``
with instrumentation off, drives ``--warmup`` cycles (caches, pools and code paths warm), turns
instrumentation on, drives ``--cycles`` cycles (control_bench.py's ``alloc`` cycle, or
``alloc+pc`` with ``--full``), turns it off and prints the instructions (Ir) per cycle. Kernel
work (syscalls) is not counted: compare builds with it, and CPU time with control_bench.py.
``--source OLD/src`` counts another build (the commit before a change) the same way.
``--out FILE`` keeps the callgrind profile (``callgrind_annotate FILE`` shows where they go).

Everything stays on 127.0.0.1; the server is stopped at exit.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import relay_bench
from control_bench import RELAY_PORTS, Cycler
from relay_bench import BenchError, make_iceward


def drive(server: tuple[str, int], cycles: int, clients: int, full: bool) -> None:
    """Run allocation cycles until ``cycles`` have completed (a minute at most)."""
    cyclers = [Cycler(server, full, i) for i in range(clients)]
    poller = select.epoll()
    by_fd = {cy.sock.fileno(): cy for cy in cyclers}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    deadline = time.monotonic() + 60 + cycles * 0.05
    try:
        for cy in cyclers:
            cy.send(time.monotonic())
        while sum(cy.cycles for cy in cyclers) < cycles:
            now = time.monotonic()
            if now > deadline:
                raise BenchError("cycles did not complete in time (server too slow or stuck)")
            for fd, _ in poller.poll(0.05):
                cy = by_fd[fd]
                cy.receive(time.monotonic())
                if cy.renewed:
                    cy.renewed = False
                    by_fd[cy.sock.fileno()] = cy
                    poller.register(cy.sock.fileno(), select.EPOLLIN)
            for cy in cyclers:
                cy.retransmit(now)
    finally:
        poller.close()
        for cy in cyclers:
            cy.sock.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cycles", type=int, default=2000, help="measured cycles [2000]")
    p.add_argument("--warmup", type=int, default=300, help="cycles before counting [300]")
    p.add_argument("--clients", type=int, default=4, help="client sockets [4]")
    p.add_argument("--full", action="store_true", help="alloc+pc: CreatePermission+ChannelBind")
    p.add_argument("--python", action="store_true", help="ICEWARD_FASTPATH=0")
    p.add_argument("--out", type=Path, help="keep the callgrind profile in this file")
    p.add_argument("--iceward-cmd", help="command that runs iceward [.venv/bin/iceward]")
    p.add_argument(
        "--source",
        type=Path,
        help="another build's src directory (PYTHONPATH), e.g. the commit before a change, "
        "extracted with git archive (its native extension built or copied in)",
    )
    args = p.parse_args(argv)
    if not 1 <= args.cycles <= 100_000 or not 0 <= args.warmup <= 100_000:
        p.error("--cycles 1..100000, --warmup 0..100000")
    if not 1 <= args.clients <= 100:
        p.error("--clients 1..100")
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            p.error(f"{tool} not found (Debian package valgrind)")
    tmp = Path(tempfile.mkdtemp(prefix="control-callgrind-"))
    out = args.out or tmp / "callgrind.out"
    # What make_iceward reads, as control_bench.py sets it.
    args.workers, args.server_cpu_list, args.nice = 1, sorted(os.sched_getaffinity(0)), 0
    args.iceward_path = "python" if args.python else "auto"
    relay_bench.VARIANT_PORTS["iceward"] = RELAY_PORTS["iceward"]
    server = make_iceward(args, tmp)
    if args.source is not None:  # not through env(1): valgrind must start Python itself
        server.env = {**(server.env or os.environ), "PYTHONPATH": str(args.source.resolve())}
        if not args.iceward_cmd:
            server.argv = [sys.executable, "-m", "iceward", *server.argv[1:]]
    server.argv = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        *server.argv,
    ]  # fmt: skip
    try:
        server.start(timeout=180)
        drive(server.address, args.warmup, args.clients, args.full)
        subprocess.run(["callgrind_control", "-i", "on", str(server.pid)], check=True,
                       capture_output=True)  # fmt: skip
        drive(server.address, args.cycles, args.clients, args.full)
        for option in ("-i", "off"), ("-d",):  # instrumentation off, then dump what it counted
            subprocess.run(["callgrind_control", *option, str(server.pid)], check=True,
                           capture_output=True)  # fmt: skip
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"control_callgrind: {exc}", file=sys.stderr)
        return 2
    finally:
        server.stop()
    # The dump is FILE.1 (or more if anything else dumped); the exit dump counted nothing.
    total = 0
    for dump in out.parent.glob(out.name + "*"):
        found = re.search(r"^totals: (\d+)", dump.read_text(errors="replace"), re.M)
        total += int(found.group(1)) if found else 0
    if not total:
        print(f"control_callgrind: no counts in {out}*", file=sys.stderr)
        return 2
    workload = "alloc+pc" if args.full else "alloc"
    path = "python" if args.python else "auto"
    print(f"{workload} ({path} path): {total / args.cycles:,.0f} instructions per cycle "
          f"({total:,} over {args.cycles} cycles)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
