"""coturn's ``turnutils_uclient`` against a real ``iceward serve``.

``-y`` is client-to-client mode: uclient allocates relays for pairs of its own sessions (2 clients,
each with an RTP and an RTCP session), binds channels to each other's relayed addresses (or, with
``-s``, uses Send/Data indications) and streams ``-n`` messages per session through the server.
It prints its totals (``tot_send_msgs=N, tot_recv_msgs=N``) and ``Total lost packets``; the server
logs one ``allocation end`` line per allocation with what it relayed. Both sides are checked.

Transports: UDP, TCP (``-t``) and TLS (``-t -S``; ``-S`` alone would be DTLS, which iceward does
not serve). Credentials: the static long-term user and a TURN REST credential uclient derives from
the shared secret (``-W``). uclient has no realm option (``-r`` is the peer port): it takes the
realm from the server's 401 challenge.

uclient starts each session after a random 1-6 s delay, so every successful run takes a few
seconds whatever the message count: the static-user and the REST client of a case therefore run
at the same time against one server (their allocations are told apart in its log by user).
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from iceward.turn.credentials import rest_password
from tests.conftest import HOST, CertAuthority, RunningServer, require_tool

pytestmark = pytest.mark.realclient

SECRET = "test-shared-secret"
MESSAGES = 50
MESSAGE_LENGTH = 170
UCLIENT_TIMEOUT = 40.0
LOG_WAIT = 10.0
# -y client-to-client, -n messages per session, -m clients (each with an RTP and an RTCP session),
# -l payload bytes, -z milliseconds between messages.
TRAFFIC = ("-y", "-n", str(MESSAGES), "-m", "2", "-l", str(MESSAGE_LENGTH), "-z", "5")

TRANSPORT_FLAGS = {"udp": (), "tcp": ("-t",), "tls": ("-t", "-S")}
STATIC = ("-u", "alice", "-w", "wonderland")
REST = ("-W", SECRET, "-u", "someone")
CREDENTIALS = {"static": STATIC, "rest": REST}
EXPECTED_USER = {"static": r"alice", "rest": r"\d+:someone"}

TOTALS = re.compile(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)")
LOST = re.compile(r"Total lost packets (\d+)")
ALLOCATION_END = re.compile(
    r"allocation end client=(?P<client>\S+) user='(?P<user>[^']*)' reason='(?P<reason>[^']*)' "
    r".*to_peer_packets=(?P<to_peer>\d+) to_peer_bytes=\d+ "
    r"to_client_packets=(?P<to_client>\d+) to_client_bytes=\d+"
)


@pytest.fixture(scope="module")
def uclient() -> str:
    return require_tool("turnutils_uclient")


@dataclass
class UclientRun:
    returncode: int
    output: str

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def run_uclients(binary: str, port: int, runs: dict[str, tuple[str, ...]]) -> dict[str, UclientRun]:
    """Run one uclient per entry of ``runs`` (its flags) at the same time; their results."""
    procs = {
        name: subprocess.Popen(
            [binary, *flags, "-p", str(port), HOST],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for name, flags in runs.items()
    }
    deadline = time.monotonic() + UCLIENT_TIMEOUT
    results: dict[str, UclientRun] = {}
    try:
        for name, proc in procs.items():
            try:
                out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                pytest.fail(
                    f"uclient ({name}) did not finish in {UCLIENT_TIMEOUT} s: {proc.args}\n"
                    + out.decode(errors="replace")[-3000:]
                )
            results[name] = UclientRun(proc.returncode, out.decode(errors="replace"))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def run_uclient(binary: str, port: int, *flags: str) -> UclientRun:
    return run_uclients(binary, port, {"uclient": flags})["uclient"]


def server_port(server: RunningServer, transport: str) -> int:
    return server.tls_port if transport == "tls" else server.port


def allocation_ends(server: RunningServer, user_pattern: str) -> list[dict[str, str]]:
    ends = (m.groupdict() for m in ALLOCATION_END.finditer(server.log_text()))
    return [e for e in ends if re.fullmatch(user_pattern, e["user"])]


def wait_for_relayed(
    server: RunningServer, user_pattern: str, sent: int, received: int
) -> list[dict[str, str]]:
    """That user's ``allocation end`` lines, once they account for all its traffic (or timeout).

    uclient ends its allocations with a Refresh of lifetime 0 (TCP/TLS: also by closing), which
    the server may process just after uclient has exited.
    """
    deadline = time.monotonic() + LOG_WAIT
    while True:
        ends = allocation_ends(server, user_pattern)
        to_peer = sum(int(e["to_peer"]) for e in ends)
        to_client = sum(int(e["to_client"]) for e in ends)
        if (to_peer >= sent and to_client >= received) or time.monotonic() > deadline:
            return ends
        time.sleep(0.1)


def assert_relayed(run: UclientRun, server: RunningServer, user_pattern: str) -> None:
    """uclient delivered every message, and the server's allocation logs account for them."""
    assert run.returncode == 0, f"uclient exited {run.returncode}:\n{run.tail()}"
    totals = TOTALS.findall(run.output)
    assert totals, f"no final tot_send_msgs/tot_recv_msgs line:\n{run.tail()}"
    sent, received = map(int, totals[-1])
    assert sent > 0, f"uclient sent nothing:\n{run.tail()}"
    assert received == sent, f"sent {sent} but received {received}:\n{run.tail()}"
    sessions, rest = divmod(sent, MESSAGES)
    assert rest == 0 and sessions >= 2, f"unexpected total {sent}:\n{run.tail()}"
    lost = LOST.findall(run.output)
    assert lost == ["0"], f"lost packets reported: {lost}\n{run.tail()}"

    ends = wait_for_relayed(server, user_pattern, sent, received)
    log = server.log_text()
    busy = [e for e in ends if int(e["to_peer"]) > 0 or int(e["to_client"]) > 0]
    assert len(busy) >= sessions, f"{len(busy)} allocation end lines with traffic:\n{log}"
    for end in busy:
        assert int(end["to_peer"]) > 0 and int(end["to_client"]) > 0, end
    # Every message crossed the relay once towards a peer and once towards a client.
    assert sum(int(e["to_peer"]) for e in ends) == sent, f"{ends}\n{run.tail()}"
    assert sum(int(e["to_client"]) for e in ends) == received, f"{ends}\n{run.tail()}"


def assert_relayed_for_each_credential(
    binary: str, server: RunningServer, port: int, *flags: str
) -> None:
    """A static-user uclient and a REST uclient at once (told apart in the log by user)."""
    runs = run_uclients(
        binary, port, {name: (*TRAFFIC, *flags, *cred) for name, cred in CREDENTIALS.items()}
    )
    for name, run in runs.items():
        assert_relayed(run, server, EXPECTED_USER[name])
    assert "auth refused" not in server.log_text()


def assert_refused(run: UclientRun, server: RunningServer, username: str, reason: str) -> None:
    assert run.returncode != 0, f"uclient succeeded with bad credentials:\n{run.tail()}"
    assert "Cannot complete Allocation" in run.output, run.tail()
    log = server.log_text()
    refusals = re.findall(r"auth refused client=\S+ username='([^']*)' reason='([^']*)'", log)
    assert refusals, f"no 'auth refused' in the server log:\n{log}"
    for name, why in refusals:
        assert re.fullmatch(username, name), (name, why)
        assert reason in why, (name, why)
    assert "allocation start" not in log, log


@pytest.mark.parametrize("transport", list(TRANSPORT_FLAGS))
def test_client_to_client_relay(
    make_server: Callable[..., RunningServer], uclient: str, transport: str
) -> None:
    server = make_server()
    assert_relayed_for_each_credential(
        uclient, server, server_port(server, transport), *TRANSPORT_FLAGS[transport]
    )


def test_send_indications_over_udp(make_server: Callable[..., RunningServer], uclient: str) -> None:
    """``-s``: Send/Data indications instead of channels (CreatePermission, no ChannelBind)."""
    server = make_server()
    assert_relayed_for_each_credential(uclient, server, server.port, "-s")


def test_tls_with_ca_signed_certificate(
    make_server: Callable[..., RunningServer], uclient: str, test_ca: CertAuthority
) -> None:
    server = make_server(cert=(test_ca.cert, test_ca.key))
    # The server presents the configured certificate: it verifies against the test CA for the
    # address uclient dials (uclient's own -E check is lax, so this is checked here directly).
    context = ssl.create_default_context(cafile=str(test_ca.ca_cert))
    with (
        socket.create_connection((HOST, server.tls_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert_relayed_for_each_credential(
        uclient, server, server.tls_port, "-t", "-S", "-E", str(test_ca.ca_cert)
    )


@pytest.mark.parametrize("transport", list(TRANSPORT_FLAGS))
def test_wrong_password_refused(
    make_server: Callable[..., RunningServer], uclient: str, transport: str
) -> None:
    server = make_server()
    run = run_uclient(
        uclient,
        server_port(server, transport),
        *TRAFFIC,
        *TRANSPORT_FLAGS[transport],
        "-u",
        "alice",
        "-w",
        "not-the-password",
    )
    assert_refused(run, server, "alice", "wrong credential")


def test_rest_credential_from_wrong_secret_refused(
    make_server: Callable[..., RunningServer], uclient: str
) -> None:
    server = make_server()
    run = run_uclient(uclient, server.port, *TRAFFIC, "-W", "not-the-secret", "-u", "someone")
    assert_refused(run, server, r"\d+:someone", "wrong credential")


def test_expired_rest_credential_refused(
    make_server: Callable[..., RunningServer], uclient: str
) -> None:
    """A REST username whose expiry has passed, with the right HMAC password, is refused."""
    server = make_server()
    username = f"{int(time.time()) - 120}:someone"
    password = rest_password(SECRET, username)
    run = run_uclient(uclient, server.port, *TRAFFIC, "-u", username, "-w", password)
    assert_refused(run, server, re.escape(username), "REST credential expired")
