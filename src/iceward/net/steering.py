"""Steer each client to one worker for good: a classic-BPF program on the reuseport group.

With ``--workers N`` every worker has its own socket on the listening address, all in one
SO_REUSEPORT group. The kernel's own choice hashes over the group's *current* sockets, so a
socket joining or leaving (a worker restarting, a connected link socket) would move clients to
another worker, which does not know their allocations. Instead the group runs this program: it
hashes the client's source address and port and returns an index below N. The supervisor creates
the N listening sockets first (indices 0..N-1) and keeps them open for its whole life, so those
indices never move; link sockets join after them and win on their exact 4-tuple anyway.

:func:`worker_for` computes the same hash in Python, so tests and tools know which worker a
client address reaches.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct

SO_ATTACH_REUSEPORT_CBPF = 51  # Linux

_NET = -0x100000  # SKF_NET_OFF: loads relative to the network header
_GOLDEN = 2654435761  # Knuth's multiplicative hash constant (2^32 / phi)

# Classic BPF opcodes (linux/filter.h).
_LD_W_ABS, _LD_H_ABS, _LD_H_IND, _LDX_B_MSH = 0x20, 0x28, 0x48, 0xB1
_TAX, _XOR_X, _MUL_K, _RSH_K, _MOD_K, _RET_A = 0x07, 0xAC, 0x24, 0x74, 0x94, 0x16


def _insn(code: int, k: int = 0) -> bytes:
    return struct.pack("HBBI", code, 0, 0, k & 0xFFFFFFFF)


def program(workers: int, ipv6: bool) -> list[bytes]:
    """The filter: fold the source address to 32 bits, XOR the source port, hash, modulo N."""
    if ipv6:  # source address at +8..+24, UDP source port at +40 (no extension headers)
        insns = [_insn(_LD_W_ABS, _NET + 8), _insn(_TAX)]
        for offset in (12, 16, 20):
            insns += [_insn(_LD_W_ABS, _NET + offset), _insn(_XOR_X), _insn(_TAX)]
        insns += [_insn(_LD_H_ABS, _NET + 40), _insn(_XOR_X)]
    else:  # X = IP header length; source port at X, source address at +12
        insns = [
            _insn(_LDX_B_MSH, _NET),
            _insn(_LD_H_IND, _NET),
            _insn(_TAX),
            _insn(_LD_W_ABS, _NET + 12),
            _insn(_XOR_X),
        ]
    insns += [_insn(_MUL_K, _GOLDEN), _insn(_RSH_K, 16), _insn(_MOD_K, workers), _insn(_RET_A)]
    return insns


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def attach(sock: socket.socket, workers: int) -> None:
    """Install the program on ``sock``'s reuseport group (OSError where the kernel cannot)."""
    insns = program(workers, sock.family == socket.AF_INET6)
    code = ctypes.create_string_buffer(b"".join(insns))
    fprog = _SockFprog(len(insns), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))


def worker_for(address: tuple[str, int], workers: int) -> int:
    """The worker index the program picks for datagrams from ``address``."""
    ip = ipaddress.ip_address(address[0].partition("%")[0])
    if ip.version == 4:
        folded = int(ip)
    else:
        packed = ip.packed
        folded = 0
        for i in range(0, 16, 4):
            folded ^= int.from_bytes(packed[i : i + 4], "big")
    return ((((folded ^ address[1]) * _GOLDEN) & 0xFFFFFFFF) >> 16) % workers
