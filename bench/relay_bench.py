"""TURN relay throughput, iceward against coturn, one core each: ``python bench/relay_bench.py``

What it measures: relayed round trips per second through a TURN server over UDP, and the CPU time
of the server's core per round trip. One round trip is

    client --ChannelData--> server --UDP--> echo peer --UDP--> server --ChannelData--> client

so the server receives and sends two datagrams per round trip (listener and relay socket).

How:

* iceward (``iceward serve --workers 1``: one process; its own default is one worker per core)
  and coturn (``turnserver``) both run on 127.0.0.1, each pinned to ``--server-cpu`` (default 1);
  coturn with ``--relay-threads=1`` (``--coturn-relay-threads``). ``--workers N`` changes that,
  see "Several workers" below.
  iceward runs its native relay fast path when built (the header shows which path it logged);
  ``--iceward-path python`` measures the pure-Python path (``ICEWARD_FASTPATH=0``).
  Both stay up the whole time and are measured one after the other, alternating, so a
  disturbance on the machine hits both alike (``--rounds`` repeats the set; medians are shown).
* Setup is done here with iceward's own STUN codec: ``--clients`` UDP sockets each make an
  Allocate (401, then again with USERNAME/REALM/NONCE/MESSAGE-INTEGRITY) and a ChannelBind to the
  echo peer's address. Before every measurement each client refreshes its channel and allocation.
* The load is driven by ``bench/loadgen.c``, compiled here with gcc into a temporary directory and
  pinned to ``--client-cpu`` (default 0). It inherits the client sockets and the echo peer's socket
  and runs a closed loop: every client keeps ``--window`` ChannelData messages of the payload size
  in flight, replacing each as it comes back; the echo peer (same process) sends each datagram back
  to the relayed address it came from. recvmmsg/sendmmsg batch both sides, datagrams to one
  address leave in one UDP GSO send (``--no-gso``), and the generator busy-polls (``--sleep``
  makes it sleep in epoll_wait), so the server never pays for waking it, as with remote clients.
  Over loopback the sender's core also does the receive path of what it sends, so the generator
  costs about as much per round trip as the server: "gen idle" (the share of its time spent in
  polls that found nothing to do) shows it was not the bottleneck; near 0% with the server core
  below 95% busy, a warning says the round trips/s understate the server.
* After ``--warmup`` seconds the generator samples /proc/stat (both CPUs) and
  /proc/SERVER_PID/stat, runs ``--duration`` seconds, samples again and reports. CPU time per
  round trip is the server core's busy time (user+nice+system+irq+softirq+steal, so the softirq
  of the datagrams the server sends is counted) over the round trips in the window; the server
  process's own utime+stime per round trip is shown beside it. A run in which other programs
  took more than 3% of the server core is reported as disturbed and left out of the medians
  when an undisturbed run of the same server and payload exists; on a shared machine, more
  ``--rounds`` or ``--nice -10`` (root) help.

TURN over TCP or TLS (``--client-transport tcp|tls``): each client is a TCP connection to the
server (its TLS port, with a self-signed certificate made here for both servers, for ``tls``)
relaying to the same UDP echo peer. The generator is then built with OpenSSL (``-lssl -lcrypto``:
``apt install libssl-dev``) and does the TLS handshake and the TURN set-up (Allocate, 401, signed
Allocate, ChannelBind) itself on each connection, since an allocation belongs to its connection;
every run opens new connections. ChannelData travels framed on the stream, padded to 4 bytes, a
client's window refill in one write (one TLS record); "gen idle" still tells whether the
generator was the bottleneck.

Several workers (``--workers N``, N > 1, a scaling note rather than a one-core comparison):

* iceward runs ``--workers N`` (a supervisor and N worker processes sharing the ports through an
  SO_REUSEPORT group whose BPF program steers each client by source address and port to one
  worker) and coturn ``--relay-threads=N`` (unless ``--coturn-relay-threads`` says otherwise).
  Both are pinned to ``--server-cpus`` (default: every CPU this process may use, "0,1" on a
  2-CPU machine); the affinity is set on the server's first process and its workers inherit it.
  The load generator stays on ``--client-cpu``, so on a 2-CPU machine it SHARES a CPU with the
  servers (the header says so). Busy-polling, it holds about that whole CPU, so the servers get
  about one CPU between them ("srv core" near 50%): round trips/s are then what N workers (or N
  relay threads) do on about one CPU next to the generator, not the server's capacity on N cores.
  What the run does show: that the clients and the work split over the workers, and what running
  N processes costs per round trip next to ``--workers 1``. ``--sleep`` lets the servers use the
  generator's idle time, but softirq work done while a CPU idles is then charged to no process and
  shows up as "other" (disturbed runs).
* CPU per round trip ("core us/rt") is the busy time summed over all of ``--server-cpus`` minus
  the load generator's own utime+stime (when its CPU is one of them), over the round trips;
  "srv core" is that time as a share of those CPUs. "proc us/rt" is the utime+stime of all the
  server's processes (iceward: supervisor and every worker, found through
  /proc/PID/task/*/children and sampled by the generator in the same window), and the line under
  it splits it by process, with each worker's client count. As with one CPU, what is left of the
  busy time after the generator and the server processes (other programs, kernel threads such as
  ksoftirqd) marks a run as disturbed above 3%.
* The clients' spread over the workers is computed with iceward's own hash
  (``iceward.net.steering.worker_for``) and checked against the relayed ports each client got
  (each worker owns a slice of the relay port range); it is printed at setup, and a worker that
  does under 5% of the server's work in a run is warned about.

Output: a table per payload with both servers and the ratios iceward/coturn of round trips/s and
of core CPU per round trip; ``--json`` prints the same as JSON (plus every run). Target: iceward
>= 0.8x coturn's round trips/s at every payload; ``--strict`` makes a miss exit with status 1.

Everything stays on 127.0.0.1; the servers are stopped at exit, on Ctrl-C and on SIGTERM. Needs 2
CPUs, gcc, and ``turnserver`` for the comparison (``--servers iceward`` runs iceward alone).

Examples: ``python bench/relay_bench.py --rounds 2`` (one core each);
``python bench/relay_bench.py --workers 2 --rounds 2`` (2 workers / 2 relay threads on CPUs 0,1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iceward.net.slot import relay_slice
from iceward.net.steering import worker_for
from iceward.stun import constants as c
from iceward.stun.attributes import (
    decode_error_code,
    decode_xor_address,
    encode_channel_number,
    encode_one_byte,
    encode_u32,
    encode_xor_address,
)
from iceward.stun.integrity import long_term_key
from iceward.stun.message import Message, StunError, encode_message, parse_message

HOST = "127.0.0.1"  # the only address this benchmark ever sends to
USER = PASSWORD = REALM = "bench"
TARGET = 0.8  # iceward round trips/s as a fraction of coturn's
HERE = Path(__file__).resolve().parent
LOADGEN_SOURCE = HERE / "loadgen.c"
TRANSPORTS = ("udp", "tcp", "tls")
ICEWARD_RELAY_PORTS = (62000, 62999)
COTURN_RELAY_PORTS = (63000, 63999)
CLK_TCK = os.sysconf("SC_CLK_TCK")
OTHER_LIMIT = 0.03  # share of the server core other programs may take in a run that counts


#: ``--servers``: coturn, iceward, and the iceward variants of :func:`make_iceward`.
SERVER_KINDS = ("iceward", "coturn", "limited", "base")


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Servers


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (the servers listen on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((HOST, 0))
            port: int = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((HOST, port))
                except OSError:
                    continue
            return port
    raise BenchError("no free port on 127.0.0.1")


def _pin(cpus: int | set[int], nice: int = 0) -> Callable[[], None]:
    cpu_set = {cpus} if isinstance(cpus, int) else set(cpus)

    def preexec() -> None:
        os.sched_setaffinity(0, cpu_set)
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)

    return preexec


class Server:
    def __init__(
        self, name: str, argv: list[str], port: int, log: Path, cpus: list[int], nice: int
    ) -> None:
        self.name = name
        self.nice = nice
        self.argv = argv
        self.port = port
        self.log = log
        self.cpus = cpus  # all its processes and threads (workers inherit the affinity)
        self.env: dict[str, str] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        #: Where TLS clients connect (``--client-transport tls``), else None.
        self.tls_port: int | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    def stream_address(self, transport: str) -> tuple[str, int]:
        """Where a TCP (the listening port) or TLS client connects."""
        if transport == "tls":
            assert self.tls_port is not None
            return (HOST, self.tls_port)
        return self.address

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C on the terminal is ours to pass on
                preexec_fn=_pin(set(self.cpus), self.nice),
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        # Any earlier probe's answer counts: with --workers N the supervisor binds the ports
        # before its workers run, so probes queue up and their answers come late, in order.
        sent: set[bytes] = set()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BenchError(f"{self.name} exited at start:\n{self.log_tail()}")
                txid = os.urandom(12)
                sent.add(txid)
                try:
                    s.sendto(encode_message(c.BINDING, c.REQUEST, txid), self.address)
                    data = s.recv(2048)
                    if parse_message(data).transaction_id in sent:
                        return
                except (OSError, StunError):
                    time.sleep(0.1)
        raise BenchError(f"{self.name} did not answer on {self.address}:\n{self.log_tail()}")

    def relay_path(self) -> str:
        """iceward's "relay path: ..." log line (native fast path or Python), for the header."""
        try:
            for line in self.log.read_text(errors="replace").splitlines():
                if "relay path: " in line:
                    return ", relay path " + line.split("relay path: ", 1)[1].strip()
        except OSError:
            pass
        return ""

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def affinity(self) -> str:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    def threads(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/task"))
        except OSError:
            return 0

    def worker_index(self) -> dict[int, int]:
        """pid -> worker index, from iceward's "worker I started (pid P, ..." log lines (the
        latest start of each index wins: a restarted worker has a new pid)."""
        found: dict[int, int] = {}
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return found
        for m in re.finditer(r"worker (\d+) started \(pid (\d+)", text):
            index, pid = int(m.group(1)), int(m.group(2))
            found = {p: i for p, i in found.items() if i != index}
            found[pid] = index
        return found

    def children(self) -> list[int]:
        """The server's child processes (iceward's workers), in worker order where known."""
        kids: list[int] = []
        try:
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                text = Path(f"/proc/{self.pid}/task/{tid}/children").read_text()
                kids += [int(x) for x in text.split()]
        except OSError:
            pass
        order = self.worker_index()
        return sorted(set(kids), key=lambda pid: (order.get(pid, len(order)), pid))

    def process_names(self, pids: list[int]) -> list[str]:
        """Labels for pids: "main" for the server process, "worker I" for a known worker."""
        order = self.worker_index()
        names = []
        for pid in pids:
            if pid == self.pid:
                names.append("supervisor" if order else "main")
            elif pid in order:
                names.append(f"worker {order[pid]}")
            else:
                names.append(f"pid {pid}")
        return names

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def iceward_command(args: argparse.Namespace) -> list[str]:
    if args.iceward_cmd:
        return shlex.split(args.iceward_cmd)
    venv = HERE.parent / ".venv" / "bin" / "iceward"
    if venv.exists():
        return [str(venv)]
    found = shutil.which("iceward")
    return [found] if found else [sys.executable, "-m", "iceward"]


#: iceward variants beside the plain one: their relay ports, command and extra flags.
VARIANT_PORTS = {"iceward": ICEWARD_RELAY_PORTS, "limited": (61000, 61999), "base": (60000, 60999)}


def wants_tls(args: argparse.Namespace) -> bool:
    """TLS clients: a TLS port and a certificate (other benches reusing the start-up helpers
    have no ``--client-transport``: UDP)."""
    return getattr(args, "client_transport", "udp") == "tls"


def make_iceward(args: argparse.Namespace, tmp: Path, name: str = "iceward") -> Server:
    """``iceward``; ``limited``: the same with ``--limited-args`` (usage accounting every
    second and a ``--max-bps`` no flow reaches: the limiter's full cost, no drop); ``base``:
    ``--base-cmd``, an iceward build to compare with (e.g. one without accounting)."""
    port = _free_port()
    low, high = VARIANT_PORTS[name]
    command = shlex.split(args.base_cmd) if name == "base" else iceward_command(args)
    argv = [
        *command,
        "serve",
        "--listen", HOST,
        "--port", str(port),
        "--relay-ip", HOST,
        "--relay-ports", f"{low}-{high}",
        "--user", f"{USER}:{PASSWORD}",
        "--realm", REALM,
        "--allow-peer", "127.0.0.0/8",
        "--data-dir", str(tmp / f"{name}-data"),
        "--http", "off",
        "--log-level", "info",  # control events only: says which relay path it runs
        "--workers", str(args.workers),  # its default is one per core
    ]  # fmt: skip
    tls_port = None
    if wants_tls(args):
        tls_port = _free_port()
        cert, key = make_certificate(tmp)
        argv += ["--tls-port", str(tls_port), "--cert", str(cert), "--key", str(key)]
    else:
        argv += ["--tls-port", "0"]
    if name == "limited":
        argv += shlex.split(args.limited_args)
    if name != "base" and not args.iceward_cmd and getattr(args, "source", None) is None:
        # Every client here is 127.0.0.1: a load, not one source to hold back (this tree's flag;
        # another build, --iceward-cmd or control_callgrind's --source, runs with its defaults).
        argv += ["--max-requests-per-source", "0"]
    server = Server(name, argv, port, tmp / f"{name}.log", args.server_cpu_list, args.nice)
    server.tls_port = tls_port
    if args.iceward_path != "auto":
        switch = "0" if args.iceward_path == "python" else "1"
        server.env = {**os.environ, "ICEWARD_FASTPATH": switch}
    return server


def make_coturn(args: argparse.Namespace, tmp: Path) -> Server:
    binary = shutil.which("turnserver")
    if binary is None:
        raise BenchError("turnserver (coturn) not found; install it or use --servers iceward")
    port = _free_port()
    low, high = COTURN_RELAY_PORTS
    argv = [
        binary,
        "-n",
        f"--listening-ip={HOST}",
        f"--relay-ip={HOST}",
        f"--listening-port={port}",
        f"--min-port={low}",
        f"--max-port={high}",
        f"--relay-threads={args.coturn_relay_threads}",
        "--lt-cred-mech",
        f"--user={USER}:{PASSWORD}",
        f"--realm={REALM}",
        "--no-dtls",
        "--no-cli",
        "--allow-loopback-peers",
        f"--pidfile={tmp / 'turnserver.pid'}",
        f"--userdb={tmp / 'turndb'}",
        f"--log-file={tmp / 'coturn-file.log'}",
        "--simple-log",
    ]
    tls_port = None
    if wants_tls(args):
        tls_port = _free_port()
        cert, key = make_certificate(tmp)
        argv += [f"--tls-listening-port={tls_port}", f"--cert={cert}", f"--pkey={key}"]
    else:
        argv += ["--no-tls"]
    server = Server("coturn", argv, port, tmp / "coturn.log", args.server_cpu_list, args.nice)
    server.tls_port = tls_port
    return server


def make_certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for localhost (made once, shared by both servers)."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    if not cert.exists():
        res = subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                "-keyout", str(key), "-out", str(cert),
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if res.returncode != 0:
            raise BenchError(f"openssl could not make a certificate:\n{res.stderr}")
    return cert, key


# --------------------------------------------------------------------------------------------
# TURN clients (setup only; the load itself is loadgen.c)


class TurnClient:
    """One UDP socket with one allocation and one channel bound to the echo peer."""

    def __init__(self, server: tuple[str, int], channel: int) -> None:
        self.server = server
        self.channel = channel
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.connect(server)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.realm: bytes | None = None
        self.nonce: bytes | None = None
        self.key: bytes | None = None
        self.relayed: tuple[str, int] | None = None

    def _drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(65536)
        except (BlockingIOError, ConnectionRefusedError):
            pass

    def _exchange(self, data: bytes, txid: bytes) -> Message:
        self._drain()
        self.sock.settimeout(0.5)
        for _ in range(6):
            try:
                self.sock.send(data)
            except ConnectionRefusedError:
                continue
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                try:
                    reply = self.sock.recv(65536)
                except TimeoutError:
                    break
                except ConnectionRefusedError:
                    continue
                if not reply or reply[0] >= 0x40:
                    continue  # a late ChannelData from the previous run
                try:
                    msg = parse_message(reply)
                except StunError:
                    continue
                if msg.transaction_id == txid:
                    return msg
        raise BenchError(f"no answer from {self.server}")

    def transact(
        self, method: int, attributes: Callable[[bytes], list[tuple[int, bytes]]]
    ) -> Message:
        name = c.METHOD_NAMES.get(method, hex(method))
        for _ in range(4):
            txid = os.urandom(12)
            attrs = attributes(txid)
            if self.nonce is not None:
                assert self.realm is not None
                attrs += [
                    (c.USERNAME, USER.encode()),
                    (c.REALM, self.realm),
                    (c.NONCE, self.nonce),
                ]
            data = encode_message(
                method, c.REQUEST, txid, attrs, integrity_key=self.key, fingerprint=True
            )
            msg = self._exchange(data, txid)
            if msg.cls == c.SUCCESS:
                return msg
            raw = msg.get(c.ERROR_CODE)
            code, reason = decode_error_code(raw) if raw else (0, "no ERROR-CODE")
            nonce = msg.get(c.NONCE)
            if code in (401, 438) and nonce is not None:
                self.nonce = nonce
                self.realm = msg.get(c.REALM) or self.realm or REALM.encode()
                self.key = long_term_key(USER, self.realm.decode(), PASSWORD)
                continue
            raise BenchError(f"{name} to {self.server}: {code} {reason}")
        raise BenchError(f"{name} to {self.server}: authentication keeps failing")

    def allocate(self) -> None:
        msg = self.transact(
            c.ALLOCATE,
            lambda _: [
                (c.REQUESTED_TRANSPORT, encode_one_byte(c.TRANSPORT_UDP)),
                (c.LIFETIME, encode_u32(3600)),
            ],
        )
        value = msg.get(c.XOR_RELAYED_ADDRESS)
        if value is None:
            raise BenchError("Allocate success without XOR-RELAYED-ADDRESS")
        self.relayed = decode_xor_address(value, msg.transaction_id)

    def bind(self, peer: tuple[str, int]) -> None:
        """ChannelBind (also refreshes the channel and the peer's permission)."""
        self.transact(
            c.CHANNEL_BIND,
            lambda txid: [
                (c.CHANNEL_NUMBER, encode_channel_number(self.channel)),
                (c.XOR_PEER_ADDRESS, encode_xor_address(peer, txid)),
            ],
        )

    def refresh(self) -> None:
        self.transact(c.REFRESH, lambda _: [(c.LIFETIME, encode_u32(3600))])


def client_spread(clients: list[TurnClient], workers: int) -> tuple[list[int], int]:
    """Clients per iceward worker as the steering program hashes their source address and port,
    and how many of them got a relayed port outside that worker's slice of the range (0 when
    the allocations really are where the hash says)."""
    slices = [relay_slice(ICEWARD_RELAY_PORTS, workers, i) for i in range(workers)]
    counts = [0] * workers
    misplaced = 0
    for client in clients:
        index = worker_for(client.sock.getsockname(), workers)
        counts[index] += 1
        assert client.relayed is not None
        low, high = slices[index]
        if not low <= client.relayed[1] <= high:
            misplaced += 1
    return counts, misplaced


# --------------------------------------------------------------------------------------------
# Load generator


def build_loadgen(tmp: Path, stream: bool = False) -> Path:
    """``stream``: with TURN over TCP/TLS (OpenSSL: ``apt install libssl-dev``)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise BenchError("gcc not found (needed to build bench/loadgen.c)")
    out = tmp / "loadgen"
    cmd = [gcc, "-O2", "-Wall", "-o", str(out), str(LOADGEN_SOURCE)]
    if stream:
        cmd[3:3] = ["-DLOADGEN_STREAM", "-Wno-deprecated-declarations"]
        cmd += ["-lssl", "-lcrypto"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        hint = " (TCP/TLS clients need OpenSSL: apt install libssl-dev)" if stream else ""
        raise BenchError(f"building loadgen failed{hint}:\n{res.stderr}")
    return out


def _cpu_line(line: str) -> tuple[int, int]:
    """(busy, total) jiffies from a /proc/stat cpuN line."""
    f = [int(x) for x in line.split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = f + [0] * (8 - len(f))
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def _cpu_fields(line: str) -> dict[str, int]:
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return dict(zip(names, (int(x) for x in line.split()[1:9]), strict=False))


def _proc_times(line: str) -> int:
    """utime + stime jiffies from a /proc/PID/stat line (all threads of the process)."""
    if not line:
        return 0
    rest = line.rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while True:
            sock.recv(65536)
    except (BlockingIOError, ConnectionRefusedError):
        pass


def run_once(
    args: argparse.Namespace,
    loadgen: Path,
    server: Server,
    clients: list[TurnClient],
    echo: socket.socket,
    payload: int,
) -> dict[str, Any]:
    if server.proc is None or server.proc.poll() is not None:
        raise BenchError(f"{server.name} is not running:\n{server.log_tail()}")
    peer = echo.getsockname()
    drain(echo)
    for client in clients:
        client.refresh()
        client.bind(peer)
    drain(echo)
    senders = [(cl.sock.fileno(), cl.channel) for cl in clients]
    return run_loadgen(args, loadgen, server, senders, echo, payload)


def run_stream_once(
    args: argparse.Namespace, loadgen: Path, server: Server, echo: socket.socket, payload: int
) -> dict[str, Any]:
    """One run with TURN over TCP/TLS: new connections, set up by the generator itself."""
    if server.proc is None or server.proc.poll() is not None:
        raise BenchError(f"{server.name} is not running:\n{server.log_tail()}")
    drain(echo)
    address = server.stream_address(args.client_transport)
    conns = []
    try:
        for _ in range(args.clients):
            conn = socket.create_connection(address, timeout=5)
            conns.append(conn)
        senders = [(conn.fileno(), 0x4000 + i) for i, conn in enumerate(conns)]
        peer_ip, peer_port = echo.getsockname()[:2]
        env = {
            "LOADGEN_STREAM": args.client_transport,
            "LOADGEN_TURN": f"{USER}:{REALM}:{PASSWORD}:{peer_ip}:{peer_port}",
        }
        return run_loadgen(args, loadgen, server, senders, echo, payload, env)
    finally:
        for conn in conns:
            conn.close()
        time.sleep(0.2)  # the server ends those allocations before the next run


def run_loadgen(
    args: argparse.Namespace,
    loadgen: Path,
    server: Server,
    senders: list[tuple[int, int]],
    echo: socket.socket,
    payload: int,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One measured window of ``loadgen`` over ``senders`` (fd, channel; channel 0: STUN
    Binding requests) and the figures per round trip, from its CPU samples."""
    fds = [fd for fd, _ in senders]
    pids = [server.pid, *server.children()]  # iceward --workers N: the supervisor, then workers
    argv = [
        str(loadgen),
        str(int(args.warmup * 1000)),
        str(int(args.duration * 1000)),
        str(args.window),
        str(payload),
        ",".join(map(str, pids)),
        ",".join(map(str, server.cpus)),
        str(args.client_cpu),
        str(echo.fileno()),
        *(f"{fd}:{channel}" for fd, channel in senders),
    ]
    proc = subprocess.Popen(
        argv,
        pass_fds=[*fds, echo.fileno()],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_pin(args.client_cpu, args.nice),
        env={
            **os.environ,
            "LOADGEN_NO_GSO": "1" if args.no_gso else "0",
            "LOADGEN_SLEEP": "1" if args.sleep else "0",
            **(extra_env or {}),
        },
    )
    try:
        out, err = proc.communicate(timeout=args.warmup + args.duration + 30)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        drain(echo)
    if proc.returncode != 0:
        raise BenchError(f"loadgen failed ({proc.returncode}): {err.strip()}")
    if server.proc is None or server.proc.poll() is not None:
        raise BenchError(f"{server.name} died during the run:\n{server.log_tail()}")
    raw = json.loads(out)
    seconds = raw["seconds"]
    rts = raw["round_trips"]
    # Summed over the server's CPUs (one unless --workers > 1).
    s_busy = s_total = 0
    sdelta: dict[str, int] = {}
    for before, after in zip(raw["server_cpus_before"], raw["server_cpus_after"], strict=True):
        b0, t0 = _cpu_line(before)
        b1, t1 = _cpu_line(after)
        s_busy += b1 - b0
        s_total += t1 - t0
        f0, f1 = _cpu_fields(before), _cpu_fields(after)
        for k in f0:
            sdelta[k] = sdelta.get(k, 0) + f1[k] - f0[k]
    s_total = max(s_total, 1)
    c_busy0, c_total0 = _cpu_line(raw["client_cpu_before"])
    c_busy1, c_total1 = _cpu_line(raw["client_cpu_after"])
    c_busy = c_busy1 - c_busy0
    c_total = max(c_total1 - c_total0, 1)
    by_pid = [
        _proc_times(a) - _proc_times(b)
        for b, a in zip(raw["server_procs_before"], raw["server_procs_after"], strict=True)
    ]
    proc_jiffies = sum(by_pid)
    self_jiffies = _proc_times(raw["self_proc_after"]) - _proc_times(raw["self_proc_before"])
    per_rt = 1e6 / CLK_TCK / rts if rts else float("nan")
    # When the generator runs on one of the server's CPUs (--workers > 1 on a small machine),
    # its own time is not the server's: it is taken out of the server CPUs' busy time. (Its
    # utime+stime includes the softirq work done in its context, as the server's does.)
    shared = args.client_cpu in server.cpus
    gen_on_server = self_jiffies if shared else 0
    core = max(s_busy - gen_on_server, 0)
    # Busy time on the server's CPUs not accounted to the server processes (whose time includes
    # the softirq work done in their context) nor to the generator: other programs, if any.
    other = core - proc_jiffies
    return {
        "server": server.name,
        "payload": payload,
        "seconds": seconds,
        "round_trips": rts,
        "round_trips_per_s": rts / seconds,
        "core_cpu_us_per_rt": core * per_rt,
        "proc_cpu_us_per_rt": proc_jiffies * per_rt,
        "softirq_us_per_rt": (sdelta["softirq"] + sdelta["irq"]) * per_rt,
        "server_core_busy": core / s_total,
        "server_core_other": max(other, 0) / s_total,
        "client_core_busy": c_busy / c_total,
        "loadgen_cpu_share": self_jiffies / c_total,
        "rtt_mean_us": raw["rtt_mean_us"],
        "rtt_p50_us": raw["rtt_p50_us"],
        "rtt_p99_us": raw["rtt_p99_us"],
        "lost": raw["lost"],
        "bad": raw["bad"],
        "echo_drops": raw["echo_drops"],
        "loadgen_gso": bool(raw["gso"]),
        "loadgen_spin": bool(raw["spin"]),
        # Share of the run the generator had nothing to do: polls that came back empty when it
        # busy-polls, else its core's idle share.
        "generator_idle": raw["idle"] if raw["spin"] else 1 - c_busy / c_total,
        "server_core_jiffies": sdelta,
        "server_cpus": list(server.cpus),
        "generator_shares_server_cpus": shared,
        "loadgen_cpu_us_per_rt": self_jiffies * per_rt,
        "server_pids": pids,
        "server_processes": server.process_names(pids),
        "proc_cpu_us_per_rt_by_process": [j * per_rt for j in by_pid],
    }


# --------------------------------------------------------------------------------------------
# Report


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def summarize(
    results: list[dict[str, Any]], servers: list[str], payloads: list[int]
) -> list[dict[str, Any]]:
    keys = (
        "round_trips_per_s",
        "core_cpu_us_per_rt",
        "proc_cpu_us_per_rt",
        "softirq_us_per_rt",
        "server_core_busy",
        "server_core_other",
        "client_core_busy",
        "generator_idle",
        "rtt_p50_us",
        "rtt_p99_us",
    )
    out = []
    for payload in payloads:
        row: dict[str, Any] = {"payload": payload}
        for name in servers:
            runs = [r for r in results if r["server"] == name and r["payload"] == payload]
            if runs:
                # Runs where other programs took part of the server core are left out when
                # there are undisturbed ones.
                clean = [r for r in runs if r["server_core_other"] <= OTHER_LIMIT]
                med = {k: _median(clean or runs, k) for k in keys}
                med["rounds"] = len(runs)
                med["clean_rounds"] = len(clean)
                med["lost"] = sum(r["lost"] for r in runs)
                # Several server processes (iceward --workers N): each one's median CPU per
                # round trip, when every run saw the same processes.
                used = clean or runs
                names = used[-1]["server_processes"]
                if len(names) > 1 and all(r["server_processes"] == names for r in used):
                    med["processes"] = names
                    med["proc_cpu_us_per_rt_by_process"] = [
                        float(
                            statistics.median(r["proc_cpu_us_per_rt_by_process"][i] for r in used)
                        )
                        for i in range(len(names))
                    ]
                row[name] = med
        for variant in ("limited", "base"):
            if variant in row and "iceward" in row:
                row[f"{variant}_cpu_per_rt_ratio"] = (
                    row[variant]["core_cpu_us_per_rt"] / row["iceward"]["core_cpu_us_per_rt"]
                )
        if "limited" in row and "base" in row:
            row["limited_base_cpu_per_rt_ratio"] = (
                row["limited"]["core_cpu_us_per_rt"] / row["base"]["core_cpu_us_per_rt"]
            )
        if "iceward" in row and "coturn" in row:
            ice, cot = row["iceward"], row["coturn"]
            row["throughput_ratio"] = ice["round_trips_per_s"] / cot["round_trips_per_s"]
            row["cpu_per_rt_ratio"] = ice["core_cpu_us_per_rt"] / cot["core_cpu_us_per_rt"]
            row["proc_cpu_per_rt_ratio"] = ice["proc_cpu_us_per_rt"] / cot["proc_cpu_us_per_rt"]
            row["meets_target"] = row["throughput_ratio"] >= TARGET
        out.append(row)
    return out


def warnings_for(results: list[dict[str, Any]]) -> list[str]:
    notes = []
    for r in results:
        tag = f"{r['server']} {r['payload']} B"
        single = len(r["server_cpus"]) == 1
        core = "server core" if single else "server CPUs"
        if r["server_core_busy"] < 0.95 and r["generator_idle"] < 0.05:
            was = "server core was" if single else "server CPUs were, for the server,"
            notes.append(
                f"{tag}: the load generator had no headroom and the {was} "
                f"{r['server_core_busy']:.0%} busy: round trips/s may understate this server; "
                "compare CPU per round trip"
            )
        if r["server_core_other"] > OTHER_LIMIT:
            notes.append(
                f"{tag}: {r['server_core_other']:.0%} of the {core} went to other "
                "processes: run disturbed, left out of the medians if an undisturbed one exists"
            )
        if len(r["server_pids"]) > 1:
            idle = [
                n
                for n, us in zip(
                    r["server_processes"], r["proc_cpu_us_per_rt_by_process"], strict=True
                )
                if n.startswith("worker") and us < 0.05 * r["proc_cpu_us_per_rt"]
            ]
            if idle:
                notes.append(f"{tag}: {', '.join(idle)} did under 5% of the server's work")
        if r["bad"]:
            notes.append(f"{tag}: {r['bad']} datagrams came back with a wrong header or size")
        if r["round_trips"] and r["lost"] > 0.01 * r["round_trips"]:
            notes.append(
                f"{tag}: {r['lost']} datagrams lost (a client silent for 200 ms refills its window)"
            )
    return notes


def print_table(
    summary: list[dict[str, Any]],
    servers: list[str],
    args: argparse.Namespace,
    spread: dict[str, list[int]] | None = None,
) -> None:
    if args.workers == 1:
        where = f"server on CPU {args.server_cpu}, load on CPU {args.client_cpu}"
    else:
        cpus = ",".join(map(str, args.server_cpu_list))
        where = (
            f"iceward --workers {args.workers} and coturn --relay-threads="
            f"{args.coturn_relay_threads} on CPUs {cpus}, load on CPU {args.client_cpu}"
        )
        if args.client_cpu in args.server_cpu_list:
            where += (
                f"\nSHARED CPU: the load generator runs on server CPU {args.client_cpu}"
                f"{'' if args.sleep else ' and busy-polls'}, so the servers get less than "
                f"{len(args.server_cpu_list)} CPUs; core us/rt = busy time of CPUs {cpus} minus "
                "the generator's own, srv core = that share of the CPUs"
            )
    print(
        f"relay round trips over {args.client_transport.upper()} ChannelData (UDP peer), "
        f"{args.clients} clients x {args.window} in "
        f"flight, {args.duration:g} s per run, median of {args.rounds} rounds (undisturbed ones "
        f"if any); {where}"
    )
    head = (
        f"{'server':<9}{'payload':>8}{'rt/s':>11}{'core us/rt':>12}{'proc us/rt':>12}"
        f"{'irq us/rt':>11}{'srv core':>10}{'gen idle':>10}{'rtt p50/p99 us':>17}{'runs':>7}"
    )
    print(head)
    print("-" * len(head))
    for row in summary:
        for name in servers:
            m = row.get(name)
            if m is None:
                continue
            rtt = f"{m['rtt_p50_us']:.0f}/{m['rtt_p99_us']:.0f}"
            runs = f"{m['clean_rounds'] or m['rounds']}/{m['rounds']}"
            print(
                f"{name:<9}{row['payload']:>8}{m['round_trips_per_s']:>11,.0f}"
                f"{m['core_cpu_us_per_rt']:>12.2f}{m['proc_cpu_us_per_rt']:>12.2f}"
                f"{m['softirq_us_per_rt']:>11.2f}{m['server_core_busy']:>10.0%}"
                f"{m['generator_idle']:>10.0%}{rtt:>17}{runs:>7}"
            )
            if "processes" in m:
                counts = (spread or {}).get(name)
                parts = []
                for label, us in zip(
                    m["processes"], m["proc_cpu_us_per_rt_by_process"], strict=True
                ):
                    part = f"{label} {us:.2f}"
                    if counts and label.startswith("worker "):
                        index = int(label.split()[1])
                        if index < len(counts):
                            part += f" ({counts[index]} clients)"
                    parts.append(part)
                print(f"{'':<9}{'':>8}  proc us/rt by process: {', '.join(parts)}")
        for key, what in (
            ("limited_cpu_per_rt_ratio", "limited/iceward"),
            ("base_cpu_per_rt_ratio", "base/iceward"),
            ("limited_base_cpu_per_rt_ratio", "limited/base"),
        ):
            if key in row:
                print(f"{'ratio':<9}{row['payload']:>8}{'':>11}{row[key]:>11.3f}x   {what}")
        if "throughput_ratio" in row:
            verdict = "meets" if row["meets_target"] else "BELOW"
            print(
                f"{'ratio':<9}{row['payload']:>8}{row['throughput_ratio']:>10.2f}x"
                f"{row['cpu_per_rt_ratio']:>11.2f}x{row['proc_cpu_per_rt_ratio']:>11.2f}x"
                f"   iceward/coturn; throughput {verdict} the {TARGET:g}x target"
            )
        print()


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run [5]")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring [1]")
    p.add_argument("--clients", type=int, default=16, help="allocations, one channel each [16]")
    p.add_argument("--window", type=int, default=8, help="datagrams in flight per client [8]")
    p.add_argument("--payloads", default="100,1200", help="payload sizes in bytes [100,1200]")
    p.add_argument("--rounds", type=int, default=3, help="runs per server and payload [3]")
    p.add_argument("--servers", default="iceward,coturn", help="which to run [iceward,coturn]")
    p.add_argument(
        "--client-transport",
        choices=TRANSPORTS,
        default="udp",
        help="how the clients reach the server: UDP, TCP, or TLS on its TLS port [udp]",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="iceward --workers N; above 1 the servers run on --server-cpus and coturn gets N "
        "relay threads [1]",
    )
    p.add_argument(
        "--server-cpu", type=int, default=1, help="CPU the servers are pinned to, one worker [1]"
    )
    p.add_argument(
        "--server-cpus",
        help="CPUs the servers are pinned to with --workers above 1, e.g. 0,1 (may include "
        "--client-cpu: the generator then shares a CPU with them) [all this process may use]",
    )
    p.add_argument("--client-cpu", type=int, default=0, help="CPU of the load generator [0]")
    p.add_argument("--coturn-relay-threads", type=int, default=None, help="coturn -m [--workers]")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="nice value for the servers and the load generator, e.g. -10 (root) to hold off "
        "other work on a shared machine [0]",
    )
    p.add_argument(
        "--no-gso", action="store_true", help="load generator: no UDP GSO (one send per datagram)"
    )
    p.add_argument(
        "--sleep",
        action="store_true",
        help="load generator sleeps in epoll_wait instead of busy-polling (the server then pays "
        "for waking it)",
    )
    p.add_argument("--iceward-cmd", help="command that runs iceward [.venv/bin/iceward]")
    p.add_argument(
        "--limited-args",
        default="--max-bps 1000000000 --usage-interval 1",
        help="extra flags of the 'limited' server [--max-bps 1000000000 --usage-interval 1]",
    )
    p.add_argument("--base-cmd", help="command that runs the 'base' server's iceward build")
    p.add_argument(
        "--iceward-path",
        choices=("auto", "native", "python"),
        default="auto",
        help="iceward's relay path: the native fast path when built (auto), or forced; python "
        "sets ICEWARD_FASTPATH=0 [auto]",
    )
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 when below the target")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (server logs)")
    args = p.parse_args(argv)
    try:
        args.payloads = [int(x) for x in args.payloads.split(",") if x.strip()]
    except ValueError:
        p.error("--payloads: comma-separated integers")
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not args.payloads or any(not 12 <= n <= 65000 for n in args.payloads):
        p.error("--payloads: sizes from 12 to 65000 bytes")
    if any(s not in SERVER_KINDS for s in args.servers) or not args.servers:
        p.error(f"--servers: some of {', '.join(SERVER_KINDS)}")
    if "base" in args.servers and not args.base_cmd:
        p.error("--servers base needs --base-cmd")
    if not 1 <= args.clients <= 1000 or not 1 <= args.window <= 4096:
        p.error("--clients 1..1000, --window 1..4096")
    if not -20 <= args.nice <= 19:
        p.error("--nice -20..19")
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 60 or not 1 <= args.rounds <= 50:
        p.error("--duration 0..600 s, --warmup 0..60 s, --rounds 1..50")
    if not 1 <= args.workers <= 64:
        p.error("--workers 1..64")
    if args.client_transport != "udp" and args.workers != 1:
        p.error("--client-transport tcp/tls: one worker (--workers 1)")
    if args.coturn_relay_threads is None:
        args.coturn_relay_threads = args.workers
    cpus = os.sched_getaffinity(0)
    if args.workers == 1:
        if args.server_cpu == args.client_cpu or not {args.server_cpu, args.client_cpu} <= cpus:
            p.error(f"--server-cpu and --client-cpu must be two different CPUs of {sorted(cpus)}")
        args.server_cpu_list = [args.server_cpu]
    else:
        try:
            chosen = (
                sorted({int(x) for x in args.server_cpus.split(",") if x.strip()})
                if args.server_cpus
                else sorted(cpus)
            )
        except ValueError:
            p.error("--server-cpus: comma-separated CPU numbers")
        if not chosen or not set(chosen) <= cpus or args.client_cpu not in cpus:
            p.error(f"--server-cpus and --client-cpu must be CPUs of {sorted(cpus)}")
        args.server_cpu_list = chosen
    return args


CONFIG_KEYS = (
    "duration", "warmup", "clients", "window", "payloads", "rounds",
    "servers", "server_cpu", "client_cpu", "coturn_relay_threads", "nice", "no_gso", "sleep",
    "iceward_path", "workers", "server_cpu_list", "limited_args", "base_cmd", "client_transport",
)  # fmt: skip


def _on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Both end the run through the cleanup below (explicit for SIGINT too: a shell starts
    # background jobs with it ignored).
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    os.sched_setaffinity(0, {args.client_cpu})  # keep this process off the server's core
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    servers: list[Server] = []
    sockets: list[socket.socket] = []
    clients_of: dict[str, list[TurnClient]] = {}
    spread: dict[str, list[int]] = {}
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    try:
        stream = args.client_transport != "udp"
        loadgen = build_loadgen(tmp, stream)
        for name in args.servers:
            server = make_coturn(args, tmp) if name == "coturn" else make_iceward(args, tmp, name)
            servers.append(server)
            server.start()
        echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sockets.append(echo)
        for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # *BUFFORCE
            try:
                echo.setsockopt(socket.SOL_SOCKET, force, 8 << 20)
            except OSError:
                echo.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
        echo.bind((HOST, 0))
        for server in servers if stream else ():
            log(
                f"# {server.name}: pid {server.pid}, CPUs {server.affinity()}, "
                f"{args.client_transport.upper()} clients to "
                f"{':'.join(map(str, server.stream_address(args.client_transport)))}"
                f"{server.relay_path()}"
            )
        for server in servers if not stream else ():
            clients = []
            for i in range(args.clients):
                client = TurnClient(server.address, 0x4000 + i)
                clients.append(client)
                sockets.append(client.sock)
                client.allocate()
                client.bind(echo.getsockname())
            clients_of[server.name] = clients
            log(
                f"# {server.name}: pid {server.pid}, CPUs {server.affinity()}, "
                f"{server.threads()} threads, {len(clients)} allocations on "
                f"{server.address[0]}:{server.address[1]}{server.relay_path()}"
            )
            if server.name != "coturn" and args.workers > 1:
                kids = server.children()
                if len(kids) != args.workers:
                    raise BenchError(
                        f"iceward has {len(kids)} worker processes, not {args.workers}:\n"
                        f"{server.log_tail()}"
                    )
                counts, misplaced = client_spread(clients, args.workers)
                spread[server.name] = counts
                names = server.process_names(kids)
                log(
                    "#   workers: "
                    + ", ".join(f"{n} pid {k}" for n, k in zip(names, kids, strict=True))
                    + f"; clients per worker (steering hash) {'/'.join(map(str, counts))}, "
                    + (
                        "relayed ports all in the hashed worker's slice"
                        if not misplaced
                        else f"{misplaced} relayed ports OUTSIDE the hashed worker's slice"
                    )
                )
                if 0 in counts:
                    log("#   warning: a worker got no clients; try more --clients")
        results = []
        for rnd in range(args.rounds):
            for payload in args.payloads:
                for server in servers:
                    if stream:
                        r = run_stream_once(args, loadgen, server, echo, payload)
                    else:
                        r = run_once(args, loadgen, server, clients_of[server.name], echo, payload)
                    r["round"] = rnd
                    results.append(r)
                    by_process = ""
                    if len(r["server_pids"]) > 1:
                        total = sum(r["proc_cpu_us_per_rt_by_process"]) or 1.0
                        by_process = (
                            "  ("
                            + ", ".join(
                                f"{n} {us / total:.0%}"
                                for n, us in zip(
                                    r["server_processes"],
                                    r["proc_cpu_us_per_rt_by_process"],
                                    strict=True,
                                )
                            )
                            + " of its CPU)"
                        )
                    log(
                        f"#   {server.name:<8} {payload:>5} B  {r['round_trips_per_s']:>10,.0f} "
                        f"rt/s  {r['core_cpu_us_per_rt']:6.2f} us/rt  server core "
                        f"{r['server_core_busy']:.0%}  generator idle {r['generator_idle']:.0%}"
                        f"{by_process}"
                    )
        names = [s.name for s in servers]
        summary = summarize(results, names, args.payloads)
        notes = warnings_for(results)
        below = any(row.get("meets_target") is False for row in summary)
        if args.json:
            out = {
                "config": {k: getattr(args, k) for k in CONFIG_KEYS},
                "machine": {
                    "python": platform.python_version(),
                    "kernel": platform.release(),
                    "cpus": os.cpu_count(),
                },
                "target_throughput_ratio": TARGET,
                "summary": summary,
                "clients_per_worker": spread,
                "runs": results,
                "warnings": notes,
            }
            print(json.dumps(out, indent=2))
        else:
            print()
            print_table(summary, names, args, spread)
            for note in notes:
                print(f"warning: {note}")
        return 1 if args.strict and below else 0
    except BenchError as exc:
        print(f"relay_bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relay_bench: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for s in sockets:
            s.close()
        for server in servers:
            server.stop()
        if args.keep_tmp:
            print(f"# logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
