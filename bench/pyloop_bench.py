"""Instructions per round trip of the pure-Python relay loops, counted by callgrind.

Wall-clock rates on a shared machine move by tens of percent; callgrind's instruction count for
the same code and input does not. This drives one allocation's links in-process (a client and a
peer on loopback, ChannelData one way and raw datagrams the other, both through the forwarding
loops of ``iceward.net.udp`` and ``iceward.net.relay``) under ``valgrind --tool=callgrind``, once
with no traffic and once with ``--round-trips``, and prints the difference per round trip.

    .venv/bin/python bench/pyloop_bench.py                      # this checkout
    .venv/bin/python bench/pyloop_bench.py --src /tmp/old/src   # another one, side by side

Each ``--src`` is a ``src`` directory put first on PYTHONPATH (copy the native extension there
too if it is built; the loops run with ICEWARD_FASTPATH=0 either way).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"


def drive(round_trips: int, size: int) -> None:
    """The measured program: ``round_trips`` datagrams each way through one channel's links."""
    from iceward.net.relay import PeerEntry, UdpRelayAllocator
    from iceward.net.udp import ClientEntry, UdpListener
    from iceward.turn.allocation import TrafficCounters

    loop = asyncio.new_event_loop()
    misses: list[object] = []
    listener = UdpListener.bind(HOST, 0, loop, lambda *a: misses.append(a))
    allocator = UdpRelayAllocator([HOST], (21000, 21999), loop, lambda *a: misses.append(a))
    handle, _ = allocator.allocate(1)
    # A Relay id (the allocator keeps the socket) or, in older trees, the socket itself.
    relay = allocator.active[handle.id] if isinstance(allocator.active, dict) else handle

    def udp() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        s.setblocking(False)
        return s

    client, peer = udp(), udp()
    caddr, paddr = client.getsockname(), peer.getsockname()
    counters = TrafficCounters()
    relay.channels[paddr] = PeerEntry(listener.link(caddr), None, 0x4001, counters, False)
    listener.channels[(caddr, 0x4001)] = ClientEntry(relay.link(paddr), None, counters)
    to_relay, to_listener = relay.sock.getsockname(), listener.sock.getsockname()
    payload = b"x" * size
    frame = struct.pack("!HH", 0x4001, size) + payload

    async def run() -> None:
        sent = 0
        while sent < round_trips:
            for _ in range(32):
                peer.sendto(payload, to_relay)
                client.sendto(frame, to_listener)
            sent += 32
            await asyncio.sleep(0)
            for s in (client, peer):
                while True:
                    try:
                        s.recv(2048)
                    except BlockingIOError:
                        break
        for _ in range(50):
            await asyncio.sleep(0.001)

    loop.run_until_complete(run())
    if round_trips and (counters.packets_to_client < round_trips or misses):
        raise SystemExit(f"relayed {counters.packets_to_client} of {round_trips}, {misses}")


def instructions(src: Path | None, round_trips: int, size: int, tmp: Path) -> int:
    env = dict(os.environ, ICEWARD_FASTPATH="0")
    if src is not None:
        env["PYTHONPATH"] = str(src)
    out = tmp / f"cg.{round_trips}"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(Path(__file__).resolve()),
        "--drive",
        str(round_trips),
        "--size",
        str(size),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"callgrind run failed ({src or 'this checkout'}): {done.stderr[-500:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--src", action="append", type=Path, help="a src directory to measure")
    p.add_argument("--round-trips", type=int, default=20000, help="[20000]")
    p.add_argument("--size", type=int, default=100, help="payload bytes [100]")
    p.add_argument("--drive", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.drive is not None:
        drive(args.drive, args.size)
        return 0
    if shutil.which("valgrind") is None:
        print("pyloop_bench: valgrind is not installed (apt install valgrind)", file=sys.stderr)
        return 2
    sources: list[Path | None] = list(args.src) if args.src else [None]
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources:
            idle = instructions(src, 0, args.size, Path(tmp))
            busy = instructions(src, args.round_trips, args.size, Path(tmp))
            per = (busy - idle) / args.round_trips
            print(f"{src or 'this checkout'}: {per:,.0f} instructions a round trip ({args.size} B)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
