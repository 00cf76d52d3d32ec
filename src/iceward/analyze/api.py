"""One call from a file to findings: load, parse (by format), apply the rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iceward.analyze.getstats import parse_getstats
from iceward.analyze.internals import parse_internals
from iceward.analyze.load import DEFAULT_MAX_BYTES, InputError, LoadedInput, load
from iceward.analyze.model import PeerConnectionReport
from iceward.analyze.rtcstats import parse_rtcstats
from iceward.analyze.rules import analyze
from iceward.diagnose import Finding


@dataclass(slots=True)
class Analysis:
    path: str
    format: str
    size: int
    compressed: bool
    reports: list[PeerConnectionReport]
    findings: list[Finding]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 healthy (info only), 1 problems found (any error or warning)."""
        return 1 if any(f.severity in ("error", "warning") for f in self.findings) else 0


def analyze_loaded(loaded: LoadedInput, path: str) -> Analysis:
    if loaded.format == "webrtc-internals":
        reports, meta = parse_internals(loaded.data)
    elif loaded.format == "rtcstats":
        reports, meta = parse_rtcstats(loaded.data)
    else:
        reports, meta = parse_getstats(loaded.data)
    if not reports:
        raise InputError(
            "no PeerConnection in this input (download the dump while the call is open, or"
            " before the tab that made the call is closed)"
        )
    findings = analyze(reports)
    return Analysis(path, loaded.format, loaded.size, loaded.compressed, reports, findings, meta)


def analyze_path(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Analysis:
    """Raises :class:`InputError` (one line for the user) when the input is unusable."""
    loaded = load(path, max_bytes)
    try:
        return analyze_loaded(loaded, str(path))
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        # A shape the parsers did not expect deep inside otherwise valid JSON.
        raise InputError(
            f"{path}: unexpected content for a {loaded.format} input ({type(exc).__name__}: {exc})"
        ) from None
