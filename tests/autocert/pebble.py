"""Debian's ``pebble`` (Let's Encrypt's test ACME server) for the tests, with a DNS responder
that resolves every name to 127.0.0.1, so its validation connections come to the server under
test on loopback."""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..conftest import HOST, free_tcp_port, make_test_ca, require_tool, stop_process


class LoopbackDns:
    """A UDP DNS responder on 127.0.0.1 (a port the kernel picks): A queries get 127.0.0.1,
    every other query an empty NOERROR answer."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.2)
        self.address = f"{HOST}:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, source = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            answer = self.answer(query)
            if answer is not None:
                self.sock.sendto(answer, source)

    @staticmethod
    def answer(query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        ident, flags, qdcount = struct.unpack_from("!HHH", query)
        if qdcount != 1:
            return None
        end = 12
        while end < len(query) and query[end] != 0:
            end += 1 + query[end]
        end += 1
        if end + 4 > len(query):
            return None
        qtype = struct.unpack_from("!H", query, end)[0]
        question = query[12 : end + 4]
        records = b""
        if qtype == 1:  # A
            records = struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(HOST)
        header = struct.pack(
            "!HHHHHH", ident, 0x8180 | (flags & 0x0100), 1, 1 if records else 0, 0, 0
        )
        return header + question + records

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(2)


@dataclass
class Pebble:
    proc: subprocess.Popen[bytes]
    directory: str
    #: The CA that signed pebble's own HTTPS certificate (for the ACME client).
    api_ca: Path
    #: The root pebble issues certificates under (for TLS clients of the server under test).
    issuing_root: Path
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_pebble(
    workdir: Path, *, tls_port: int = 5001, http_port: int = 5002, validity: int = 3600
) -> Iterator[Pebble]:
    """pebble validating on ``tls_port`` (TLS-ALPN-01) and ``http_port`` (HTTP-01) of
    127.0.0.1, issuing certificates valid ``validity`` seconds."""
    binary = require_tool("pebble")
    workdir.mkdir(parents=True, exist_ok=True)
    ca = make_test_ca(workdir / "pebble-ca", ("localhost", HOST))
    dns = LoopbackDns()
    try:
        for _ in range(5):
            listen, management = free_tcp_port(), free_tcp_port()
            config = {
                "pebble": {
                    "listenAddress": f"{HOST}:{listen}",
                    "managementListenAddress": f"{HOST}:{management}",
                    "certificate": str(ca.cert),
                    "privateKey": str(ca.key),
                    "httpPort": http_port,
                    "tlsPort": tls_port,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                    "certificateValidityPeriod": validity,
                }
            }
            config_path = workdir / "pebble.json"
            config_path.write_text(json.dumps(config))
            log_path = workdir / "pebble.log"
            env = {
                **os.environ,
                "PEBBLE_VA_NOSLEEP": "1",
                "PEBBLE_WFE_NONCEREJECT": "0",
                "PEBBLE_AUTHZREUSE": "0",
            }
            with log_path.open("wb") as log_file:
                proc = subprocess.Popen(
                    [binary, "-config", str(config_path), "-dnsserver", dns.address],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=workdir,
                )
            context = ssl.create_default_context(cafile=str(ca.ca_cert))
            root = _wait_for_root(proc, f"https://{HOST}:{management}/roots/0", context)
            if root is None:
                stop_process(proc)
                continue
            issuing_root = workdir / "issuing-root.pem"
            issuing_root.write_bytes(root)
            pebble = Pebble(
                proc, f"https://{HOST}:{listen}/dir", ca.ca_cert, issuing_root, log_path
            )
            try:
                yield pebble
            finally:
                stop_process(proc)
            return
        raise RuntimeError(f"pebble did not start:\n{log_path.read_text(errors='replace')}")
    finally:
        dns.close()


def _wait_for_root(
    proc: subprocess.Popen[bytes], url: str, context: ssl.SSLContext
) -> bytes | None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return bytes(response.read())
        except OSError:
            time.sleep(0.1)
    return None
