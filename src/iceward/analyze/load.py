"""Read an input file, gzip or plain, within a size limit, and tell which format it is.

Every problem with the input raises :class:`InputError` with one line a user can act on; the
command prints it and exits 2.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
RTCSTATS_MAGIC = "RTCStatsDump"
#: The browser test page's report format (``GET /api/v1/reports/ID``).
TEST_REPORT = "iceward-test-report"


class InputError(Exception):
    """The input cannot be analysed; the message is one line for the user."""


@dataclass(slots=True)
class LoadedInput:
    format: str  # "webrtc-internals", "rtcstats", "getstats", "iceward-test-report"
    #: The parsed JSON (webrtc-internals, getstats, a test page report without getStats() data)
    #: or the text lines (rtcstats).
    data: Any
    size: int
    compressed: bool
    #: Findings a browser test page report brought along (unchecked JSON; see analyze/api.py).
    page_findings: list[Any] = field(default_factory=list)


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``100K``, ``1000`` (bytes) → bytes."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = 1
    for suffix, mult in (("K", 1024), ("M", 1024**2), ("G", 1024**3)):
        if value.endswith(suffix):
            value, factor = value[:-1], mult
            break
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 512M)") from None
    if number <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return int(number * factor)


def _human(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.0f} {unit}"
    return f"{n} bytes"


def read_bytes(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[bytes, bool]:
    """The file's content, gunzipped when it is gzip; never more than ``max_bytes``."""
    try:
        with path.open("rb") as fh:
            head = fh.read(2)
            if head != GZIP_MAGIC:
                size = path.stat().st_size
                if size > max_bytes:
                    raise InputError(
                        f"{path} is {_human(size)}, over the {_human(max_bytes)} limit (--max-size)"
                    )
                return head + fh.read(), False
            return head + fh.read(max_bytes + 1), True
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a dump file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def gunzip(raw: bytes, max_bytes: int, name: str) -> bytes:
    """Decompress every gzip member, refusing output over ``max_bytes`` (gzip bombs)."""
    out: list[bytes] = []
    total = 0
    data = raw
    while data:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            while True:
                chunk = d.decompress(data, 1 << 20)
                total += len(chunk)
                if total > max_bytes:
                    raise InputError(
                        f"{name} decompresses to more than the {_human(max_bytes)} limit"
                        " (--max-size)"
                    )
                out.append(chunk)
                data = d.unconsumed_tail
                if d.eof:
                    break
                if not data:
                    rest = d.flush()
                    total += len(rest)
                    if total > max_bytes:
                        raise InputError(
                            f"{name} decompresses to more than the {_human(max_bytes)} limit"
                            " (--max-size)"
                        )
                    out.append(rest)
                    break
        except zlib.error as exc:
            raise InputError(f"{name} is not valid gzip data ({exc})") from None
        if not d.eof:
            raise InputError(f"{name} is a truncated gzip file (it ends mid-stream)")
        data = d.unused_data.lstrip(b"\0")
    return b"".join(out)


def load(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> LoadedInput:
    raw, compressed = read_bytes(path, max_bytes)
    if compressed:
        if len(raw) > max_bytes:
            raise InputError(f"{path} is over the {_human(max_bytes)} limit (--max-size)")
        raw = gunzip(raw, max_bytes, str(path))
    return detect(raw, str(path), compressed)


def detect(raw: bytes, name: str = "input", compressed: bool = False) -> LoadedInput:
    """Tell the format from the content (never from the file name)."""
    size = len(raw)
    head = raw[:4096].lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
        head = head[3:].lstrip()
    if not head and not raw.strip():
        raise InputError(f"{name} is empty")
    if head.startswith(RTCSTATS_MAGIC.encode()):
        return LoadedInput("rtcstats", _text(raw, name).lstrip().splitlines(), size, compressed)
    try:
        # Parsed from the bytes: no second, decoded copy of a big dump in memory.
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise InputError(f"{name} is not text (not JSON, not an rtcstats dump, not gzip)") from None
    except json.JSONDecodeError as exc:
        if b"\0" in head or not _utf8_prefix(head):
            raise InputError(
                f"{name} is not text (not JSON, not an rtcstats dump, not gzip)"
            ) from None
        first = head.split(b"\n", 1)[0].strip()
        if first.startswith(b"{") and b'"fileFormat"' in first:
            return LoadedInput("rtcstats", _text(raw, name).lstrip().splitlines(), size, compressed)
        raise InputError(
            f"{name} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if isinstance(data, dict) and "PeerConnections" in data:
        if not isinstance(data["PeerConnections"], dict):
            raise InputError(f"{name}: 'PeerConnections' is not an object: not a usable dump")
        return LoadedInput("webrtc-internals", data, size, compressed)
    if is_getstats(data):
        return LoadedInput("getstats", data, size, compressed)
    if isinstance(data, dict) and data.get("format") == TEST_REPORT:
        # A browser test page report (/api/v1/reports/ID): its getStats() snapshot is analysed,
        # and the page's own findings (from its per-transport probes) are carried along. When
        # no relay test got far enough to record stats (the user whose calls fail), the page's
        # findings are the analysis.
        carried = data.get("findings")
        findings = carried if isinstance(carried, list) else []
        if is_getstats(data.get("getStats")):
            return LoadedInput("getstats", data["getStats"], size, compressed, findings)
        if not findings:
            raise InputError(
                f"{name} is an iceward test page report with neither findings nor getStats() data"
            )
        return LoadedInput(TEST_REPORT, data, size, compressed, findings)
    raise InputError(f"{name} is JSON but {describe_shape(data)}: {EXPECTED}")


def _utf8_prefix(head: bytes) -> bool:
    """Whether ``head`` (maybe cut inside a multi-byte character) is UTF-8."""
    for cut in range(4):
        try:
            head[: len(head) - cut].decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


def _text(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{name} is not text (not UTF-8)") from None


EXPECTED = (
    "expected a webrtc-internals dump, an rtcstats dump or a getStats() export"
    " (array or map of stats objects)"
)


def describe_shape(data: Any) -> str:
    if isinstance(data, dict):
        keys = ", ".join(sorted(str(k) for k in data)[:5]) or "none"
        return f"an object with keys {keys}"
    if isinstance(data, list):
        return f"an array of {len(data)} item(s) that are not stats objects"
    return f"a {type(data).__name__}"


def _is_stats_object(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("type"), str)


def is_snapshot(obj: Any) -> bool:
    if isinstance(obj, list):
        return bool(obj) and all(_is_stats_object(o) for o in obj)
    if isinstance(obj, dict):
        values = [v for k, v in obj.items() if k != "timestamp"]
        return bool(values) and all(_is_stats_object(v) for v in values)
    return False


def is_getstats(data: Any) -> bool:
    """One snapshot (array or map of stats objects) or a list of snapshots."""
    if is_snapshot(data):
        return True
    return isinstance(data, list) and bool(data) and all(is_snapshot(s) for s in data)
