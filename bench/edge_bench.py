"""What the shared TLS port costs a connection: new connections per second, one after another.

    .venv/bin/python bench/edge_bench.py                  # 300 connections per case
    .venv/bin/python bench/edge_bench.py --count 1000 --workers 2

Each case opens a connection, gets one answer and closes, against one ``iceward serve`` on
loopback: a STUN Binding over TCP on the plain port (no prelude) and on the TLS port (the first
byte peeked), the same after a PROXY v2 header from a trusted source, a Binding over TLS on the
TLS port (handshake, then routed by its first decrypted bytes), and ``GET /healthz`` over HTTPS
on the TLS port (ALPN http/1.1) beside plain HTTP on the API's own port.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from iceward.stun import constants as C
from iceward.stun import encode_message

HOST = "127.0.0.1"
PROXY_V2 = (
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"
    + socket.inet_aton("198.51.100.7")
    + socket.inet_aton(HOST)
    + b"\x9c\x40\x0d\x96"
)


def start(
    workdir: Path, workers: int, extra: tuple[str, ...] = ("--max-connections-per-source", "100000")
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """One ``iceward serve`` on loopback with ``extra`` flags (by default no per-source cap, so
    the cases measure the port, not the limit)."""
    ready = workdir / "ready.json"
    cmd = [sys.executable, "-m", "iceward", "serve", "--listen", HOST, "--port", "0"]
    cmd += ["--tls-port", "-1", "--http", f"{HOST}:0", "--data-dir", str(workdir / "data")]
    cmd += ["--workers", str(workers), "--ready-file", str(ready), "--log-level", "warning"]
    cmd += ["--proxy-protocol-from", f"{HOST}/32", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit("iceward serve did not start")
        time.sleep(0.05)
    doc = json.loads(ready.read_text())
    return proc, {
        "port": doc["port"],
        "tls": doc["tls_port"],
        "http": int(doc["http"].rpartition(":")[2]),
    }


def binding() -> bytes:
    return encode_message(C.BINDING, C.REQUEST, os.urandom(12), fingerprint=True)


def stun_tcp(port: int, prefix: bytes = b"", source: str = HOST) -> None:
    with socket.create_connection((HOST, port), timeout=5, source_address=(source, 0)) as s:
        s.sendall(prefix + binding())
        assert s.recv(2048)[:2] == b"\x01\x01"


def stun_tls(port: int) -> None:
    ctx = ssl._create_unverified_context()
    with (
        socket.create_connection((HOST, port), timeout=5, source_address=("127.0.0.2", 0)) as raw,
        ctx.wrap_socket(raw) as s,
    ):
        s.sendall(binding())
        assert s.recv(2048)[:2] == b"\x01\x01"


def http_get(port: int, tls: bool) -> None:
    raw = socket.create_connection((HOST, port), timeout=5, source_address=("127.0.0.2", 0))
    if tls:
        ctx = ssl._create_unverified_context()
        ctx.set_alpn_protocols(["http/1.1"])
        raw = ctx.wrap_socket(raw)
    with raw as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.1 200")


def rate(count: int, once: Callable[[], None]) -> float:
    once()  # warm up
    start = time.perf_counter()
    for _ in range(count):
        once()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, ports = start(Path(tmp), args.workers)
        try:
            cases: dict[str, Callable[[], None]] = {
                "STUN over TCP, plain port": lambda: stun_tcp(ports["port"], source="127.0.0.2"),
                "STUN over TCP, TLS port": lambda: stun_tcp(ports["tls"], source="127.0.0.2"),
                "PROXY v2 + STUN, plain port": lambda: stun_tcp(ports["port"], PROXY_V2),
                "STUN over TLS, TLS port": lambda: stun_tls(ports["tls"]),
                "HTTP GET, API port": lambda: http_get(ports["http"], False),
                "HTTPS GET, TLS port": lambda: http_get(ports["tls"], True),
            }
            print(f"{args.count} connections per case, {args.workers} worker(s)")
            for name, once in cases.items():
                print(f"{name:30} {rate(args.count, once):8.0f} connections/s")
        finally:
            proc.terminate()
            proc.wait(15)


if __name__ == "__main__":
    main()
