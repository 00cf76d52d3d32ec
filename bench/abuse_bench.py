"""What abuse at the edge costs a legitimate client: half-open TLS and password guessing.

    .venv/bin/python bench/abuse_bench.py                    # 500 half-open, 5,000 guesses
    .venv/bin/python bench/abuse_bench.py --half-open 500 --guesses 20000 --samples 300

One ``iceward serve`` on loopback with its default limits (500 TCP/TLS connections per source,
60 failed authentications a minute per source, 1000 STUN messages a second per UDP source, the
connection timeout given here). Two parts:

* **Half-open TLS.** A legitimate client on 127.0.0.2 times ``--samples`` TLS allocations
  (connect, handshake, Allocate, 401, signed Allocate, close), first alone, then while an
  attacker on 127.0.0.3 holds ``--half-open`` connections that sent the first bytes of a
  ClientHello and nothing more, reopening each one the server closes. Reported: the client's
  latency p50/p99 and failures in both phases, the attacker's connections refused at accept,
  and the server's CPU over the phase.
* **Guessing.** The attacker sends signed Allocates with a wrong password over UDP as fast as one
  socket allows (at least ``--guesses``), while the client times UDP allocations. Reported: guesses
  answered and dropped unanswered, the server CPU per guess, the client's latency. Before the
  per-source request budget each guess was parsed and its HMAC checked (about 10 µs): the flood
  took a whole core, the kernel dropped datagrams for everyone (818k in 58 s) and 39 of the
  client's 200 allocations failed (p50 190 ms); with it, the guesses beyond the budget are
  dropped before parsing, the kernel drops none and the client sees 0 to 2 failures in 200,
  p50 0.5 ms (``--guesses 2000000 --half-open 10``, this 2-core machine, busy).
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.net.turnclient import read_stun

from edge_bench import start
from iceward.stun import constants as C
from iceward.stun.attributes import encode_one_byte
from iceward.stun.integrity import long_term_key
from iceward.stun.message import encode_message, parse_message

HOST = "127.0.0.1"
CLIENT = "127.0.0.2"
ATTACKER = "127.0.0.3"
PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(20)
USER, PASSWORD = "alice", "wonderland"
TRANSPORT = (C.REQUESTED_TRANSPORT, encode_one_byte(C.TRANSPORT_UDP))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def allocate(send: object, recv: object) -> None:
    """Allocate, read the 401's realm and nonce, Allocate signed, expect success."""
    assert callable(send) and callable(recv)
    send(encode_message(C.ALLOCATE, C.REQUEST, os.urandom(12), [TRANSPORT]))
    challenge = parse_message(recv())
    realm = challenge.get(C.REALM) or b""
    nonce = challenge.get(C.NONCE) or b""
    attrs = [TRANSPORT, (C.USERNAME, USER.encode()), (C.REALM, realm), (C.NONCE, nonce)]
    key = long_term_key(USER, realm.decode(), PASSWORD)
    send(encode_message(C.ALLOCATE, C.REQUEST, os.urandom(12), attrs, integrity_key=key))
    answer = parse_message(recv())
    if answer.cls != C.SUCCESS:
        raise RuntimeError(f"allocation answered {answer.get(C.ERROR_CODE)!r}")


def tls_allocation(port: int) -> None:
    ctx = ssl._create_unverified_context()
    raw = socket.create_connection((HOST, port), timeout=5, source_address=(CLIENT, 0))
    with ctx.wrap_socket(raw) as s:
        allocate(s.sendall, lambda: read_stun(s))


def udp_allocation(port: int, held: list[socket.socket]) -> None:
    """One allocation from a new socket, kept open in ``held``: a closed one's port could come
    back for a later sample and meet its own allocation (437)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.append(s)
    s.bind((CLIENT, 0))
    s.settimeout(1)  # a lost datagram counts as a failure, not a retransmission
    allocate(lambda d: s.sendto(d, (HOST, port)), lambda: s.recv(4096))


def timed(samples: int, once: object) -> tuple[list[float], int]:
    assert callable(once)
    times: list[float] = []
    failures = 0
    for _ in range(samples):
        begin = time.perf_counter()
        try:
            once()
        except (OSError, RuntimeError):
            failures += 1
            continue
        times.append((time.perf_counter() - begin) * 1000)
    return times, failures


def summary(times: list[float], failures: int) -> str:
    if not times:
        return f"all {failures} failed"
    p99 = sorted(times)[min(len(times) - 1, int(len(times) * 0.99))]
    return f"p50 {statistics.median(times):6.2f} ms, p99 {p99:6.2f} ms, {failures} failed"


class HalfOpen(threading.Thread):
    """Holds ``count`` half-open TLS connections from the attacker, reopening closed ones."""

    def __init__(self, port: int, count: int) -> None:
        super().__init__(daemon=True)
        self.port, self.count = port, count
        self.stop = threading.Event()
        self.opened = self.closed_by_server = self.refused = 0
        self.socks: set[socket.socket] = set()

    def open_one(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((ATTACKER, 0))
        s.setblocking(False)
        try:
            s.connect((HOST, self.port))
        except BlockingIOError:
            pass
        select.select([], [s], [], 2)
        try:
            s.send(PARTIAL_HELLO)
        except OSError:
            s.close()
            self.refused += 1
            return
        self.opened += 1
        self.socks.add(s)

    def run(self) -> None:
        while not self.stop.is_set():
            while len(self.socks) < self.count and not self.stop.is_set():
                self.open_one()
            readable, _, _ = select.select(list(self.socks), [], [], 0.2)
            for s in readable:
                try:
                    gone = s.recv(1024) == b""
                except OSError:
                    gone = True
                if gone:
                    self.socks.discard(s)
                    s.close()
                    self.closed_by_server += 1
        for s in self.socks:
            s.close()


def guess(port: int, stop: threading.Event, least: int) -> tuple[int, int, float]:
    """Wrong-password Allocates as fast as one socket sends, until ``stop`` is set and at least
    ``least`` were sent: (sent, answered, seconds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ATTACKER, 0))
        s.settimeout(2)
        s.sendto(encode_message(C.ALLOCATE, C.REQUEST, os.urandom(12), [TRANSPORT]), (HOST, port))
        challenge = parse_message(s.recv(4096))
        realm = challenge.get(C.REALM) or b""
        attrs = [TRANSPORT, (C.USERNAME, USER.encode()), (C.REALM, realm)]
        attrs.append((C.NONCE, challenge.get(C.NONCE) or b""))
        key = long_term_key(USER, realm.decode(), "not-the-password")
        s.setblocking(False)
        sent = answered = 0
        begin = time.perf_counter()
        while sent < least or not stop.is_set():
            msg = encode_message(C.ALLOCATE, C.REQUEST, os.urandom(12), attrs, integrity_key=key)
            try:
                s.sendto(msg, (HOST, port))
                sent += 1
            except BlockingIOError:
                pass
            if sent % 64 == 0:
                time.sleep(0)  # the kernel drops what the server cannot take
            try:
                while s.recv(4096):
                    answered += 1
            except BlockingIOError:
                pass
        seconds = time.perf_counter() - begin
        s.settimeout(0.5)
        try:
            while s.recv(4096):
                answered += 1
        except TimeoutError:
            pass
        return sent, answered, seconds


def udp_buffer_errors() -> int:
    """The kernel's count of UDP datagrams dropped for a full receive buffer (all sockets)."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()]
    names, values = [ln for ln in lines if ln[0] == "Udp:"][:2]
    return int(values[names.index("RcvbufErrors")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half-open", type=int, default=500, help="attacker's connections [500]")
    parser.add_argument("--guesses", type=int, default=5000, help="wrong passwords sent [5000]")
    parser.add_argument("--samples", type=int, default=200, help="client allocations timed [200]")
    parser.add_argument(
        "--connection-timeout", type=float, default=10.0, help="server's setting, seconds [10]"
    )
    args = parser.parse_args()
    flags = ("--connection-timeout", str(args.connection_timeout), "--user", f"{USER}:{PASSWORD}")
    with tempfile.TemporaryDirectory() as tmp:
        proc, ports = start(Path(tmp), 1, flags)
        try:
            print(f"half-open TLS: {args.half_open} connections held from {ATTACKER}")
            cpu = cpu_seconds(proc.pid)
            alone = timed(args.samples, lambda: tls_allocation(ports["tls"]))
            print(f"  client TLS allocation, alone:     {summary(*alone)}")
            print(f"  server CPU for that phase: {cpu_seconds(proc.pid) - cpu:.2f} s")
            attacker = HalfOpen(ports["tls"], args.half_open)
            attacker.start()
            while attacker.opened < args.half_open and attacker.is_alive():
                time.sleep(0.05)
            cpu = cpu_seconds(proc.pid)
            begin = time.perf_counter()
            held = timed(args.samples, lambda: tls_allocation(ports["tls"]))
            print(f"  client TLS allocation, under it:  {summary(*held)}")
            print(
                f"  server CPU for that phase: {cpu_seconds(proc.pid) - cpu:.2f} s over "
                f"{time.perf_counter() - begin:.2f} s"
            )
            if args.connection_timeout < 30:
                time.sleep(args.connection_timeout + 1.5)
            attacker.stop.set()
            attacker.join()
            print(
                f"  attacker: {attacker.opened} opened, {attacker.closed_by_server} closed by the "
                f"server, {attacker.refused} refused at accept"
            )

            print(f"guessing: at least {args.guesses} wrong passwords from {ATTACKER} over UDP")
            result: list[tuple[int, int, float]] = []
            cpu = cpu_seconds(proc.pid)
            overflows = udp_buffer_errors()
            stop = threading.Event()
            flood = threading.Thread(
                target=lambda: result.append(guess(ports["port"], stop, args.guesses))
            )
            flood.start()
            held: list[socket.socket] = []
            during = timed(args.samples, lambda: udp_allocation(ports["port"], held))
            for sock in held:
                sock.close()
            stop.set()
            flood.join()
            spent = cpu_seconds(proc.pid) - cpu
            sent, answered, seconds = result[0]
            print(f"  sent {sent} in {seconds:.2f} s ({sent / seconds:,.0f}/s)")
            print(f"  answered {answered}, dropped unanswered {sent - answered}")
            print(
                f"  server CPU {spent:.2f} s, {spent / sent * 1e6:.1f} µs per guess "
                "(the client's allocations included)"
            )
            print(f"  client UDP allocation meanwhile:  {summary(*during)}")
            print(
                "  datagrams the kernel dropped, receive buffers full: "
                f"{udp_buffer_errors() - overflows}"
            )
        finally:
            proc.terminate()
            proc.wait(15)


if __name__ == "__main__":
    sys.exit(main())
