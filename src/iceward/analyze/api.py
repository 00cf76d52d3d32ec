"""One call from a file to findings: load, parse (by format), apply the rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iceward.analyze.getstats import parse_getstats
from iceward.analyze.internals import parse_internals
from iceward.analyze.load import DEFAULT_MAX_BYTES, TEST_REPORT, InputError, LoadedInput, load
from iceward.analyze.model import PeerConnectionReport
from iceward.analyze.rtcstats import parse_rtcstats
from iceward.analyze.rules import analyze
from iceward.diagnose import Finding
from iceward.diagnose.findings import CODES, make_finding, rank


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
    if loaded.format == TEST_REPORT:
        return _page_only(loaded, path)
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
    carried = page_findings(loaded.page_findings)
    if carried:
        seen = {(f.code, f.subject) for f in findings}
        findings = rank(findings + [f for f in carried if (f.code, f.subject) not in seen])
    return Analysis(path, loaded.format, loaded.size, loaded.compressed, reports, findings, meta)


def _page_only(loaded: LoadedInput, path: str) -> Analysis:
    """A test page report without getStats() data (no relay test connected): the page's own
    findings, with its one-line answer and what it tested."""
    report: dict[str, Any] = loaded.data
    findings = rank(page_findings(loaded.page_findings))
    if not findings:
        raise InputError("an iceward test page report whose findings are none of the known codes")
    urls = report.get("urls")
    meta: dict[str, Any] = {
        "answer": _text(report.get("answer")),
        "summary": _text(report.get("summary")),
        "recordedAt": _text(report.get("createdAt")),
        "urls": [_text(u) for u in urls[:_MAX_EVIDENCE]] if isinstance(urls, list) else [],
        "note": "a browser test page report without getStats() data (no relay test connected):"
        " the findings are the page's own",
    }
    return Analysis(path, loaded.format, loaded.size, loaded.compressed, [], findings, meta)


def _text(value: Any) -> str | None:
    return str(value)[:_MAX_TEXT] if isinstance(value, str) else None


#: Bounds on what a (possibly edited) test page report may carry into the analysis.
_MAX_CARRIED, _MAX_EVIDENCE, _MAX_TEXT = 100, 20, 500


def page_findings(items: list[Any]) -> list[Finding]:
    """The browser test page's own findings (its per-transport probes saw what a getStats()
    snapshot cannot, such as relay ports dropped by a firewall), for codes of the vocabulary;
    anything else in a hand-edited report is left out."""
    out: list[Finding] = []
    for item in items[:_MAX_CARRIED]:
        if not isinstance(item, dict) or item.get("code") not in CODES:
            continue
        severity = item.get("severity")
        evidence = item.get("evidence")
        lines = (
            [str(e)[:_MAX_TEXT] for e in evidence[:_MAX_EVIDENCE]]
            if isinstance(evidence, list)
            else []
        )
        subject = item.get("subject")
        out.append(
            make_finding(
                item["code"],
                ["seen by the browser test page", *lines],
                severity=severity if severity in ("error", "warning", "info") else None,
                subject=str(subject)[:_MAX_TEXT] if isinstance(subject, str) else None,
            )
        )
    return out


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
