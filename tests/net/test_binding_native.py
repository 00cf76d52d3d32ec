"""STUN Binding answered by the native engine: the same bytes and the same counts as the core.

A Binding request that needs nothing but the client's address (no attributes, SOFTWARE,
FINGERPRINT) is answered in C; anything else (CHANGE-REQUEST, an unknown comprehension-required
attribute, a wrong FINGERPRINT, ...) still goes to the Python core. The servers here run the
native path and the pure-Python path (``ICEWARD_FASTPATH=0``) side by side and must answer every
request alike, byte for byte, and count it alike in /metrics.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest

from iceward.net.fastpath import LISTENER
from iceward.stun import constants as C
from iceward.stun.message import encode_message
from tests.api.test_api import http, metric
from tests.conftest import RunningServer
from tests.net.test_fastpath import engine  # noqa: F401 - the engine fixture

TXID = bytes(range(1, 13))


def _wrong_fingerprint() -> bytes:
    data = bytearray(encode_message(C.BINDING, C.REQUEST, TXID, fingerprint=True))
    data[-1] ^= 0x01
    return bytes(data)


def _request(attrs: list[tuple[int, bytes]], fingerprint: bool = False) -> bytes:
    return encode_message(C.BINDING, C.REQUEST, TXID, attrs, fingerprint=fingerprint)


#: What the engine answers alone.
NATIVE = [
    _request([]),
    _request([], fingerprint=True),
    _request([(C.SOFTWARE, b"probe 1.0")]),  # 9 bytes: padded
    _request([(C.SOFTWARE, b"probe/2")], fingerprint=True),
]
#: What still goes to the core: CHANGE-REQUEST (420 without RFC 5780), an unknown
#: comprehension-required attribute (420), an unknown optional one (success), the length field
#: lying about the datagram (dropped), a wrong FINGERPRINT (dropped).
PYTHON = [
    _request([(C.CHANGE_REQUEST, struct.pack("!I", 6))]),
    _request([(0x7F01, b"\x00\x00\x00\x00")], fingerprint=True),
    _request([(0xC0DE, b"xy")]),
    _request([(C.SOFTWARE, b"abcd")])[:-4],
    _wrong_fingerprint(),
]


def exchange(sock: socket.socket, server: tuple[str, int], data: bytes) -> bytes | None:
    sock.sendto(data, server)
    try:
        return sock.recv(2048)
    except TimeoutError:
        return None


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_native_answers_are_the_python_answers_and_counted_alike(
    make_server: Callable[..., RunningServer], monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))  # one client address for both servers: the same mapped address
        answers: dict[str, list[bytes | None]] = {}
        counted: dict[str, float] = {}
        for path in ("1", "0"):
            monkeypatch.setenv("ICEWARD_FASTPATH", path)
            extra = ("--listen", host) if ":" in host else ()
            server = make_server(*extra, tls=False)
            before = metric(http(server, "GET", "/metrics")[1], "iceward_binding_requests_total")
            sock.settimeout(2.0)
            got = [exchange(sock, (host, server.port), r) for r in NATIVE + PYTHON[:3]]
            sock.settimeout(0.3)
            got += [exchange(sock, (host, server.port), r) for r in PYTHON[3:]]
            after = metric(http(server, "GET", "/metrics")[1], "iceward_binding_requests_total")
            answers[path], counted[path] = got, after - before
            server.stop()
    native, python = answers["1"], answers["0"]
    assert all(a is not None for a in python[: len(NATIVE) + 3])
    assert python[len(NATIVE) + 3 :] == [None, None]
    assert native == python
    assert counted["1"] == counted["0"] == len(NATIVE) + 3


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_engine_answers_only_what_needs_no_python(engine: Any, host: str) -> None:  # noqa: F811
    """Switched on, the plain requests are answered (and taken once); the rest are handed back
    unchanged; switched off, everything is handed back."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_DGRAM)
    client = socket.socket(family, socket.SOCK_DGRAM)
    try:
        listener.bind((host, 0))
        listener.setblocking(False)
        client.bind((host, 0))
        client.settimeout(1.0)
        engine.add_socket(listener.fileno(), LISTENER)
        to = listener.getsockname()[:2]
        for on in (True, False):
            engine.answer_binding(on)
            for r in NATIVE + PYTHON:
                client.sendto(r, to)
            misses: list[bytes] = []
            for _ in range(50):
                misses += [data for _, data, _ in engine.poll(10)]
                if len(misses) >= len(PYTHON) + (0 if on else len(NATIVE)):
                    break
            if on:
                assert misses == PYTHON
                assert engine.take_bindings() == len(NATIVE) and engine.take_bindings() == 0
                replies = [client.recv(2048) for _ in NATIVE]
                assert all(r[:2] == b"\x01\x01" and r[8:20] == TXID for r in replies)
            else:
                assert misses == NATIVE + PYTHON
                assert engine.take_bindings() == 0
        assert engine.stats()["bindings"] == len(NATIVE)
    finally:
        listener.close()
        client.close()
