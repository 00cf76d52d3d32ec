"""Dumps recorded from real Chromium (tests/analyze/record_fixtures.py) → the expected findings.

Each scenario was recorded against a real ``iceward serve`` on loopback and downloaded from
chrome://webrtc-internals in both formats; both must lead to the same findings. The 2014 legacy
dump (webrtc/testrtc, BSD-3-Clause) is the old-format case.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from iceward.analyze.api import Analysis, analyze_path

FIXTURES = Path(__file__).with_name("fixtures")
CHROMIUM = "chromium156"

#: scenario -> {(code, severity)} expected at the top level, exactly.
EXPECTED: dict[str, set[tuple[str, str]]] = {
    "relay-udp": {
        ("turn-udp-only", "warning"),
        ("private-relay-address", "warning"),
        ("relay-in-use", "info"),
    },
    "relay-tcp": {
        ("no-tls-443", "warning"),
        ("private-relay-address", "warning"),
        ("relay-in-use", "info"),
    },
    "relay-tls": {
        ("no-tls-443", "warning"),
        ("private-relay-address", "warning"),
        ("relay-in-use", "info"),
    },
    "wrong-password": {("turn-auth-failed", "error"), ("no-tls-443", "warning")},
    "stun-only-relay": {("no-turn", "error")},
    "turn-unreachable": {("turn-unreachable", "error"), ("no-tls-443", "warning")},
    "ice-failed": {
        ("ice-failed-unknown", "error"),
        ("turn-udp-only", "warning"),
        ("private-relay-address", "warning"),
    },
    "direct-host": {("direct-path", "info")},
    "late-internals": {
        ("turn-udp-only", "warning"),
        ("private-relay-address", "warning"),
        ("relay-in-use", "info"),
    },
}
FORMATS = {"internals.json.gz": "webrtc-internals", "rtcstats.gz": "rtcstats"}
_cache: dict[Path, Analysis] = {}


def analysed(scenario: str, suffix: str) -> Analysis:
    path = FIXTURES / f"{CHROMIUM}-{scenario}.{suffix}"
    if path not in _cache:
        _cache[path] = analyze_path(path)
    return _cache[path]


def codes(analysis: Analysis) -> set[tuple[str, str]]:
    return {(f.code, f.severity) for f in analysis.findings}


@pytest.mark.parametrize("suffix", list(FORMATS))
@pytest.mark.parametrize("scenario", list(EXPECTED))
def test_recorded_scenario_findings(scenario: str, suffix: str) -> None:
    analysis = analysed(scenario, suffix)
    assert analysis.format == FORMATS[suffix]
    assert len(analysis.reports) == 2, "both PeerConnections of the page are in the dump"
    assert codes(analysis) == EXPECTED[scenario], [f.as_dict() for f in analysis.findings]
    for pc in analysis.reports:
        # Every PC explains itself the same way (the two sides of one loopback call).
        assert {(f.code, f.severity) for f in pc.findings} == EXPECTED[scenario]
        for f in pc.findings:
            assert f.evidence, f.code


@pytest.mark.parametrize("suffix", list(FORMATS))
@pytest.mark.parametrize(
    ("scenario", "relay_protocol"),
    [("relay-udp", "udp"), ("relay-tcp", "tcp"), ("relay-tls", "tls")],
)
def test_relay_success_selected_pair(scenario: str, relay_protocol: str, suffix: str) -> None:
    analysis = analysed(scenario, suffix)
    for pc in analysis.reports:
        assert pc.outcome == "connected"
        assert pc.config.ice_transport_policy == "relay"
        assert pc.time_to_connected is not None and 0 < pc.time_to_connected < 10_000
        sel = pc.selected[-1]
        assert sel.local is not None and sel.remote is not None
        assert (sel.local.type, sel.remote.type) == ("relay", "relay")
        assert sel.local.relay_protocol == relay_protocol
        assert sel.local.url is not None and sel.local.url.startswith("turn")
        assert {c.type for c in pc.candidates} == {"relay"}
        selected_pair = next(p for p in pc.pairs if p.id == sel.pair_id)
        assert selected_pair.state == "succeeded" and selected_pair.nominated
        assert (selected_pair.responses_received or 0) > 0
        received = next(s for s in pc.flow if s.direction == "received" and s.unit == "bytes")
        assert received.points[-1][1] > received.points[0][1] > 0, "data flowed both ways"
        relay = next(f for f in pc.findings if f.code == "relay-in-use")
        assert any(f"over {relay_protocol}" in e for e in relay.evidence)


def test_relay_tls_uses_turns_url() -> None:
    analysis = analysed("relay-tls", "internals.json.gz")
    for pc in analysis.reports:
        assert pc.config.ice_servers[0].startswith("turns:localhost:")
        private = next(f for f in pc.findings if f.code == "private-relay-address")
        assert any("(localhost)" in e for e in private.evidence)


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_wrong_password(suffix: str) -> None:
    analysis = analysed("wrong-password", suffix)
    auth = next(f for f in analysis.findings if f.code == "turn-auth-failed")
    # One finding for the iceServers entry: its UDP and TCP URLs share the refused credential.
    assert auth.subject is not None
    assert "transport=udp" in auth.subject and "transport=tcp" in auth.subject
    for pc in analysis.reports:
        assert pc.outcome == "not-connected"
        assert not pc.local("relay")
        assert {e.code for e in pc.candidate_errors} == {401}
        assert all(e.category == "auth" for e in pc.candidate_errors)


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_turn_unreachable_701_classified(suffix: str) -> None:
    analysis = analysed("turn-unreachable", suffix)
    subjects = {f.subject for f in analysis.findings if f.code == "turn-unreachable"}
    assert len(subjects) == 2 and all(s and s.startswith("turn:") for s in subjects)
    for pc in analysis.reports:
        categories = {(e.url.split("?")[-1], e.category) for e in pc.candidate_errors}
        assert ("transport=udp", "timeout") in categories
        assert ("transport=tcp", "connect-failed") in categories
        # Chromium reports 701 only after about 40 s when nothing answers.
        first = min(e.t for e in pc.candidate_errors if e.t is not None)
        assert pc.t0 is not None and 30_000 < first - pc.t0 < 60_000
        udp = next(f for f in pc.findings if f.subject and "transport=udp" in f.subject)
        assert any("stun:" in line for line in udp.evidence), "the implicit Binding error"


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_stun_only_with_relay_policy(suffix: str) -> None:
    analysis = analysed("stun-only-relay", suffix)
    finding = analysis.findings[0]
    assert finding.code == "no-turn"
    assert any("iceTransportPolicy is 'relay'" in e for e in finding.evidence)
    for pc in analysis.reports:
        assert pc.config.turn_urls == [] and pc.config.stun_urls
        assert pc.candidates == []


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_ice_failed(suffix: str) -> None:
    analysis = analysed("ice-failed", suffix)
    for pc in analysis.reports:
        # Chromium 156: iceConnectionState checking -> disconnected, connectionState failed.
        assert pc.outcome == "failed"
        assert pc.last_state("connection") == "failed"
        assert pc.ever("iceConnection", "disconnected")
        assert not pc.ever("iceConnection", "failed")
        unknown = pc.findings[0]
        assert unknown.code == "ice-failed-unknown"
        text = "\n".join(unknown.evidence)
        assert "0 answered" in text
        assert "signalling delivered altered candidates" in text
        assert all(p.state in ("in-progress", "waiting", "failed") for p in pc.pairs)


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_direct_host_mdns(suffix: str) -> None:
    analysis = analysed("direct-host", suffix)
    for pc in analysis.reports:
        assert pc.config.known and pc.config.ice_servers == []
        assert pc.candidates and all(c.type == "host" and c.mdns for c in pc.candidates)
        sel = pc.selected[-1]
        assert sel.local is not None and sel.local.mdns


def test_late_internals_note() -> None:
    analysis = analysed("late-internals", "internals.json.gz")
    for pc in analysis.reports:
        assert pc.log_starts_late
        assert pc.time_to_connected is None
        assert any("opened after this call started" in n for n in pc.notes)
        assert pc.outcome == "connected"


def test_fixture_era_detected() -> None:
    era = analysed("relay-udp", "internals.json.gz").reports[0].era
    assert "short stats ids (M117+)" in era
    assert "on-prefixed events (M144+)" in era
    assert "JSON-quoted values (M142+)" in era
    assert analysed("relay-udp", "internals.json.gz").meta["browser"].startswith("Chromium 156")


def test_legacy_2014_dump() -> None:
    analysis = analyze_path(FIXTURES / "legacy-2014-testrtc-demo.txt.gz")
    assert analysis.format == "webrtc-internals"
    assert codes(analysis) == {("direct-path", "info"), ("no-tls-443", "warning")}
    for pc in analysis.reports:
        assert "legacy goog stats" in pc.era and "legacy state names" in pc.era
        assert pc.outcome == "connected"
        assert pc.config.ice_transport_policy == "all"
        assert len(pc.config.turn_urls) == 4 and pc.config.stun_urls
        assert pc.history("iceConnection")[0].state == "checking"
        assert pc.ever("iceConnection", "connected")
        assert {c.type for c in pc.local()} >= {"host", "srflx", "relay"}
        assert any(c.protocol == "tcp" for c in pc.local())
        sel = pc.selected[-1]
        assert sel.pair_id == "Conn-audio-1-0"
        assert sel.local is not None and sel.local.type == "host"
        assert sel.local.address == "172.30.48.176"
        # Local-time strings aligned with the UTC stats: connected just before stats began.
        connected = pc.first_time("iceConnection", "connected")
        assert pc.stats_start is not None and connected is not None
        assert abs(pc.stats_start - connected) < 5_000
        assert any(s.unit == "packets" and s.source == "rtp" for s in pc.flow)
