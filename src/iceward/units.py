"""Durations (``90d``, ``12h``) and byte sizes (``10GB``, ``512MiB``) as people write them.

A leaf: settings, commands and the usage package read the same words the same way.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}

#: One relayed gigabyte, as transit is priced: 10^9 bytes.
GB = 10**9


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (``30``, ``90s``, ``15m``, ``12h``, ``30d``, ``2w``); ValueError."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (like 90s, 15m, 12h, 30d, 2w)")
    return float(match[1]) * _SECONDS[(match[2] or "s").lower()]


def parse_size(text: str) -> int:
    """Bytes in ``text`` (``500``, ``10GB`` = 10^10, ``2GiB`` = 2 * 2^30); ValueError."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size (like 500MB, 10GB, 2GiB)")
    unit = (match[2] or "").lower().removesuffix("b")
    binary = unit.endswith("i")
    power = _POWERS.get(unit.removesuffix("i"))
    if power is None or (binary and power == 0):
        raise ValueError(f"{text!r} is not a size (like 500MB, 10GB, 2GiB)")
    return int(float(match[1]) * (1024 if binary else 1000) ** power)


def format_size(nbytes: float) -> str:
    """``nbytes`` in the largest decimal unit that keeps a digit before the point."""
    for unit, power in (("TB", 4), ("GB", 3), ("MB", 2), ("kB", 1)):
        if abs(nbytes) >= 1000**power:
            return f"{nbytes / 1000**power:.2f} {unit}"
    return f"{int(nbytes)} B"
