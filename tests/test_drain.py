"""Draining a node, end to end: real ``iceward serve`` processes on 127.0.0.2 and 127.0.0.3,
coturn's ``turnutils_uclient`` and the project's own TURN client as peers.

While a node drains, what it relays goes on (uclient counts 0 lost), Refresh, CreatePermission
and ChannelBind keep working, and a new Allocate is answered 300 Try Alternate naming the other
node, signed (on TLS: its TLS port and ALTERNATE-DOMAIN), which uclient follows (its "probe"
Allocate is the one redirected: the sessions it then opens are on the alternate). The node exits
0 when its last allocation has ended, or at ``--drain-timeout``; ``/readyz`` says draining,
``/metrics`` and sd_notify's STATUS too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from iceward.config import parse_alternate_server
from iceward.server.drain import Alternate, CoreLookup, StaticAlternates
from iceward.stun import attributes as A
from iceward.stun import constants as C
from iceward.stun.integrity import long_term_key, verify_integrity
from iceward.turn.allocation import FiveTuple
from tests.api.test_api import cli, http
from tests.conftest import HOST, RunningServer, require_tool, start_server, stop_process
from tests.net.turnclient import BlockingTurnClient, TurnError
from tests.test_systemd import NotifyListener

NODE_A, NODE_B = "127.0.0.2", "127.0.0.3"
REALM = "iceward.test"
# uclient client-to-client over TCP (a closed connection ends its allocations at once, its
# "probe" allocation included): 2 clients with RTP and RTCP sessions, 250 messages each.
STREAM = ("-t", "-y", "-n", "250", "-m", "2", "-l", "170", "-z", "10", "-u", "alice", "-w",
          "wonderland")  # fmt: skip
TOTALS = re.compile(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)")
LOST = re.compile(r"Total lost packets (\d+)")
ALLOCATION_END = re.compile(r"allocation end .*to_peer_packets=(\d+)")


class Uclient:
    """One ``turnutils_uclient`` run, its output read line by line as it comes."""

    def __init__(self, binary: str, host: str, port: int) -> None:
        self.proc = subprocess.Popen(
            [binary, *STREAM, "-p", str(port), host],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_streaming(self, timeout: float = 20.0) -> None:
        """Until its sessions are allocated and messages flow (uclient reports once a second)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(int(sent) > 0 for sent, _ in TOTALS.findall(self.output)):
                return
            assert self.proc.poll() is None, self.output[-2000:]
            time.sleep(0.05)
        raise AssertionError(f"uclient did not start streaming:\n{self.output[-2000:]}")

    def finish(self, timeout: float = 40.0) -> tuple[int, int, list[str]]:
        """(sent, received, lost counts) once it has exited 0."""
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        assert code == 0, f"uclient exited {code}:\n{self.output[-2000:]}"
        sent, received = map(int, TOTALS.findall(self.output)[-1])
        return sent, received, LOST.findall(self.output)


def node(tmp_path: Path, name: str, host: str, *extra: str, **options: object) -> RunningServer:
    workdir = tmp_path / name
    workdir.mkdir()
    options.setdefault("tls", False)
    return start_server(workdir, *extra, host=host, **options)  # type: ignore[arg-type]


def wait_exit(server: RunningServer, timeout: float) -> int:
    try:
        return server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        tail = server.log_text()[-3000:]
        raise AssertionError(f"node did not exit in {timeout} s:\n{tail}") from None


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def urlopen_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def drain_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ICEWARD_ADMIN_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "iceward", "drain", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


@pytest.mark.realclient
def test_draining_node_keeps_relaying_and_sends_new_allocations_to_the_alternate(
    tmp_path: Path,
) -> None:
    uclient = require_tool("turnutils_uclient")
    b = node(tmp_path, "b", NODE_B, "--relay-ports", "21000-21099", tls=True)
    a = node(
        tmp_path, "a", NODE_A, "--relay-ports", "21000-21099", "--alternate-server",
        f"{NODE_B}:{b.port}", "--tls-alternate-server", f"turn-b.test@{NODE_B}:{b.tls_port}",
        tls=True,
    )  # fmt: skip
    keeper = BlockingTurnClient((NODE_A, a.port), "alice", "wonderland")
    newcomer = BlockingTurnClient((NODE_A, a.port), "alice", "wonderland")
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((HOST, 0))
    peer.settimeout(2)
    runs: list[Uclient] = []
    others: list[subprocess.Popen[str]] = []
    try:
        admin = cli(a, "keys", "add", "ops", "--admin")
        relayed = keeper.allocate()
        first = Uclient(uclient, NODE_A, a.port)
        runs.append(first)
        first.wait_streaming()

        done = drain_cli("--admin-url", a.http_url, "--admin-key", admin)
        assert done.returncode == 0, done.stderr
        assert "draining" in done.stdout and "allocations left" in done.stdout

        # What exists goes on: Refresh, CreatePermission, ChannelBind, data both ways.
        assert keeper.refresh(600) == 600
        keeper.create_permission(peer.getsockname())
        keeper.channel_bind(0x4000, peer.getsockname())
        keeper.send_channel_data(0x4000, b"to the peer")
        data, source = peer.recvfrom(100)
        assert data == b"to the peer" and source == relayed
        peer.sendto(b"to the client", relayed)
        assert keeper.receive_data() == (0x4000, b"to the client")

        # A new Allocate: 300 Try Alternate naming node B, signed with the client's key.
        with pytest.raises(TurnError) as refused:
            newcomer.allocate()
        assert refused.value.code == 300
        reply = refused.value.reply
        assert reply is not None
        assert A.decode_address(reply.get(C.ALTERNATE_SERVER) or b"") == (NODE_B, b.port)
        assert verify_integrity(reply, long_term_key("alice", REALM, "wonderland"))

        # On TLS: B's TLS port, and the name its certificate must carry (ALTERNATE-DOMAIN).
        on_tls = BlockingTurnClient((NODE_A, a.tls_port), "alice", "wonderland", transport="tcp")
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # self-signed
        on_tls.sock = context.wrap_socket(on_tls.sock)
        try:
            with pytest.raises(TurnError) as refused:
                on_tls.allocate()
        finally:
            on_tls.close()
        reply = refused.value.reply
        assert refused.value.code == 300 and reply is not None
        assert A.decode_address(reply.get(C.ALTERNATE_SERVER) or b"") == (NODE_B, b.tls_port)
        assert reply.get(C.ALTERNATE_DOMAIN) == b"turn-b.test"

        # uclient follows it: its sessions are allocated on B and relay there.
        second = Uclient(uclient, NODE_A, a.port)
        runs.append(second)

        status, ready, _ = http(a, "GET", "/readyz")
        assert status == 503 and ready["state"] == "draining" and "draining" in ready["reason"]
        status, drain, _ = http(a, "GET", "/admin/v1/drain", key=admin)
        assert status == 200 and drain["state"] == "draining" and drain["allocations"] >= 1
        assert http(b, "GET", "/readyz")[0] == 200
        top = subprocess.run(
            [sys.executable, "-m", "iceward", "top", "--url", a.http_url, "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "ICEWARD_ADMIN_KEY": admin},
        )
        assert top.returncode == 0 and json.loads(top.stdout)["draining"] is True, top.stderr
        metrics = urlopen_text(a.http_url + "/metrics")
        assert metric(metrics, "iceward_draining") == 1
        assert metric(metrics, 'iceward_drain_answers_total{answer="redirected"}') >= 1

        for run in (first, second):
            sent, received, lost = run.finish()
            assert sent > 0 and received == sent and lost == ["0"], run.output[-2000:]
        assert "error 300" in second.output
        assert a.proc.poll() is None  # the keeper's allocation is still there
        ends_on_b = [int(n) for n in ALLOCATION_END.findall(b.log_text())]
        assert len(ends_on_b) >= 4 and sum(ends_on_b) > 0, b.log_text()[-3000:]

        # A preStop hook's `iceward drain --wait` (asking again changes nothing) returns once
        # the node is gone, which happens when the last allocation ends.
        waiting = subprocess.Popen(
            [sys.executable, "-m", "iceward", "drain", "--admin-url", a.http_url, "--wait"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "ICEWARD_ADMIN_KEY": admin},
        )
        others.append(waiting)
        assert waiting.stdout is not None
        said = waiting.stdout.readline()  # once it has asked: the node's answer
        assert "draining, 1 allocation left" in said, said
        assert waiting.poll() is None
        keeper.refresh(0)
        assert wait_exit(a, 10) == 0
        assert "drained: the last allocation has ended" in a.log_text()
        out, err = waiting.communicate(timeout=15)
        assert waiting.returncode == 0 and "the node has exited" in out, said + out + err
    finally:
        for proc in [run.proc for run in runs] + others:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        keeper.close()
        newcomer.close()
        peer.close()
        a.stop()
        b.stop()


def test_sigusr1_drains_every_worker_refuses_without_alternate_and_exits_at_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGUSR1 with two workers and no alternate: 508 Server draining, STATUS= says draining,
    and the allocation that never ends is cut at --drain-timeout, exit 0."""
    name = f"@iceward-drain-{os.urandom(6).hex()}"
    listener = NotifyListener(b"\0" + name[1:].encode())
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    a = node(tmp_path, "a", NODE_A, "--relay-ports", "21100-21199", "--drain-timeout", "3",
             workers=2)  # fmt: skip
    clients = [
        BlockingTurnClient((NODE_A, a.port), "alice", "wonderland", transport=t)
        for t in ("udp", "tcp", "udp", "tcp")
    ]
    try:
        listener.wait_for("READY", "1")
        clients[0].allocate()
        clients[1].allocate()
        a.proc.send_signal(signal.SIGUSR1)
        status = listener.wait_for("STATUS", "draining: 2 allocations, 2/2 workers up", 10)
        assert status
        for client in clients[2:]:
            with pytest.raises(TurnError) as refused:
                client.allocate()
            assert refused.value.code == 508 and "Server draining" in str(refused.value)
        assert clients[0].refresh(600) == 600
        assert wait_exit(a, 15) == 0
        log = a.log_text()
        assert "drain timeout (3 s): exiting with 2 allocation(s) left" in log
        assert "Traceback" not in log
    finally:
        for client in clients:
            client.close()
        listener.sock.close()
        stop_process(a.proc)


def test_drain_cli_errors_are_one_line_exit_2() -> None:
    with socket.socket() as unused:
        unused.bind((HOST, 0))
        closed = unused.getsockname()[1]
    cases = [
        (("--admin-url", f"http://{HOST}:{closed}", "--admin-key", "k"), "cannot reach"),
        (("--admin-url", "ftp://example.test", "--admin-key", "k"), "must be http:// or https://"),
    ]
    for args, said in cases:
        done = drain_cli(*args)
        assert done.returncode == 2, done
        assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
        assert done.stderr.startswith("iceward drain: error: ") and said in done.stderr


def test_static_alternates_by_family_and_transport_in_turn() -> None:
    source = StaticAlternates(
        ["192.0.2.7:3478", "[2001:db8::7]:3478", "192.0.2.8:3478"],
        ["turn2.example.test@192.0.2.7:5349"],
    )
    lookup = CoreLookup(source)
    v4 = [source.alternate(socket.AF_INET, "udp") for _ in range(3)]
    assert [a.address for a in v4 if a] == [
        ("192.0.2.7", 3478),
        ("192.0.2.8", 3478),
        ("192.0.2.7", 3478),
    ]
    assert source.alternate(socket.AF_INET6, "tcp") == Alternate(("2001:db8::7", 3478))
    assert source.alternate(socket.AF_INET, "tls") == Alternate(
        ("192.0.2.7", 5349), "turn2.example.test"
    )
    assert source.alternate(socket.AF_INET6, "tls") is None  # no TLS alternate of that family
    mapped = FiveTuple("tcp", ("::ffff:198.51.100.1", 4000), ("::", 3478))
    assert lookup.alternate_for(mapped) == Alternate(("192.0.2.8", 3478))
    # This node itself is never the answer (the same list on every node): the next one is.
    on_7 = FiveTuple("udp", ("198.51.100.1", 4000), ("192.0.2.7", 3478))
    assert {lookup.alternate_for(on_7) for _ in range(4)} == {Alternate(("192.0.2.8", 3478))}
    alone = CoreLookup(StaticAlternates(["192.0.2.7:3478"], []))
    assert alone.alternate_for(on_7) is None
    for bad, said in (
        ("turn.example.test:3478", "must be [NAME@]IP:PORT"),
        ("2001:db8::7:3478", "[IP]:PORT"),
        ("bad_name@192.0.2.7:5349", "DNS name"),
    ):
        with pytest.raises(ValueError, match=re.escape(said)):
            parse_alternate_server(bad)
