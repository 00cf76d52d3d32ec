"""Bounded soak of ``iceward serve`` under steady relaying, churn and hostile traffic:
``python bench/soak.py [--duration 600] [--allocations 1000] [--json out.json]``

Not a unit test: it runs for ``--duration`` seconds (default 10 minutes) after its setup, samples
the server every ``--interval`` seconds and fails when the server grows or breaks.

What runs, all of it over loopback (server, relays and peers on 127.0.0.1 and ::1):

* The server: ``iceward serve --workers 1`` started here, on a free port of 127.0.0.1, relays on
  127.0.0.1 and ::1 from ports 20000-29999 (below the ephemeral range), peers 127.0.0.0/8 and
  ::1 allowed, one static user, a temporary data directory, no HTTP API, no TLS port. It is
  pinned to ``--server-cpu`` and this process to ``--client-cpu`` (when both exist).
  ``--server-args "..."`` appends flags (e.g. ``--max-auth-failures 30``); ``--iceward-cmd``
  runs another build (an older commit, to see the soak catch what it fixed).
* Steady load: ``--allocations`` long-lived UDP allocations, each with a channel to one of a few
  UDP echo peers, refreshed (Refresh and ChannelBind) every ``--refresh-every`` seconds. A relay
  loop sends ``--rate`` ChannelData round trips per second over them in turn; each carries the
  second it was sent in, so lost packets are counted per second once ``LOSS_GRACE`` has passed.
* Churn: ``--churn-rate`` per second, each from a fresh client port: Allocate (401, then signed),
  ChannelBind, one ChannelData, Refresh with LIFETIME 0.
* Hostile traffic, each bounded:
  - dual-family (``--dual-rate`` per second): Allocate with ADDITIONAL-ADDRESS-FAMILY IPv6,
    ChannelBind to an IPv6 peer and one round trip through the IPv6 relay, Refresh with
    REQUESTED-ADDRESS-FAMILY IPv6 and LIFETIME 0, ChannelData on that channel again, then a
    Refresh that must still be answered, and a delete;
  - idle TCP connections (``--idle-tcp`` open at a time, half of them silent, half after half
    a STUN frame), each held up to ``--idle-hold`` seconds: reported is how many the server
    closed, and after how long;
  - wrong-password Allocates (``--bad-auth`` in all, default 5,000, from one source address in
    bursts of ``--bad-auth-burst``): answered and dropped are counted; drops are the server's
    authentication rate limit at work, not a failure;
  - malformed UDP datagrams (``--junk-rate`` per second) to the listener and to relayed
    addresses.

  The steady clients use source addresses 127.0.1.1, 127.0.1.2, ... (100 clients each, as from
  different homes), churn and dual-family 127.0.2.x, the hostile sources 127.0.3.x: the
  server's per-source limits then hit the attackers, not everybody. All are loopback.

Every ``--interval`` seconds one line: the server's RSS (VmRSS of its processes) and open fds,
its CPU, this generator's, and "other" (what the rest of the machine used, in CPUs), round
trips/s, lost packets (in the interval, and the share so far), the churn and hostile counters,
and "lag" (the worst lateness of this generator's event loop). Losses in an interval with a high
"other" or "lag" point at the machine rather than the server.
At the end a summary; the exit status is 1 when any of these holds:

* RSS grew more than ``--max-rss-growth-mb`` (default 50) between the first sample after
  ``--warmup`` and the last one;
* open fds grew more than ``--max-fd-growth`` (default 200; the idle TCP pool moves them by up to
  ``--idle-tcp``) over the same samples;
* the server died, or wrote a Python traceback to its log (an exception in a handler);
* more than ``--max-loss`` (default 1%) of the steady round trips were lost;
* a steady allocation was lost (Refresh answered 437, or no answer at all).

Exit status 2: the soak could not run (the server did not start, setup failed); 130: interrupted
(Ctrl-C ends the run early, with the summary). ``--json FILE`` writes the samples and the
summary. ``--keep-tmp`` keeps the server's log and data directory.

Examples: ``python bench/soak.py`` (10 minutes, 1,000 allocations);
``python bench/soak.py --duration 60 --allocations 200`` (a quick check).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

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

Address = tuple[str, int]
AttrList = list[tuple[int, bytes]]

HOST = "127.0.0.1"  # the server's only listening address
HOST6 = "::1"
USER, PASSWORD, REALM = "soak", "soak-password", "soak"
RELAY_PORTS = "20000-29999"  # below the ephemeral range (32768-60999 here)
STEADY_PER_SOURCE = 100  # steady clients per source address 127.0.1.N
CHURN_SOURCE = "127.0.2.1"
DUAL_SOURCE = "127.0.2.2"
BAD_AUTH_SOURCE = "127.0.3.1"
JUNK_SOURCE = "127.0.3.2"
TCP_SOURCE = "127.0.3.3"
PEERS = 4  # IPv4 echo peers the steady channels point to
CHANNEL = 0x4000
STEADY_MARK = b"SK"  # first payload bytes of a counted steady round trip
OTHER_MARK = b"XX"
LOSS_GRACE = 2.0  # seconds after which a round trip not back is lost
SETUP_TIMEOUT = 180.0
HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


class SoakError(Exception):
    pass


class RequestFailed(Exception):
    def __init__(self, reason: str, code: int = 0) -> None:
        super().__init__(reason)
        self.code = code


# --------------------------------------------------------------------------------------------
# The server process


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
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
    raise SoakError("no free port on 127.0.0.1")


def iceward_command(args: argparse.Namespace) -> list[str]:
    if args.iceward_cmd:
        return shlex.split(args.iceward_cmd)
    venv = HERE.parent / ".venv" / "bin" / "iceward"
    if venv.exists():
        return [str(venv)]
    found = shutil.which("iceward")
    return [found] if found else [sys.executable, "-m", "iceward"]


class Server:
    def __init__(self, argv: list[str], port: int, log: Path, cpu: int | None) -> None:
        self.argv = argv
        self.port = port
        self.log = log
        self.cpu = cpu
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_status(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def start(self, timeout: float = 30.0) -> None:
        cpu = self.cpu

        def preexec() -> None:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C on the terminal is ours to pass on
                preexec_fn=preexec,
            )
        deadline = time.monotonic() + timeout
        sent: set[bytes] = set()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SoakError(f"iceward exited at start:\n{self.log_tail()}")
                txid = os.urandom(12)
                sent.add(txid)
                try:
                    s.sendto(encode_message(c.BINDING, c.REQUEST, txid), (HOST, self.port))
                    if parse_message(s.recv(2048)).transaction_id in sent:
                        return
                except (OSError, StunError):
                    time.sleep(0.1)
        raise SoakError(f"iceward did not answer on {HOST}:{self.port}:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def relay_path(self) -> str:
        for line in self.log_text().splitlines():
            if "relay path: " in line:
                return line.split("relay path: ", 1)[1].strip()
        return "?"

    def tracebacks(self) -> tuple[int, str]:
        """How many tracebacks the server logged, and the end of the first one."""
        lines = self.log_text().splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
        if not starts:
            return 0, ""
        first = starts[0]
        end = first + 1
        while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end]):
            end += 1
        # the log record the traceback belongs to: the nearest line starting with its date
        head = [line for line in lines[max(0, first - 5) : first] if line[:1].isdigit()][-1:]
        body = lines[first : min(end + 1, len(lines))]
        return len(starts), "\n".join([*head, *body[-7:]])

    def pids(self) -> list[int]:
        """The server and all its descendants (workers, with --workers N in --server-args)."""
        found: list[int] = []
        todo = [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
                    todo += [int(x) for x in text.split()]
            except OSError:
                pass
        return found

    def sample(self) -> tuple[int, int, int]:
        """(RSS KiB, open fds, CPU jiffies) summed over the server's processes."""
        rss = fds = jiffies = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                        break
                fds += len(os.listdir(f"/proc/{pid}/fd"))
                rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                jiffies += int(rest[11]) + int(rest[12])
            except (OSError, ValueError, IndexError):
                pass
        return rss, fds, jiffies


def server_argv(args: argparse.Namespace, port: int, data_dir: Path) -> list[str]:
    return [
        *iceward_command(args),
        "serve",
        "--listen", HOST,
        "--port", str(port),
        "--tls-port", "0",
        "--relay-ip", HOST,
        "--relay-ip", HOST6,
        "--relay-ports", RELAY_PORTS,
        "--user", f"{USER}:{PASSWORD}",
        "--realm", REALM,
        "--allow-peer", "127.0.0.0/8",
        "--allow-peer", "::1/128",
        "--data-dir", str(data_dir),
        "--http", "off",
        "--log-level", "info",
        "--workers", "1",
        *shlex.split(args.server_args),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Counters


@dataclass
class Stats:
    """Everything the load counts; read by the sampler."""

    t0: float
    seconds: int
    sent: list[int] = field(default_factory=list)  # steady round trips by the second sent
    back: list[int] = field(default_factory=list)  # ... and back at the client
    skipped: int = 0  # round trips not sent: the allocation was not ready
    steady_ready: int = 0
    steady_lost: int = 0
    refresh_ok: int = 0
    refresh_errors: Counter[str] = field(default_factory=Counter)
    churn_ok: int = 0
    churn_errors: Counter[str] = field(default_factory=Counter)
    churn_skipped: int = 0  # the churn concurrency was full: not started
    dual_ok: int = 0
    dual_errors: Counter[str] = field(default_factory=Counter)
    bad_sent: int = 0
    bad_answered: int = 0
    bad_codes: Counter[str] = field(default_factory=Counter)
    junk_sent: int = 0
    junk_answered: int = 0
    tcp_opened: int = 0
    tcp_open_failed: int = 0
    tcp_open_since: dict[int, float] = field(default_factory=dict)  # open now: when opened
    tcp_open_at_end: int = 0
    tcp_oldest_at_end: float = 0.0  # seconds
    tcp_closed_by_server: int = 0
    tcp_close_after: list[float] = field(default_factory=list)
    tcp_held: int = 0  # still open after --idle-hold: closed by us
    tcp_answered: int = 0  # the server sent bytes on an idle connection
    max_lag: float = 0.0  # event loop lateness since the last sample

    def __post_init__(self) -> None:
        self.sent = [0] * self.seconds
        self.back = [0] * self.seconds

    def bucket(self, now: float) -> int:
        return min(int(now - self.t0), self.seconds - 1)

    def matured(self, now: float) -> tuple[int, int]:
        """(sent, back) over the seconds that ended LOSS_GRACE ago or earlier."""
        last = max(0, min(self.seconds, int(now - self.t0 - LOSS_GRACE)))
        return sum(self.sent[:last]), sum(self.back[:last])


# --------------------------------------------------------------------------------------------
# UDP clients


class Endpoint(asyncio.DatagramProtocol):
    """One UDP socket connected to the server: STUN answers go to the waiting request,
    ChannelData to the counters."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[bytes, asyncio.Future[Message]] = {}
        self.other_data = 0  # ChannelData that is not steady load (churn, dual-family checks)
        self.data_event: asyncio.Event | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop: no subclass

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if len(data) < 4:
            return
        if 0x40 <= data[0] <= 0x7F:
            if data[4:6] == STEADY_MARK and len(data) >= 10:
                self.stats.back[struct.unpack_from("!I", data, 6)[0]] += 1
            else:
                self.other_data += 1
                if self.data_event is not None:
                    self.data_event.set()
            return
        if len(data) < 20:
            return
        fut = self.waiting.pop(data[8:20], None)
        if fut is None or fut.done():
            return
        try:
            fut.set_result(parse_message(data))
        except StunError:
            pass

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors: UDP goes on

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for fut in self.waiting.values():
            fut.cancel()
        self.waiting.clear()


async def open_endpoint(stats: Stats, source: str, server: Address) -> Endpoint:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(
        lambda: Endpoint(stats), local_addr=(source, 0), remote_addr=server
    )
    return proto


_KEYS: dict[tuple[str, str], bytes] = {}


def key_for(realm: str, password: str) -> bytes:
    key = _KEYS.get((realm, password))
    if key is None:
        key = _KEYS[(realm, password)] = long_term_key(USER, realm, password)
    return key


class Session:
    """Long-term credential requests over one Endpoint (401 and 438 handled)."""

    def __init__(self, ep: Endpoint, password: str = PASSWORD) -> None:
        self.ep = ep
        self.password = password
        self.realm: bytes | None = None
        self.nonce: bytes | None = None

    async def exchange(self, data: bytes, txid: bytes, timeout: float, tries: int) -> Message:
        loop = asyncio.get_running_loop()
        for _ in range(tries):
            fut: asyncio.Future[Message] = loop.create_future()
            self.ep.waiting[txid] = fut
            self.ep.send(data)
            try:
                return await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                pass
            finally:
                self.ep.waiting.pop(txid, None)
        raise RequestFailed("no answer")

    async def request(
        self,
        method: int,
        attrs: Callable[[bytes], AttrList],
        *,
        timeout: float = 1.0,
        tries: int = 3,
    ) -> Message:
        for _ in range(3):
            txid = os.urandom(12)
            full = attrs(txid)
            key = None
            if self.nonce is not None and self.realm is not None:
                full += [(c.USERNAME, USER.encode()), (c.REALM, self.realm), (c.NONCE, self.nonce)]
                key = key_for(self.realm.decode(), self.password)
            data = encode_message(
                method, c.REQUEST, txid, full, integrity_key=key, fingerprint=True
            )
            msg = await self.exchange(data, txid, timeout, tries)
            if msg.cls == c.SUCCESS:
                return msg
            raw = msg.get(c.ERROR_CODE)
            code, _ = decode_error_code(raw) if raw else (0, "")
            nonce = msg.get(c.NONCE)
            if code in (401, 438) and nonce is not None and (code == 438 or key is None):
                self.nonce = nonce
                self.realm = msg.get(c.REALM) or self.realm or REALM.encode()
                continue
            raise RequestFailed(f"{c.METHOD_NAMES.get(method, method)} {code}", code)
        raise RequestFailed(f"{c.METHOD_NAMES.get(method, method)} auth keeps failing")

    async def allocate(self, lifetime: int, *extra: tuple[int, bytes]) -> list[Address]:
        msg = await self.request(
            c.ALLOCATE,
            lambda _: [
                (c.REQUESTED_TRANSPORT, encode_one_byte(c.TRANSPORT_UDP)),
                (c.LIFETIME, encode_u32(lifetime)),
                *extra,
            ],
        )
        txid = msg.transaction_id
        return [decode_xor_address(v, txid) for v in msg.get_all(c.XOR_RELAYED_ADDRESS)]

    async def channel_bind(self, number: int, peer: Address) -> None:
        await self.request(
            c.CHANNEL_BIND,
            lambda txid: [
                (c.CHANNEL_NUMBER, encode_channel_number(number)),
                (c.XOR_PEER_ADDRESS, encode_xor_address(peer, txid)),
            ],
        )

    async def refresh(self, lifetime: int, *extra: tuple[int, bytes]) -> None:
        await self.request(c.REFRESH, lambda _: [*extra, (c.LIFETIME, encode_u32(lifetime))])

    async def delete(self) -> None:
        """Refresh with LIFETIME 0; 437 (already gone, e.g. a retransmission) counts as done."""
        try:
            await self.refresh(0)
        except RequestFailed as exc:
            if exc.code != 437:
                raise


def channel_data(number: int, payload: bytes) -> bytes:
    return struct.pack("!HH", number, len(payload)) + payload


class Echo(asyncio.DatagramProtocol):
    """A UDP peer that sends every datagram back where it came from (a relayed address)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop: no subclass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass


# --------------------------------------------------------------------------------------------
# The load


@dataclass
class Steady:
    index: int
    ep: Endpoint
    session: Session
    peer: Address
    header: bytes = b""
    relayed: Address | None = None
    ready: bool = False
    busy: bool = False
    next_refresh: float = 0.0
    expires: float = 0.0  # when the server drops the allocation unless refreshed


class Soak:
    def __init__(self, args: argparse.Namespace, server: Server) -> None:
        self.args = args
        self.server = server
        self.address: Address = (HOST, server.port)
        self.loop = asyncio.get_running_loop()
        seconds = int(SETUP_TIMEOUT + args.duration + 60)
        self.stats = Stats(t0=self.loop.time(), seconds=seconds)
        self.steady: list[Steady] = []
        self.peers: list[Address] = []
        self.peer6: Address = (HOST6, 0)
        self.transports: list[asyncio.BaseTransport] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stop = asyncio.Event()  # ends churn and hostile traffic
        self.stop_relay = asyncio.Event()
        self.interrupted = False
        self.end_reason = ""
        self.payload_pad = b"\x00" * max(0, args.payload - 6)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def open_peers(self) -> None:
        for _ in range(PEERS):
            tr, _ = await self.loop.create_datagram_endpoint(Echo, local_addr=(HOST, 0))
            self.transports.append(tr)
            self.peers.append(tr.get_extra_info("sockname")[:2])
        tr6, _ = await self.loop.create_datagram_endpoint(Echo, local_addr=(HOST6, 0))
        self.transports.append(tr6)
        self.peer6 = tr6.get_extra_info("sockname")[:2]

    # -- steady allocations ------------------------------------------------------------------

    async def setup_steady(self, log: Callable[[str], None]) -> None:
        args = self.args
        gate = asyncio.Semaphore(64)
        failures: Counter[str] = Counter()
        started = self.loop.time()

        async def one(i: int) -> None:
            async with gate:
                source = f"127.0.1.{1 + i // STEADY_PER_SOURCE}"
                ep = await open_endpoint(self.stats, source, self.address)
                st = Steady(i, ep, Session(ep), self.peers[i % len(self.peers)])
                self.steady.append(st)
                try:
                    st.relayed = (await st.session.allocate(args.lifetime))[0]
                    await st.session.channel_bind(CHANNEL, st.peer)
                except RequestFailed as exc:
                    failures[str(exc)] += 1
                    return
                st.header = struct.pack("!HH", CHANNEL, 6 + len(self.payload_pad))
                st.ready = True
                st.expires = self.loop.time() + args.lifetime
                # the first refreshes spread evenly over one period
                st.next_refresh = started + args.refresh_every * (0.5 + i / args.allocations)

        pending = []
        for i in range(args.allocations):
            pending.append(self.spawn(one(i)))
            await asyncio.sleep(1 / args.setup_rate)
        await asyncio.gather(*pending)
        self.steady.sort(key=lambda s: s.index)
        ready = sum(s.ready for s in self.steady)
        self.stats.steady_ready = ready
        took = self.loop.time() - started
        log(f"# {ready}/{args.allocations} steady allocations with a channel in {took:.1f} s")
        if ready < args.allocations:
            raise SoakError(f"setup: {args.allocations - ready} allocations failed: {failures}")

    async def relay_loop(self) -> None:
        """Round trips over the steady channels in turn, --rate per second in all."""
        rate = self.args.rate
        stats = self.stats
        steady = self.steady
        n = len(steady)
        i = 0
        credit = 0.0
        last = self.loop.time()
        pack = struct.Struct("!I").pack
        while not self.stop_relay.is_set():
            await asyncio.sleep(0.005)
            now = self.loop.time()
            credit = min(credit + (now - last) * rate, float(rate))  # at most 1 s behind
            last = now
            count = int(credit)
            credit -= count
            bucket = stats.bucket(now)
            body = STEADY_MARK + pack(bucket) + self.payload_pad
            sent = 0
            for _ in range(count):
                st = steady[i]
                i = (i + 1) % n
                if not st.ready:
                    stats.skipped += 1
                    continue
                st.ep.send(st.header + body)
                sent += 1
            stats.sent[bucket] += sent

    async def maintain(self) -> None:
        """Refresh every steady allocation and its channel every --refresh-every seconds."""
        gate = asyncio.Semaphore(32)

        async def refresh(st: Steady) -> None:
            async with gate:
                try:
                    await st.session.refresh(self.args.lifetime)
                    st.expires = self.loop.time() + self.args.lifetime
                    await st.session.channel_bind(CHANNEL, st.peer)
                    self.stats.refresh_ok += 1
                    st.next_refresh = self.loop.time() + self.args.refresh_every
                except RequestFailed as exc:
                    self.stats.refresh_errors[str(exc)] += 1
                    if exc.code == 437 or self.loop.time() > st.expires - 10:
                        st.ready = False  # the server no longer has it (437) or soon will not
                        self.stats.steady_lost += 1
                    else:
                        st.next_refresh = self.loop.time() + 5.0  # try again soon
                finally:
                    st.busy = False

        while not self.stop.is_set():
            now = self.loop.time()
            for st in self.steady:
                if st.ready and not st.busy and st.next_refresh <= now:
                    st.busy = True
                    self.spawn(refresh(st))
            await asyncio.sleep(0.1)

    # -- churn ---------------------------------------------------------------------------------

    async def paced(
        self,
        rate: float,
        limit: int,
        make: Callable[[], Coroutine[Any, Any, Any]],
        on_skip: Callable[[], None] | None = None,
    ) -> None:
        """Start make() `rate` times per second with at most `limit` running at once."""
        if rate <= 0:
            return
        running: set[asyncio.Task[Any]] = set()
        interval = 1.0 / rate
        next_at = self.loop.time()
        while not self.stop.is_set():
            next_at += interval
            delay = next_at - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                next_at = self.loop.time()  # fell behind: do not catch up in a burst
            if len(running) >= limit:
                if on_skip is not None:
                    on_skip()
                continue
            task = self.spawn(make())
            running.add(task)
            task.add_done_callback(running.discard)

    def churn_skip(self) -> None:
        self.stats.churn_skipped += 1

    async def churn_one(self) -> None:
        try:
            ep = await open_endpoint(self.stats, CHURN_SOURCE, self.address)
        except OSError as exc:
            self.stats.churn_errors[f"socket: {exc.strerror}"] += 1
            return
        session = Session(ep)
        try:
            await session.allocate(self.args.lifetime)
            await session.channel_bind(CHANNEL, self.peers[0])
            ep.send(channel_data(CHANNEL, OTHER_MARK + b"churn"))
            await session.delete()
            self.stats.churn_ok += 1
        except RequestFailed as exc:
            self.stats.churn_errors[str(exc)] += 1
        finally:
            ep.close()

    # -- hostile: dual-family allocation, IPv6 relay removed under a bound channel ------------

    async def dual_one(self) -> None:
        stats = self.stats
        try:
            ep = await open_endpoint(stats, DUAL_SOURCE, self.address)
        except OSError as exc:
            stats.dual_errors[f"socket: {exc.strerror}"] += 1
            return
        came_back = ep.data_event = asyncio.Event()
        session = Session(ep)
        step = "Allocate"
        try:
            relayed = await session.allocate(
                self.args.lifetime, (c.ADDITIONAL_ADDRESS_FAMILY, encode_one_byte(c.FAMILY_IPV6))
            )
            if not any(":" in host for host, _ in relayed):
                stats.dual_errors["no IPv6 relayed address"] += 1
                await session.delete()
                return
            step = "ChannelBind IPv6 peer"
            await session.channel_bind(CHANNEL, self.peer6)
            step = "round trip via the IPv6 relay"
            ep.send(channel_data(CHANNEL, OTHER_MARK + b"dual"))
            await asyncio.wait_for(came_back.wait(), 2.0)
            step = "Refresh IPv6 LIFETIME 0"
            await session.refresh(0, (c.REQUESTED_ADDRESS_FAMILY, encode_one_byte(c.FAMILY_IPV6)))
            for _ in range(3):  # on the channel whose relay is gone
                ep.send(channel_data(CHANNEL, OTHER_MARK + b"after"))
            await asyncio.sleep(0.05)
            step = "Refresh after"
            await session.refresh(self.args.lifetime)
            step = "delete"
            await session.delete()
            stats.dual_ok += 1
        except RequestFailed as exc:
            stats.dual_errors[f"{step}: {exc}"] += 1
        except TimeoutError:
            stats.dual_errors[f"{step}: timeout"] += 1
        finally:
            ep.close()

    # -- hostile: idle and half-frame TCP connections -----------------------------------------

    async def idle_one(self, half: bool) -> None:
        stats = self.stats
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, self.server.port, local_addr=(TCP_SOURCE, 0)), 5.0
            )
        except (OSError, TimeoutError):
            stats.tcp_open_failed += 1
            await asyncio.sleep(1.0)  # keeps a refusing server from turning this into a spin
            return
        stats.tcp_opened += 1
        opened = self.loop.time()
        stats.tcp_open_since[id(writer)] = opened
        deadline = opened + self.args.idle_hold
        try:
            if half:  # an Allocate header announcing 40 bytes of attributes; 12 of them sent
                head = struct.pack("!HHI", 0x0003, 40, c.MAGIC_COOKIE) + os.urandom(12)
                writer.write(head + os.urandom(12))
            while True:
                left = deadline - self.loop.time()
                if left <= 0:
                    stats.tcp_held += 1
                    return
                try:
                    data = await asyncio.wait_for(reader.read(4096), left)
                except TimeoutError:
                    stats.tcp_held += 1
                    return
                if not data:
                    break
                stats.tcp_answered += 1
            stats.tcp_closed_by_server += 1
            stats.tcp_close_after.append(self.loop.time() - opened)
        except OSError:  # reset by the server counts as closed
            stats.tcp_closed_by_server += 1
            stats.tcp_close_after.append(self.loop.time() - opened)
        finally:
            del stats.tcp_open_since[id(writer)]
            writer.close()

    async def idle_tcp(self) -> None:
        count = 0

        def make() -> Coroutine[Any, Any, None]:
            nonlocal count
            count += 1
            return self.idle_one(half=count % 2 == 0)

        await self.paced(self.args.idle_open_rate, self.args.idle_tcp, make)

    # -- hostile: wrong-password Allocates from one source ------------------------------------

    async def bad_auth(self) -> None:
        args = self.args
        stats = self.stats
        if args.bad_auth <= 0:
            return
        pending: dict[bytes, float] = {}
        state: dict[str, bytes] = {"nonce": b"obMatJos2gAAA" + b"0" * 34, "realm": REALM.encode()}

        class Flood(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Address) -> None:
                try:
                    msg = parse_message(data)
                except StunError:
                    return
                nonce = msg.get(c.NONCE)
                if nonce is not None:  # keep a fresh nonce: the failures are wrong passwords
                    state["nonce"] = nonce
                    state["realm"] = msg.get(c.REALM) or state["realm"]
                if pending.pop(msg.transaction_id, None) is None:
                    return  # the challenge, or a duplicate
                stats.bad_answered += 1
                raw = msg.get(c.ERROR_CODE)
                stats.bad_codes[str(decode_error_code(raw)[0]) if raw else "success"] += 1

            def error_received(self, exc: Exception) -> None:
                pass

        tr, _ = await self.loop.create_datagram_endpoint(
            Flood, local_addr=(BAD_AUTH_SOURCE, 0), remote_addr=self.address
        )
        self.transports.append(tr)
        # One challenge for a nonce bound to this source (a made-up one if it goes unanswered).
        tr.sendto(
            encode_message(
                c.ALLOCATE,
                c.REQUEST,
                os.urandom(12),
                [(c.REQUESTED_TRANSPORT, encode_one_byte(c.TRANSPORT_UDP))],
                fingerprint=True,
            )
        )
        await asyncio.sleep(0.5)
        bursts = max(1, -(-args.bad_auth // args.bad_auth_burst))
        spacing = max(1.0, args.duration * 0.9 / bursts)
        total = 0
        for _ in range(bursts):
            start = self.loop.time()
            size = min(args.bad_auth_burst, args.bad_auth - total)
            for k in range(size):
                if self.stop.is_set():
                    return
                txid = os.urandom(12)
                realm = state["realm"]
                attrs = [
                    (c.REQUESTED_TRANSPORT, encode_one_byte(c.TRANSPORT_UDP)),
                    (c.USERNAME, USER.encode()),
                    (c.REALM, realm),
                    (c.NONCE, state["nonce"]),
                ]
                key = key_for(realm.decode(errors="replace"), "wrong-password")
                pending[txid] = self.loop.time()
                tr.sendto(
                    encode_message(
                        c.ALLOCATE, c.REQUEST, txid, attrs, integrity_key=key, fingerprint=True
                    )
                )
                stats.bad_sent += 1
                total += 1
                if k % 10 == 9:
                    await asyncio.sleep(10 / args.bad_auth_rate)
            try:
                await asyncio.wait_for(
                    self.stop.wait(), max(0.0, start + spacing - self.loop.time())
                )
                return
            except TimeoutError:
                pass

    # -- hostile: malformed datagrams ---------------------------------------------------------

    async def junk(self) -> None:
        args = self.args
        stats = self.stats
        if args.junk_rate <= 0:
            return
        rng = random.Random(12)

        class Junk(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Address) -> None:
                stats.junk_answered += 1

            def error_received(self, exc: Exception) -> None:
                pass

        tr, _ = await self.loop.create_datagram_endpoint(Junk, local_addr=(JUNK_SOURCE, 0))
        self.transports.append(tr)
        cookie = struct.pack("!I", c.MAGIC_COOKIE)
        relayed = [s.relayed for s in self.steady if s.relayed is not None]

        def datagram() -> bytes:
            kind = rng.randrange(8)
            if kind == 0:  # noise
                return rng.randbytes(rng.randint(0, 1400))
            if kind == 1:  # a STUN header whose length lies
                return (
                    struct.pack("!HH", 0x0001, rng.randint(0, 0xFFFF))
                    + cookie
                    + rng.randbytes(rng.randint(12, 200))
                )
            if kind == 2:  # ChannelData longer than the datagram
                return struct.pack("!HH", rng.randint(0x4000, 0x7FFF), 0xFFFF) + rng.randbytes(8)
            if kind == 3:  # ChannelData on a channel nobody bound
                body = rng.randbytes(rng.randint(0, 200))
                return struct.pack("!HH", rng.randint(0x4000, 0x7FFE), len(body)) + body
            if kind == 4:  # an Allocate with an attribute running past the end
                head = struct.pack("!HH", 0x0003, 24) + cookie + rng.randbytes(12)
                return head + struct.pack("!HH", c.USERNAME, 900) + rng.randbytes(20)
            if kind == 5:  # a Binding with a wrong FINGERPRINT
                msg = bytearray(
                    encode_message(c.BINDING, c.REQUEST, rng.randbytes(12), fingerprint=True)
                )
                msg[-1] ^= 0xFF
                return bytes(msg)
            if kind == 6:  # tiny
                return rng.randbytes(rng.randint(0, 3))
            # a signed-looking Refresh from a stranger, garbage integrity
            return encode_message(
                c.REFRESH,
                c.REQUEST,
                rng.randbytes(12),
                [(c.USERNAME, USER.encode()), (c.MESSAGE_INTEGRITY, rng.randbytes(20))],
            )

        credit = 0.0
        last = self.loop.time()
        while not self.stop.is_set():
            await asyncio.sleep(0.02)
            now = self.loop.time()
            credit = min(credit + (now - last) * args.junk_rate, args.junk_rate)
            last = now
            for _ in range(int(credit)):
                credit -= 1
                target = rng.choice(relayed) if relayed and rng.random() < 0.1 else self.address
                tr.sendto(datagram(), target)
                stats.junk_sent += 1

    # -- event loop lateness (is the generator keeping up?) ------------------------------------

    async def lag(self) -> None:
        while not self.stop_relay.is_set():
            before = self.loop.time()
            await asyncio.sleep(0.05)
            self.stats.max_lag = max(self.stats.max_lag, self.loop.time() - before - 0.05)

    def close(self) -> None:
        for st in self.steady:
            st.ep.close()
        for tr in self.transports:
            tr.close()


# --------------------------------------------------------------------------------------------
# Sampling and reporting


HEADER = (
    f"{'t s':>6} {'rss MB':>7} {'fds':>5} {'srv cpu':>7} {'gen cpu':>7} {'other':>6} {'rt/s':>6} "
    f"{'lost':>6} {'lost%':>6} {'churn':>11} {'dual':>9} {'bad-auth ans/sent':>17} "
    f"{'junk':>6} {'tcp open/closed':>15} {'lag ms':>6}"
)


def sample_line(s: dict[str, Any], warm: bool) -> str:
    return (
        f"{s['t']:>6.0f} {s['rss_mb']:>7.1f} {s['fds']:>5} {s['server_cpu']:>7.0%} "
        f"{s['generator_cpu']:>7.0%} {s['other_cpu']:>6.0%} {s['rt_per_s']:>6.0f} "
        f"{s['lost_interval']:>6} "
        f"{s['lost_share']:>6.2%} {s['churn_ok']:>6}/{s['churn_failed']:<4} "
        f"{s['dual_ok']:>4}/{s['dual_failed']:<4} {s['bad_answered']:>8}/{s['bad_sent']:<8} "
        f"{s['junk_sent']:>6} {s['tcp_open']:>7}/{s['tcp_closed_by_server']:<7} "
        f"{s['max_lag_ms']:>6.0f}" + ("" if warm else "  (warm-up)")
    )


class Sampler:
    def __init__(self, soak: Soak, start: float) -> None:
        self.soak = soak
        self.start = start
        self.samples: list[dict[str, Any]] = []
        self.prev_time = start
        self.prev_jiffies = soak.server.sample()[2]
        self.prev_self = self._self_cpu()
        self.prev_busy = self._machine_busy()
        self.prev_back = 0
        self.prev_lost = 0

    @staticmethod
    def _machine_busy() -> float:
        """Busy CPU seconds of the whole machine (all CPUs) since boot."""
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return 0.0
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
        return (user + nice + system + irq + softirq + steal) / CLK_TCK

    @staticmethod
    def _self_cpu() -> float:
        t = os.times()
        return t.user + t.system

    def take(self) -> dict[str, Any]:
        soak = self.soak
        st = soak.stats
        now = soak.loop.time()
        rss, fds, jiffies = soak.server.sample()
        mine = self._self_cpu()
        busy = self._machine_busy()
        wall = max(now - self.prev_time, 1e-6)
        sent_m, back_m = st.matured(now)
        lost = sent_m - back_m
        back_all = sum(st.back)
        sample = {
            "t": round(now - self.start, 1),
            "rss_mb": rss / 1024,
            "fds": fds,
            "server_cpu": (jiffies - self.prev_jiffies) / CLK_TCK / wall,
            "generator_cpu": (mine - self.prev_self) / wall,
            # everything else the machine did: other programs, kernel work charged to nobody
            "other_cpu": max(
                0.0,
                (busy - self.prev_busy - (mine - self.prev_self)) / wall
                - (jiffies - self.prev_jiffies) / CLK_TCK / wall,
            ),
            "rt_per_s": (back_all - self.prev_back) / wall,
            "lost_interval": lost - self.prev_lost,
            "lost_total": lost,
            "lost_share": lost / sent_m if sent_m else 0.0,
            "round_trips_sent": sent_m,
            "steady_ready": sum(s.ready for s in soak.steady),
            "churn_ok": st.churn_ok,
            "churn_failed": sum(st.churn_errors.values()),
            "dual_ok": st.dual_ok,
            "dual_failed": sum(st.dual_errors.values()),
            "bad_sent": st.bad_sent,
            "bad_answered": st.bad_answered,
            "junk_sent": st.junk_sent,
            "tcp_open": len(st.tcp_open_since),
            "tcp_closed_by_server": st.tcp_closed_by_server,
            "max_lag_ms": st.max_lag * 1000,
            "server_alive": soak.server.alive(),
        }
        st.max_lag = 0.0
        self.prev_time, self.prev_jiffies, self.prev_self = now, jiffies, mine
        self.prev_busy = busy
        self.prev_back, self.prev_lost = back_all, lost
        self.samples.append(sample)
        return sample


def fit_slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (per second) of (t, value) points; 0 with fewer than 3."""
    if len(points) < 3:
        return 0.0
    ts = [p[0] for p in points]
    mean_t = statistics.fmean(ts)
    mean_v = statistics.fmean(p[1] for p in points)
    den = sum((t - mean_t) ** 2 for t in ts)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / den if den else 0.0


def summarize(
    args: argparse.Namespace, soak: Soak, samples: list[dict[str, Any]], final_loss: tuple[int, int]
) -> tuple[dict[str, Any], list[str], list[str]]:
    st = soak.stats
    warm = [s for s in samples if s["t"] >= args.warmup] or samples[-1:]
    first, last = warm[0], warm[-1]
    rss_growth = last["rss_mb"] - first["rss_mb"]
    fd_growth = last["fds"] - first["fds"]
    sent, back = final_loss
    lost = sent - back
    share = lost / sent if sent else 0.0
    tracebacks, first_tb = soak.server.tracebacks()
    alive = soak.server.alive()
    closes = sorted(st.tcp_close_after)
    failures: list[str] = []
    notes: list[str] = []
    if not alive:
        status = soak.server.exit_status()
        failures.append(f"the server died (exit status {status})")
        notes.append("end of the server log:\n" + soak.server.log_tail(10))
    if rss_growth > args.max_rss_growth_mb:
        failures.append(
            f"server RSS grew {rss_growth:.1f} MB (t={first['t']:.0f} s to t={last['t']:.0f} s), "
            f"limit {args.max_rss_growth_mb} MB"
        )
    if fd_growth > args.max_fd_growth:
        failures.append(f"server fds grew by {fd_growth}, limit {args.max_fd_growth}")
    if tracebacks:
        failures.append(f"the server logged {tracebacks} traceback(s)")
    if share > args.max_loss:
        failures.append(
            f"{lost} of {sent} round trips lost ({share:.2%}), limit {args.max_loss:.2%}"
        )
    if sent == 0:
        failures.append("no round trip was relayed")
    if st.steady_lost:
        failures.append(f"{st.steady_lost} steady allocation(s) lost")
    if st.churn_errors:
        notes.append(f"churn errors: {dict(st.churn_errors)}")
    if st.dual_errors:
        notes.append(f"dual-family errors: {dict(st.dual_errors)}")
    if st.refresh_errors:
        notes.append(f"steady refresh errors: {dict(st.refresh_errors)}")
    if st.skipped:
        notes.append(f"{st.skipped} round trips not sent (allocation not ready)")
    if st.tcp_held:
        notes.append(
            f"{st.tcp_held} idle TCP connection(s) were still open after {args.idle_hold:.0f} s "
            "(the server did not time them out)"
        )
    elif st.tcp_opened and not st.tcp_closed_by_server:
        notes.append(
            f"the server closed none of the idle TCP connections ({st.tcp_open_at_end} open at "
            f"the end, the oldest {st.tcp_oldest_at_end:.0f} s old)"
        )
    achieved = statistics.fmean(s["rt_per_s"] for s in warm) if warm else 0.0
    if achieved < 0.9 * args.rate and alive:
        notes.append(
            f"round trips/s {achieved:.0f} below the {args.rate} asked: generator or server "
            "could not keep up"
        )
    if first_tb:
        notes.append("first server traceback:\n" + first_tb)
    summary = {
        "baseline_t": first["t"],
        "end_t": last["t"],
        "rss_mb": {"baseline": first["rss_mb"], "end": last["rss_mb"],
                   "max": max(s["rss_mb"] for s in samples), "growth": rss_growth,
                   "slope_mb_per_min": 60 * fit_slope([(s["t"], s["rss_mb"]) for s in warm]),
                   "limit": args.max_rss_growth_mb},
        "fds": {"baseline": first["fds"], "end": last["fds"],
                "max": max(s["fds"] for s in samples), "growth": fd_growth,
                "limit": args.max_fd_growth},
        "round_trips": {"sent": sent, "lost": lost, "lost_share": share,
                        "limit": args.max_loss, "per_s_after_warmup": achieved},
        "server_alive": alive,
        "server_tracebacks": tracebacks,
        "steady": {"allocations": len(soak.steady), "lost": st.steady_lost,
                   "refreshes": st.refresh_ok, "refresh_errors": dict(st.refresh_errors)},
        "churn": {"ok": st.churn_ok, "errors": dict(st.churn_errors),
                  "not_started_busy": st.churn_skipped},
        "dual_family": {"ok": st.dual_ok, "errors": dict(st.dual_errors)},
        "bad_auth": {"sent": st.bad_sent, "answered": st.bad_answered,
                     "dropped": st.bad_sent - st.bad_answered, "answers": dict(st.bad_codes)},
        "junk": {"sent": st.junk_sent, "answered": st.junk_answered},
        "idle_tcp": {"opened": st.tcp_opened, "open_failed": st.tcp_open_failed,
                     "closed_by_server": st.tcp_closed_by_server,
                     "close_after_median_s": statistics.median(closes) if closes else None,
                     "close_after_max_s": closes[-1] if closes else None,
                     "still_open_at_hold": st.tcp_held, "answered": st.tcp_answered,
                     "open_at_end": st.tcp_open_at_end,
                     "oldest_at_end_s": st.tcp_oldest_at_end},
    }  # fmt: skip
    return summary, failures, notes


def print_summary(
    summary: dict[str, Any], failures: list[str], notes: list[str], interrupted: bool
) -> None:
    r, f, rt = summary["rss_mb"], summary["fds"], summary["round_trips"]
    print()
    print(
        f"{'':<22}{'t=' + str(round(summary['baseline_t'])) + ' s':>12}"
        f"{'t=' + str(round(summary['end_t'])) + ' s':>12}{'max':>10}{'growth':>10}{'limit':>10}"
    )
    print(
        f"{'server RSS MB':<22}{r['baseline']:>12.1f}{r['end']:>12.1f}{r['max']:>10.1f}"
        f"{r['growth']:>+10.1f}{r['limit']:>10}   ({r['slope_mb_per_min']:+.2f} MB/min)"
    )
    print(
        f"{'server fds':<22}{f['baseline']:>12}{f['end']:>12}{f['max']:>10}"
        f"{f['growth']:>+10}{f['limit']:>10}"
    )
    print(
        f"{'round trips':<22}{rt['sent']:>12} sent, {rt['lost']} lost ({rt['lost_share']:.3%}, "
        f"limit {rt['limit']:.2%}), {rt['per_s_after_warmup']:.0f}/s"
    )
    s, ch, d = summary["steady"], summary["churn"], summary["dual_family"]
    b, j, t = summary["bad_auth"], summary["junk"], summary["idle_tcp"]
    print(
        f"{'steady allocations':<22}{s['allocations']} ({s['lost']} lost), "
        f"{s['refreshes']} refreshes, {sum(s['refresh_errors'].values())} refresh errors"
    )
    busy = ch["not_started_busy"]
    print(
        f"{'churn':<22}{ch['ok']} allocate/delete ok, {sum(ch['errors'].values())} failed"
        + (f", {busy} not started (--churn-concurrency full)" if busy else "")
    )
    print(f"{'dual-family':<22}{d['ok']} ok, {sum(d['errors'].values())} failed")
    print(
        f"{'wrong password':<22}{b['sent']} sent, {b['answered']} answered, {b['dropped']} "
        f"dropped; answers {b['answers']}"
    )
    print(f"{'malformed UDP':<22}{j['sent']} sent, {j['answered']} answered")
    median = t["close_after_median_s"]
    print(
        f"{'idle TCP':<22}{t['opened']} opened ({t['open_failed']} refused), "
        f"{t['closed_by_server']} closed by the server"
        + (f" (median {median:.1f} s, max {t['close_after_max_s']:.1f} s)" if median else "")
        + f", {t['still_open_at_hold']} still open at the hold limit, {t['open_at_end']} open "
        f"at the end (oldest {t['oldest_at_end_s']:.0f} s)"
    )
    print(
        f"{'server':<22}{'alive' if summary['server_alive'] else 'DEAD'}, "
        f"{summary['server_tracebacks']} traceback(s) in its log"
    )
    for note in notes:
        print(f"note: {note}")
    print()
    if interrupted:
        print(f"soak: interrupted at t={summary['end_t']:.0f} s; what it saw so far:")
    if failures:
        print("soak: FAIL")
        for reason in failures:
            print(f"  - {reason}")
    elif not interrupted:
        print("soak: PASS")
    else:
        print("  no failure")


# --------------------------------------------------------------------------------------------
# Main


async def run(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    soak = Soak(args, server)
    loop = soak.loop

    def interrupt() -> None:
        soak.interrupted = True
        soak.end_reason = "interrupted"
        soak.stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt)
    print(
        f"# iceward pid {server.pid} on {HOST}:{server.port}, relay path {server.relay_path()}, "
        f"server CPU {args.server_cpu}, generator CPU {args.client_cpu}"
    )
    print(
        f"# {args.allocations} allocations, {args.rate} round trips/s of {args.payload} B, churn "
        f"{args.churn_rate}/s, dual-family {args.dual_rate}/s, {args.idle_tcp} idle TCP, "
        f"{args.bad_auth} wrong passwords, junk {args.junk_rate}/s; "
        f"{args.duration:.0f} s, warm-up {args.warmup:.0f} s"
    )
    try:
        await soak.open_peers()
        await asyncio.wait_for(soak.setup_steady(print), SETUP_TIMEOUT)
    except TimeoutError:
        soak.close()
        raise SoakError(f"setup took longer than {SETUP_TIMEOUT:.0f} s") from None
    except OSError as exc:
        soak.close()
        raise SoakError(f"setup: {exc}") from None
    except BaseException:
        soak.close()
        raise
    start = loop.time()
    sampler = Sampler(soak, start)
    workers = [
        soak.spawn(soak.relay_loop()),
        soak.spawn(soak.maintain()),
        soak.spawn(
            soak.paced(args.churn_rate, args.churn_concurrency, soak.churn_one, soak.churn_skip)
        ),
        soak.spawn(soak.paced(args.dual_rate, 4, soak.dual_one)),
        soak.spawn(soak.idle_tcp()),
        soak.spawn(soak.bad_auth()),
        soak.spawn(soak.junk()),
        soak.spawn(soak.lag()),
    ]
    print(HEADER)
    end = start + args.duration
    try:
        next_at = start
        while True:
            next_at = min(next_at + args.interval, end)
            try:
                await asyncio.wait_for(soak.stop.wait(), max(0.0, next_at - loop.time()))
            except TimeoutError:
                pass
            for task in workers:
                failed = task.exception() if task.done() and not task.cancelled() else None
                if failed is not None:
                    raise failed
            sample = sampler.take()
            print(sample_line(sample, sample["t"] >= args.warmup), flush=True)
            if not server.alive():
                soak.end_reason = "the server died"
                break
            if soak.stop.is_set() or loop.time() >= end - 0.01:
                break
        soak.stop.set()
        soak.stop_relay.set()
        await asyncio.sleep(LOSS_GRACE + 0.5)  # round trips in flight come back
        opened = soak.stats.tcp_open_since.values()
        soak.stats.tcp_open_at_end = len(opened)
        soak.stats.tcp_oldest_at_end = loop.time() - min(opened, default=loop.time())
        sent_back = (sum(soak.stats.sent), sum(soak.stats.back))
    finally:
        soak.stop.set()
        soak.stop_relay.set()
        for task in list(soak.tasks):
            task.cancel()
        await asyncio.gather(*soak.tasks, return_exceptions=True)
        soak.close()
    summary, failures, notes = summarize(args, soak, sampler.samples, sent_back)
    print_summary(summary, failures, notes, soak.interrupted)
    return {
        "config": dict(vars(args)),
        "samples": sampler.samples,
        "summary": summary,
        "failures": failures,
        "notes": notes,
        "interrupted": soak.interrupted,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load after setup")
    p.add_argument("--allocations", type=int, default=1000, help="long-lived allocations")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds before the baseline sample (default: a quarter of --duration, at most 60)",
    )
    p.add_argument("--server-args", default="", help="extra flags for iceward serve")
    p.add_argument(
        "--iceward-cmd",
        default="",
        help="command that runs iceward (default: .venv/bin/iceward), e.g. another "
        "checkout: 'env PYTHONPATH=../old/src .venv/bin/python -m iceward'",
    )
    p.add_argument("--json", type=Path, default=None, help="write samples and summary here")
    p.add_argument("--max-rss-growth-mb", type=float, default=50.0)
    p.add_argument("--max-fd-growth", type=int, default=200)
    p.add_argument("--max-loss", type=float, default=0.01, help="share of round trips (0.01)")
    p.add_argument("--rate", type=int, default=1000, help="steady round trips/s in all")
    p.add_argument("--payload", type=int, default=100, help="ChannelData payload bytes")
    p.add_argument("--lifetime", type=int, default=600, help="allocation LIFETIME asked")
    p.add_argument(
        "--refresh-every",
        type=float,
        default=60.0,
        help="seconds between refreshes of a steady allocation and its channel",
    )
    p.add_argument("--setup-rate", type=float, default=100.0, help="steady allocations/s")
    p.add_argument("--churn-rate", type=float, default=20.0, help="allocate/delete per s")
    p.add_argument("--churn-concurrency", type=int, default=16)
    p.add_argument("--dual-rate", type=float, default=0.5, help="dual-family sequences per s")
    p.add_argument("--idle-tcp", type=int, default=100, help="idle TCP connections at a time")
    p.add_argument("--idle-open-rate", type=float, default=10.0, help="new idle TCP per s")
    p.add_argument(
        "--idle-hold",
        type=float,
        default=90.0,
        help="seconds we keep an idle connection the server did not close",
    )
    p.add_argument("--bad-auth", type=int, default=5000, help="wrong-password Allocates in all")
    p.add_argument("--bad-auth-burst", type=int, default=500)
    p.add_argument("--bad-auth-rate", type=float, default=1000.0, help="per s within a burst")
    p.add_argument("--junk-rate", type=float, default=100.0, help="malformed datagrams per s")
    p.add_argument("--server-cpu", type=int, default=None, help="default: the last CPU")
    p.add_argument("--client-cpu", type=int, default=None, help="default: the first CPU")
    p.add_argument("--keep-tmp", action="store_true", help="keep the server log and data dir")
    args = p.parse_args(argv)  # fmt: skip
    if not 10 <= args.duration <= 24 * 3600:
        p.error("--duration 10..86400 s")
    if not 1 <= args.allocations <= 20000:
        p.error("--allocations 1..20000")
    if not 1 <= args.interval <= args.duration:
        p.error("--interval 1..duration")
    if args.warmup is None:
        args.warmup = min(60.0, args.duration / 4)
    if not 0 <= args.warmup < args.duration:
        p.error("--warmup below --duration")
    if not 1 <= args.rate <= 100_000 or not 6 <= args.payload <= 1200:
        p.error("--rate 1..100000, --payload 6..1200")
    if not 60 <= args.lifetime <= 3600 or not 5 <= args.refresh_every < args.lifetime:
        p.error("--lifetime 60..3600, --refresh-every 5..lifetime")
    for name in ("setup_rate", "bad_auth_burst", "bad_auth_rate", "churn_concurrency"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("churn_rate", "dual_rate", "idle_tcp", "idle_open_rate", "bad_auth", "junk_rate"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative")
    if args.idle_hold <= 0:
        p.error("--idle-hold must be positive")
    cpus = sorted(os.sched_getaffinity(0))
    if args.server_cpu is None and args.client_cpu is None and len(cpus) >= 2:
        args.server_cpu, args.client_cpu = cpus[-1], cpus[0]
    for name in ("server_cpu", "client_cpu"):
        if getattr(args, name) is not None and getattr(args, name) not in cpus:
            p.error(f"--{name.replace('_', '-')} must be one of {cpus}")
    return args


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})
    tmp = Path(tempfile.mkdtemp(prefix="iceward-soak-"))
    port = free_port()
    argv_ = server_argv(args, port, tmp / "data")
    server = Server(argv_, port, tmp / "iceward.log", args.server_cpu)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    # Ctrl-C before the loop runs (or a second one during cleanup) must still stop the server.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    result: dict[str, Any] | None = None
    try:
        server.start()
        deadline = SETUP_TIMEOUT + args.duration + 120
        result = asyncio.run(asyncio.wait_for(run(args, server), deadline))
    except SoakError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    except TimeoutError:
        print("soak: did not finish in time", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.stop()
        if result is not None and args.json is not None:
            args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        if args.keep_tmp or (result is not None and result["failures"]):
            print(f"# server log and data kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if result["interrupted"]:
        return 130
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
