"""A tiny MaxMind DB writer for tests (the ``maxminddb`` package only reads): an IPv6 search
tree with 32-bit records (IPv4 networks under ::/96, where readers look them up), maps,
strings, arrays and unsigned integers in the data section, and the metadata readers check.
Networks must not overlap."""

from __future__ import annotations

import ipaddress
import struct
import time
from pathlib import Path
from typing import Any

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"


def _control(kind: int, size: int) -> bytes:
    """A field's control byte(s): type, then size (RFC-like spec section 'Data Field Format')."""
    if size < 29:
        head, tail = size, b""
    elif size < 29 + 256:
        head, tail = 29, bytes([size - 29])
    elif size < 285 + 65536:
        head, tail = 30, struct.pack(">H", size - 285)
    else:
        head, tail = 31, struct.pack(">I", size - 65821)[1:]
    if kind <= 7:
        return bytes([(kind << 5) | head]) + tail
    return bytes([head, kind - 7]) + tail


class U32(int):
    """An integer written as uint32 whatever its size (metadata types are checked)."""


class U64(int):
    """An integer written as uint64."""


def encode(value: Any) -> bytes:
    if isinstance(value, str):
        raw = value.encode()
        return _control(2, len(raw)) + raw
    if isinstance(value, bool):
        return _control(14, int(value))
    if isinstance(value, int):
        if value < 0:
            raise ValueError("only unsigned integers")
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        kind = 5 if value < 1 << 16 else 6 if value < 1 << 32 else 9
        kind = 9 if isinstance(value, U64) else 6 if isinstance(value, U32) else kind
        return _control(kind, len(raw)) + raw
    if isinstance(value, dict):
        out = _control(7, len(value))
        for key, item in value.items():
            out += encode(str(key)) + encode(item)
        return out
    if isinstance(value, list):
        return _control(11, len(value)) + b"".join(encode(v) for v in value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def _bits(network: str) -> list[int]:
    net = ipaddress.ip_network(network, strict=False)
    if net.version == 4:
        address, length = int(net.network_address), 96 + net.prefixlen
    else:
        address, length = int(net.network_address), net.prefixlen
    return [(address >> (127 - i)) & 1 for i in range(length)]


def write_mmdb(path: Path, records: dict[str, dict[str, Any]]) -> Path:
    """``records``: network (CIDR) -> record; written to ``path`` as a MaxMind DB."""
    # Nodes: [left, right]; an entry is ("node", index), ("data", offset) or None.
    nodes: list[list[tuple[str, int] | None]] = [[None, None]]
    data = b""
    for network, record in records.items():
        offset = len(data)
        data += encode(record)
        bits = _bits(network)
        current = 0
        for depth, bit in enumerate(bits):
            entry = nodes[current][bit]
            if depth == len(bits) - 1:
                if entry is not None:
                    raise ValueError(f"{network} overlaps another network")
                nodes[current][bit] = ("data", offset)
                break
            if entry is None:
                nodes.append([None, None])
                entry = ("node", len(nodes) - 1)
                nodes[current][bit] = entry
            if entry[0] != "node":
                raise ValueError(f"{network} overlaps another network")
            current = entry[1]
    count = len(nodes)

    def record_value(entry: tuple[str, int] | None) -> int:
        if entry is None:
            return count
        kind, value = entry
        return value if kind == "node" else count + 16 + value

    tree = b"".join(struct.pack(">II", record_value(a), record_value(b)) for a, b in nodes)
    metadata = {
        "node_count": U32(count),
        "record_size": 32,
        "ip_version": 6,
        "database_type": "iceward-test",
        "languages": ["en"],
        "binary_format_major_version": 2,
        "binary_format_minor_version": 0,
        "build_epoch": U64(int(time.time())),
        "description": {"en": "iceward fleet test regions"},
    }
    path.write_bytes(tree + b"\x00" * 16 + data + METADATA_MARKER + encode(metadata))
    return path
