"""The native fast path under AddressSanitizer (and UBSan), for a bounded time.

1. ``fastpath_fuzz.c`` (the engine's C core, no Python) floods real loopback sockets with valid
   and malformed datagrams (truncated ChannelData, length fields beyond the datagram, channel
   numbers out of range, random bytes; STUN Binding and TURN requests valid, signed, truncated,
   lying and mutated), unbinds and rebinds during traffic and pulls sockets from under live
   entries; it fails on any sanitizer report, any leak (LeakSanitizer at exit), any datagram
   forwarded for a removed entry, any counter short of what arrived, a Binding answer or a 401
   that is wrong (a 401's NONCE included) or answers a request that lies, and a valid Binding or
   TURN request handed back; the per-source budget and the challenge rate come and go meanwhile.
   TCP client streams: ChannelData frames served from a stream cut anywhere (and at every
   byte), with lying lengths, garbage and frames for Python between them; peer datagrams framed
   onto a TCP connection whose writes come up short, finished in order by a stand-in for the
   Python transport.
2. The extension itself, built with ASan into a temporary directory, is driven from Python
   (libasan preloaded) through its whole API, malformed floods included.

``ICEWARD_FUZZ_SECONDS`` sets the fuzz time (3 s by default).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = ROOT / "src" / "iceward" / "net"
DRIVER = Path(__file__).with_name("fastpath_fuzz.c")
SECONDS = float(os.environ.get("ICEWARD_FUZZ_SECONDS", "3"))
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
FLAGS = ["-O1", "-g", "-fno-omit-frame-pointer", "-std=gnu11", *SANITIZE]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def gcc() -> str:
    path = shutil.which("gcc")
    if path is None:
        if IN_CI:
            pytest.fail("gcc is not installed (.ci/run installs it)")
        pytest.skip("gcc is not installed")
    return path


def sanitizer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=86:halt_on_error=1"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    return env


def test_fuzz_driver_under_asan(tmp_path: Path) -> None:
    binary = tmp_path / "fastpath_fuzz"
    build = subprocess.run(
        [gcc(), *FLAGS, "-I", str(SOURCE_DIR), str(DRIVER), "-o", str(binary)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    seed = random.randrange(1, 2**63)
    run = subprocess.run(
        [str(binary), str(SECONDS), str(seed)],
        capture_output=True,
        text=True,
        timeout=SECONDS + 60,
        env=sanitizer_env(),
    )
    assert run.returncode == 0, f"seed {seed}:\n{run.stderr[-6000:]}"
    assert "0 failures" in run.stderr


PY_DRIVER = textwrap.dedent(
    """
    import os, random, socket, struct, sys, time
    import _fastpath

    seconds, seed = float(sys.argv[1]), int(sys.argv[2])
    rnd = random.Random(seed)

    def udp():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        return s

    eng = _fastpath.Engine()
    eng.answer_binding(True)
    # The 401 template: ERROR-CODE and REALM, then PASSWORD-ALGORITHMS and SOFTWARE.
    head = bytes.fromhex("0009001300000401") + b"Unauthenticated" + bytes.fromhex("0000140004")
    head += b"fuzz"
    tail = bytes.fromhex("80020008000100000002000080220004") + b"fuzz"
    methods = sum(1 << m for m in (3, 4, 8, 9, 10, 11))
    eng.answer_challenges(methods, head, tail, b"obMatJos2gAAA", os.urandom(32), 50.0)
    listener, relay, client, peer = udp(), udp(), udp(), udp()
    # IPv6: a listener and a client on ::1 (the per-source budget keys them by /64).
    listener6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    listener6.bind(("::1", 0))
    client6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    client6.bind(("::1", 0))
    client6.setblocking(False)
    eng.add_socket(listener6.fileno(), _fastpath.LISTENER)
    l6addr = listener6.getsockname()[:2]
    eng.add_socket(listener.fileno(), _fastpath.LISTENER)
    eng.add_socket(relay.fileno(), _fastpath.RELAY)
    lfd, rfd = listener.fileno(), relay.fileno()
    caddr, paddr = client.getsockname(), peer.getsockname()
    laddr, raddr = listener.getsockname(), relay.getsockname()
    # A TCP client's stream: frames read from it go out of relay2, peer2's datagrams onto it.
    stream, stream_client = socket.socketpair()
    stream.setblocking(False)
    stream_client.setblocking(False)
    relay2, peer2 = udp(), udp()
    eng.add_socket(relay2.fileno(), _fastpath.RELAY)
    sfd, r2fd, p2addr = stream.fileno(), relay2.fileno(), peer2.getsockname()
    eng.add_stream(sfd)
    eng.install_client(sfd, caddr, 0x4100, r2fd, p2addr, 1000)
    eng.install_peer(r2fd, p2addr, sfd, caddr, 0x4100, 1001)
    token = 0
    bound = set()
    sources = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = rnd.random()
        if r < 0.05:
            number = rnd.randrange(0x4000, 0x4010)
            token += 2
            eng.install_client(lfd, caddr, number, rfd, paddr, token)
            eng.install_peer(rfd, paddr, lfd, caddr, number, token + 1)
            bound.add(number)
        elif r < 0.08 and bound:
            number = bound.pop()
            eng.uninstall_client(lfd, caddr, number)
            eng.uninstall_peer(rfd, paddr)
        elif r < 0.55:
            n = rnd.randrange(0, 1500)
            body = os.urandom(n)
            kind = rnd.randrange(5)
            if kind == 4:  # a Binding or TURN request header, its length field true or not
                size = rnd.choice((n & ~3, n))
                method = rnd.choice((1, 3, 4, 8, 9, 10, 11))
                data = struct.pack("!HHI", method, size, 0x2112A442) + body[:12].ljust(12, b"x")
                data += body[12:]
            elif kind == 0:
                data = struct.pack("!HH", rnd.randrange(0x4000, 0x4010), n) + body
            elif kind == 1:
                data = struct.pack("!HH", rnd.randrange(0x4000, 0x4010), n + rnd.randrange(1, 99))
                data += body
            elif kind == 2:
                data = body[: rnd.randrange(0, 4)]
            else:
                data = struct.pack("!HH", rnd.randrange(0, 0x10000), n) + body
            try:
                client.sendto(data, laddr)
                client6.sendto(data, l6addr)
                peer.sendto(body, raddr)
            except BlockingIOError:
                pass
        elif r < 0.62:  # stream input: whole, cut, lying and garbage frames, any position
            buf = bytearray()
            for _ in range(rnd.randrange(1, 6)):
                body = os.urandom(rnd.randrange(0, 300))
                number = rnd.choice((0x4100, 0x4101, rnd.randrange(0, 0x10000)))
                size = rnd.choice((len(body), len(body) + rnd.randrange(1, 70000)))
                buf += struct.pack("!HH", number, size & 0xFFFF) + body + bytes(-len(body) & 3)
            buf = buf[: rnd.randrange(0, len(buf) + 1)]
            pos = rnd.randrange(-2, len(buf) + 3)
            try:
                end = eng.stream_input(sfd, caddr, rnd.choice((buf, bytes(buf))), pos)
                assert pos <= end <= len(buf)
            except ValueError:
                assert not 0 <= pos <= len(buf)
            peer2.sendto(os.urandom(rnd.randrange(0, 1500)), relay2.getsockname())
            eng.hold_stream(sfd, rnd.random() < 0.3)
        elif r < 0.95:
            for fd, data, addr in eng.poll(0):
                if fd == sfd:
                    assert addr is None and all(isinstance(f, bytes) for f in data)
                    continue
                assert fd in (lfd, rfd, listener6.fileno()) and isinstance(data, bytes)
                assert len(addr) == 2
            for s in (client, peer, stream_client, peer2, client6):
                try:
                    while True:
                        s.recv(65536)
                except BlockingIOError:
                    pass
        elif r < 0.97:
            eng.collect(rnd.random() < 0.5)
            eng.stats()
            eng.take_bindings()
            eng.answer_binding(rnd.random() < 0.8)
            requests, answered, dropped = eng.take_challenges()
            assert sum(n for _, n in requests) == answered + dropped
            eng.answer_challenges(
                rnd.choice((0, methods)), head, tail, b"obMatJos2gAAA", os.urandom(32),
                rnd.choice((0.0, 3.0, 50.0, 1e5)),
            )
            for bad in ((1 << 16, 1.0, head), (methods, -1.0, head), (methods, 1.0, head * 40)):
                try:
                    eng.answer_challenges(bad[0], bad[2], tail, b"p", b"k", bad[1])
                except ValueError:
                    pass
                else:
                    raise AssertionError(f"answer_challenges took {bad[:2]}")
            total, per_source = eng.take_source_drops()
            assert sum(n for _, n in per_source) <= total
            sources.update(source for source, _ in per_source)
            eng.source_budget(rnd.choice((0, 3, 50, 1e5)))
            try:
                eng.source_budget(rnd.choice((-1.0, float("nan"))))
            except ValueError:
                pass
        else:
            for bad in (("x", 1), ("1.2.3.4",), "1.2.3.4", ("::1", 70000), ("1.2.3.4", -1)):
                try:
                    eng.install_client(lfd, bad, 0x4000, rfd, paddr, 1)
                except (TypeError, ValueError, OverflowError):
                    pass
    assert sources == {"127.0.0.1", "::/64"}, sources  # both families were held to budgets
    eng.remove_socket(rfd)
    eng.remove_socket(sfd)
    eng.collect()
    eng.close()
    try:
        eng.poll(0)
    except ValueError:
        pass
    print("python driver ok")
    """
)


def test_extension_under_asan_from_python(tmp_path: Path) -> None:
    libasan = subprocess.run(
        [gcc(), "-print-file-name=libasan.so"], capture_output=True, text=True
    ).stdout.strip()
    if not libasan or not Path(libasan).exists():
        if IN_CI:
            pytest.fail("libasan.so not found next to gcc")
        pytest.skip("libasan.so not found")
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    module = tmp_path / f"_fastpath{suffix}"
    include = sysconfig.get_paths()["include"]
    build = subprocess.run(
        [
            gcc(),
            *FLAGS,
            "-shared",
            "-fPIC",
            "-I",
            include,
            str(SOURCE_DIR / "_fastpath.c"),
            "-o",
            str(module),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    script = tmp_path / "driver.py"
    script.write_text(PY_DRIVER)
    env = sanitizer_env()
    # The interpreter itself is not built for LeakSanitizer: leaks are the C driver's job.
    env["ASAN_OPTIONS"] = "detect_leaks=0:exitcode=86:halt_on_error=1"
    env["LD_PRELOAD"] = libasan
    env["PYTHONPATH"] = str(tmp_path)
    env["PYTHONMALLOC"] = "malloc"
    seed = random.randrange(1, 2**63)
    run = subprocess.run(
        [sys.executable, str(script), str(min(SECONDS, 2.0)), str(seed)],
        capture_output=True,
        text=True,
        timeout=SECONDS + 60,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, f"seed {seed}:\n{run.stdout}\n{run.stderr[-6000:]}"
    assert "python driver ok" in run.stdout
