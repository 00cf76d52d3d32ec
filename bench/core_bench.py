"""What the sans-IO TURN core costs per signed request, with no I/O at all:
``python bench/core_bench.py [--allocations 2000] [--repeat 5]``

control_bench.py measures a whole server (kernel, event loop, engine, relay sockets, log line,
usage record). This measures only ``TurnServer.handle_client`` on prepared requests, with a relay
allocator that hands out port numbers and opens nothing: the floor the Python control plane
cannot go below while the core is Python. For each of ``--allocations`` clients (one address
each, as on a busy server) it times, in this order:

    allocate     a signed Allocate (parse, nonce, key, MESSAGE-INTEGRITY, the allocation, reply)
    permission   CreatePermission for one peer
    channel      ChannelBind of 0x4000 to that peer
    refresh0     Refresh with LIFETIME 0 (the allocation ends)

and prints microseconds per request, the fastest of ``--repeat`` runs (each run on a new core,
requests encoded beforehand, the 401 each client needs for its nonce not timed), pinned to one
CPU (``--cpu``): a process moving between cores measured up to half as much again.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

from iceward.stun import attributes as A
from iceward.stun import constants as C
from iceward.stun.integrity import long_term_key
from iceward.stun.message import encode_message, parse_message
from iceward.turn.allocation import FiveTuple, Relay
from iceward.turn.auth import CredentialStore, NonceManager
from iceward.turn.policy import PeerPolicy
from iceward.turn.server import TurnConfig, TurnServer

REALM = "bench.example"
USER, PASSWORD = "bench", "bench-password"
SERVER = ("192.0.2.1", 3478)
PEER = ("198.51.100.7", 5000)
STEPS = ("allocate", "permission", "channel", "refresh0")


class PortNumbers:
    """The core's relay allocator, opening nothing: port numbers counting up."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._ports = itertools.count(1024)

    def families(self) -> frozenset[int]:
        return frozenset({C.FAMILY_IPV4})

    def allocate(
        self, family: int, *, even: bool = False, reserve_next: bool = False, tcp: bool = False
    ) -> tuple[Relay, bytes | None]:
        return Relay(next(self._ids), family, ("192.0.2.1", 1024 + next(self._ports) % 60000)), None

    def release(self, relay: Relay) -> None:
        pass


def new_core(allocations: int) -> TurnServer:
    store = CredentialStore(REALM)
    store.add_user(USER, PASSWORD)
    config = TurnConfig(realm=REALM, max_allocations=allocations + 1, max_challenges=1 << 30)
    policy = PeerPolicy()
    return TurnServer(config, store, NonceManager(os.urandom(32)), policy, PortNumbers())  # type: ignore[arg-type]


def requests(core: TurnServer, ft: FiveTuple, now: float) -> list[bytes]:
    """The client's four signed requests, after the 401 that gives it its nonce."""
    first = encode_message(
        C.ALLOCATE, C.REQUEST, os.urandom(12), [(C.REQUESTED_TRANSPORT, A.encode_one_byte(17))]
    )
    (challenge,) = core.handle_client(first, ft, now)
    nonce = parse_message(challenge.data).get(C.NONCE)  # type: ignore[union-attr]
    assert nonce is not None, "no 401"
    auth = [(C.USERNAME, USER.encode()), (C.REALM, REALM.encode()), (C.NONCE, nonce)]
    key = long_term_key(USER, REALM, PASSWORD)
    out = []
    for step in STEPS:
        txid = os.urandom(12)
        peer = (C.XOR_PEER_ADDRESS, A.encode_xor_address(PEER, txid))
        method, attrs = {
            "allocate": (
                C.ALLOCATE,
                [(C.REQUESTED_TRANSPORT, A.encode_one_byte(17)), (C.LIFETIME, A.encode_u32(600))],
            ),
            "permission": (C.CREATE_PERMISSION, [peer]),
            "channel": (
                C.CHANNEL_BIND,
                [(C.CHANNEL_NUMBER, A.encode_channel_number(0x4000)), peer],
            ),
            "refresh0": (C.REFRESH, [(C.LIFETIME, A.encode_u32(0))]),
        }[step]
        out.append(encode_message(method, C.REQUEST, txid, attrs + auth, integrity_key=key))
    return out


def run(allocations: int) -> dict[str, float]:
    """One run on a new core: microseconds per request of each step."""
    core, now = new_core(allocations), 1_000_000.0
    clients = [
        FiveTuple("udp", (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 40000), SERVER)
        for i in range(1, allocations + 1)
    ]
    prepared = [requests(core, ft, now) for ft in clients]
    spent: dict[str, float] = {}
    handle = core.handle_client
    for index, step in enumerate(STEPS):
        begin = time.perf_counter()
        for ft, data in zip(clients, prepared, strict=True):
            handle(data[index], ft, now)
        spent[step] = (time.perf_counter() - begin) * 1e6 / allocations
    errors = sum(v for k, v in core.counters.items() if k.startswith("error.") and k != "error.401")
    if errors:
        raise SystemExit(f"core_bench: {errors} requests were refused: {dict(core.counters)}")
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allocations", type=int, default=2000, help="clients per run [2000]")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the fastest counts [5]")
    cpus = sorted(os.sched_getaffinity(0))
    parser.add_argument("--cpu", type=int, default=cpus[-1], help=f"CPU to run on [{cpus[-1]}]")
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {args.cpu})
    runs = [run(args.allocations) for _ in range(args.repeat)]
    print(
        f"sans-IO core, {args.allocations} clients, fastest of {args.repeat} runs, CPU {args.cpu}"
    )
    for step in STEPS:
        print(f"  {step:<11} {min(r[step] for r in runs):6.1f} us per request")
    total = sum(min(r[s] for r in runs) for s in ("allocate", "refresh0"))
    print(f"  {'alloc cycle':<11} {total:6.1f} us (signed Allocate + Refresh(0), core only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
