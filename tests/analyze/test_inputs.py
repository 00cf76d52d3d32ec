"""rtcstats dumps (delta-compressed stats) and getStats() exports in every accepted shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iceward.analyze.api import analyze_path
from iceward.analyze.load import InputError, detect
from tests.analyze import samples


def test_rtcstats_delta_compressed(tmp_path: Path) -> None:
    path = samples.write(tmp_path / "dump.rtcstats", samples.rtcstats_delta(), lines=True)
    analysis = analyze_path(path)
    assert analysis.format == "rtcstats"
    pc = analysis.reports[0]
    assert pc.id == "PC_0"
    assert "delta-compressed" in pc.era
    # Decompressed: objects absent from later reports keep their values, counters advance.
    received = next(s for s in pc.flow if s.direction == "received" and s.unit == "bytes")
    assert [v for _, v in received.points] == [900 + i * 39_000 for i in range(8)]
    assert [t for t, _ in received.points][:2] == [samples.T0 + 1000, samples.T0 + 2000]
    sel = pc.selected[-1]
    assert sel.local is not None and sel.local.relay_protocol == "tcp"
    assert sel.local.url == "turn:turn.example.org:443?transport=tcp"
    assert pc.config.ice_transport_policy == "relay"
    codes = {(f.code, f.severity) for f in analysis.findings}
    assert codes == {
        ("turn-credential-expired", "warning"),
        ("static-credentials", "warning"),
        ("relay-in-use", "info"),
    }


def test_rtcstats_fresh_credential_not_flagged(tmp_path: Path) -> None:
    path = samples.write(
        tmp_path / "dump.rtcstats", samples.rtcstats_delta(expired=False), lines=True
    )
    codes = {f.code for f in analyze_path(path).findings}
    assert "turn-credential-expired" not in codes


def test_rtcstats_gzip_and_relative_times(tmp_path: Path) -> None:
    """Chromium's own rtcstats dump: times are deltas to the previous line (fileFormat 3)."""
    lines = [
        "RTCStatsDump",
        '{"fileFormat":3}',
        json.dumps(["create", None, {"hardwareConcurrency": 2}, 1_700_000_000_000]),
        json.dumps(["create", "1-1", {"iceServers": []}, "https://x.example/", 10.5]),
        json.dumps(["oniceconnectionstatechange", "1-1", '"checking"', 100]),
        json.dumps(["oniceconnectionstatechange", "1-1", '"connected"', 250]),
    ]
    analysis = analyze_path(samples.write(tmp_path / "r.gz", lines, gz=True, lines=True))
    pc = analysis.reports[0]
    assert pc.url == "https://x.example/"
    states = pc.history("iceConnection")
    assert [s.state for s in states] == ["checking", "connected"]
    assert states[0].t == 1_700_000_000_110.5 and states[1].t == 1_700_000_000_360.5


def test_rtcstats_cut_last_line_tolerated(tmp_path: Path) -> None:
    lines = samples.rtcstats_delta()
    lines[-1] = lines[-1][: len(lines[-1]) // 2]
    analysis = analyze_path(samples.write(tmp_path / "cut.rtcstats", lines, lines=True))
    assert any("cut short" in n for n in analysis.reports[0].notes)


@pytest.mark.parametrize("as_map", [False, True])
def test_getstats_single_snapshot(tmp_path: Path, as_map: bool) -> None:
    data = samples.getstats_snapshot(as_map=as_map)
    analysis = analyze_path(samples.write(tmp_path / "stats.json", data))
    assert analysis.format == "getstats"
    pc = analysis.reports[0]
    assert pc.outcome == "connected"
    assert not pc.config.known
    sel = pc.selected[-1]
    assert sel.local is not None and sel.local.mdns
    assert sel.remote is not None and sel.remote.type == "srflx"
    assert {(f.code, f.severity) for f in analysis.findings} == {("direct-path", "info")}


def test_getstats_firefox_snapshots_failed(tmp_path: Path) -> None:
    analysis = analyze_path(samples.write(tmp_path / "ff.json", samples.getstats_firefox_failed()))
    pc = analysis.reports[0]
    assert pc.outcome == "failed"
    assert pc.pairs[0].requests_sent == 24 and pc.pairs[0].responses_received == 0
    finding = analysis.findings[0]
    assert finding.code == "no-turn"
    assert any("no iceServers configuration" in e for e in finding.evidence)


def test_getstats_firefox_selected_flag(tmp_path: Path) -> None:
    snaps = samples.getstats_firefox_failed()
    for snap in snaps[3:]:
        snap[0].update(state="succeeded", selected=True, nominated=True, bytesReceived=500)
    analysis = analyze_path(samples.write(tmp_path / "ff.json", snaps))
    pc = analysis.reports[0]
    assert pc.outcome == "connected"
    assert pc.selected and pc.selected[0].pair_id == "{pair-1}"
    assert pc.selected[0].t == samples.T0 + 3000


def test_detect_never_trusts_the_file_name() -> None:
    assert detect(b'{"PeerConnections": {}}').format == "webrtc-internals"
    assert detect(b'RTCStatsDump\n{"fileFormat":3}\n').format == "rtcstats"
    assert detect(b'[{"id":"T01","type":"transport"}]').format == "getstats"
    assert detect(b'{"T01":{"type":"transport"}}').format == "getstats"
    assert detect(b'[[{"id":"a","type":"transport"}],[{"id":"a","type":"transport"}]]').format == (
        "getstats"
    )


def test_test_page_report_brings_the_page_findings(tmp_path: Path) -> None:
    """The page's probes saw the firewalled relay ports; a getStats() snapshot alone cannot.
    Known codes are carried (bounded); what a hand-edited report adds besides is left out."""
    report = {
        "format": "iceward-test-report",
        "getStats": samples.getstats_snapshot(),
        "findings": [
            {
                "code": "relay-ports-blocked",
                "severity": "error",
                "evidence": ["20 sent, 0 delivered over turn:198.51.100.7:3478?transport=udp"]
                + ["x" * 2000] * 50,
                "subject": "turn:198.51.100.7:3478?transport=udp",
            },
            {"code": "not-a-code", "severity": "error", "evidence": ["made up"]},
            {"code": "no-tls-443", "severity": "bogus", "evidence": "not a list"},
            "not an object",
        ],
    }
    analysis = analyze_path(samples.write(tmp_path / "report.json", report))
    by_code = {f.code: f for f in analysis.findings}
    assert set(by_code) == {"relay-ports-blocked", "no-tls-443", "direct-path"}
    blocked = by_code["relay-ports-blocked"]
    assert blocked.severity == "error" and analysis.findings[0] is blocked
    assert blocked.evidence[0] == "seen by the browser test page"
    assert blocked.evidence[1].startswith("20 sent, 0 delivered")
    assert len(blocked.evidence) == 21 and all(len(e) <= 500 for e in blocked.evidence)
    assert blocked.subject == "turn:198.51.100.7:3478?transport=udp"
    assert by_code["no-tls-443"].severity == "warning"  # the vocabulary's, not "bogus"
    assert analysis.exit_code == 1


def test_test_page_report_of_a_failing_user_has_no_stats_but_the_page_findings(
    tmp_path: Path,
) -> None:
    """Nothing connected, so the page recorded no getStats(): its own findings are the answer."""
    report = {
        "format": "iceward-test-report",
        "summary": "Calls from this network will not connect: the TURN server refused the "
        "credential",
        "urls": ["turn:198.51.100.7:3478?transport=udp"],
        "getStats": [],
        "findings": [
            {
                "code": "turn-auth-failed",
                "severity": "error",
                "evidence": ["turn:198.51.100.7:3478?transport=udp: icecandidateerror 401"],
                "subject": "turn:198.51.100.7:3478?transport=udp",
            }
        ],
    }
    analysis = analyze_path(samples.write(tmp_path / "report.json", report))
    assert (analysis.format, analysis.reports) == ("iceward-test-report", [])
    assert [(f.code, f.severity) for f in analysis.findings] == [("turn-auth-failed", "error")]
    assert analysis.meta["summary"] == report["summary"] and analysis.exit_code == 1
    del report["findings"]
    with pytest.raises(InputError, match="neither findings nor getStats"):
        analyze_path(samples.write(tmp_path / "empty.json", report))
