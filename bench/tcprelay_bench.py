"""RFC 6062 TCP relaying: what the splice costs the server, ``python bench/tcprelay_bench.py``.

One ``iceward serve --workers 1`` on 127.0.0.1 (started here, stopped at exit) and a TCP echo
peer on 127.0.0.2 (a thread of this process). Each of ``--pairs`` clients allocates a TCP relay,
Connects to the echo peer and binds a data connection; then all of them stream ``--megabytes``
each through the relay and read it back (chunks of ``--chunk`` bytes, one thread per client, a
window of 1 MiB in flight). Reported: the wall time and the rate (both directions summed, which
on this shared machine is only indicative) and the server's CPU time (utime+stime from
/proc/PID/stat over the window) per relayed MiB, the figure that stays meaningful when the
machine is busy. Everything stays on loopback.
Example: ``python bench/tcprelay_bench.py --pairs 4 --megabytes 64``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from iceward.stun import attributes as A
from iceward.stun import constants as C
from iceward.stun.integrity import long_term_key
from iceward.stun.message import Message, encode_message, parse_message

HOST, PEER = "127.0.0.1", "127.0.0.2"
USER, PASSWORD = "bench", "bench-password"
MIB = 1 << 20


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1 << 16):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class Stun:
    """A blocking long-term-credential client on one TCP connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.realm = self.nonce = ""
        self.buf = b""

    def _read(self) -> Message:
        while len(self.buf) < 20 or len(self.buf) < 20 + int.from_bytes(self.buf[2:4], "big"):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        size = 20 + int.from_bytes(self.buf[2:4], "big")
        frame, self.buf = self.buf[:size], self.buf[size:]
        return parse_message(frame)

    def request(self, method: int, attrs: list[tuple[int, bytes]], txid: bytes) -> Message:
        for _ in range(3):
            full = list(attrs)
            key = None
            if self.nonce:
                key = long_term_key(USER, self.realm, PASSWORD)
                full += [
                    (C.USERNAME, USER.encode()),
                    (C.REALM, self.realm.encode()),
                    (C.NONCE, self.nonce.encode()),
                ]
            self.sock.sendall(encode_message(method, C.REQUEST, txid, full, integrity_key=key))
            reply = self._read()
            if reply.cls == C.SUCCESS:
                return reply
            code = A.decode_error_code(reply.get(C.ERROR_CODE) or b"")[0]
            if code not in (401, 438):
                raise RuntimeError(f"method {method:#x}: error {code}")
            self.realm = (reply.get(C.REALM) or b"").decode()
            self.nonce = (reply.get(C.NONCE) or b"").decode()
        raise RuntimeError("authentication failed")


def relay_pair(port: int, peer: tuple[str, int]) -> tuple[Stun, socket.socket]:
    """A control connection with a TCP allocation connected to ``peer``, and its bound data
    connection."""
    control = Stun(port)
    transport = [(C.REQUESTED_TRANSPORT, A.encode_one_byte(C.TRANSPORT_TCP))]
    control.request(C.ALLOCATE, transport, os.urandom(12))
    txid = os.urandom(12)
    control.request(
        C.CREATE_PERMISSION, [(C.XOR_PEER_ADDRESS, A.encode_xor_address(peer, txid))], txid
    )
    txid = os.urandom(12)
    reply = control.request(
        C.CONNECT, [(C.XOR_PEER_ADDRESS, A.encode_xor_address(peer, txid))], txid
    )
    data = Stun(port)
    data.request(C.CONNECTION_BIND, [(C.CONNECTION_ID, reply.get(C.CONNECTION_ID) or b"")], txid)
    return control, data.sock


def stream(sock: socket.socket, total: int, chunk: int) -> None:
    """Send ``total`` bytes and read them back, at most 1 MiB ahead."""
    payload = os.urandom(chunk)
    sent = received = 0
    sock.settimeout(30)
    while received < total:
        if sent < total and sent - received < MIB:
            sock.sendall(payload[: min(chunk, total - sent)])
            sent += min(chunk, total - sent)
            continue
        got = sock.recv(1 << 16)
        if not got:
            raise ConnectionError("relay closed the data connection")
        received += len(got)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    ready = workdir / "ready.json"
    cmd = [sys.executable, "-m", "iceward", "serve", "--listen", HOST, "--port", "0"]
    cmd += ["--tls-port", "0", "--http", "off", "--workers", "1", "--log-level", "warning"]
    cmd += ["--data-dir", str(workdir / "data"), "--ready-file", str(ready)]
    cmd += ["--user", f"{USER}:{PASSWORD}", "--allow-peer", f"{PEER}/32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("iceward serve did not start")
        time.sleep(0.05)
    time.sleep(0.2)
    return proc, int(json.loads(ready.read_text())["port"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4, help="clients, each with one pair")
    parser.add_argument("--megabytes", type=int, default=32, help="MiB each client streams")
    parser.add_argument("--chunk", type=int, default=16384, help="bytes per send")
    args = parser.parse_args()
    echo = _EchoServer((PEER, 0), _Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    peer = (echo.server_address[0], echo.server_address[1])
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(Path(tmp))
        try:
            pairs = [relay_pair(port, peer) for _ in range(args.pairs)]
            total = args.megabytes * MIB
            threads = [
                threading.Thread(target=stream, args=(data, total, args.chunk)) for _, data in pairs
            ]
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - cpu0
        finally:
            proc.terminate()
            proc.wait(10)
    relayed = 2 * args.pairs * args.megabytes  # MiB through the server, both directions
    print(f"pairs={args.pairs} MiB/client={args.megabytes} chunk={args.chunk}")
    print(f"relayed {relayed} MiB in {wall:.2f} s: {relayed / wall:.0f} MiB/s (wall, indicative)")
    print(f"server CPU {cpu:.2f} s: {cpu / relayed * 1e3:.2f} ms per relayed MiB")


if __name__ == "__main__":
    main()
