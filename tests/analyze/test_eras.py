"""webrtc-internals eras that cannot be recorded here, from minimal constructed samples.

Pre-M117 (``RTCIceCandidatePair_*`` ids, no ``-timestamp`` series, locale ``time`` strings),
M142 (JSON-quoted values), M144+ (``on``-prefixed events, snake_case JSON errors), and the dump
quirks: stats that begin after the call started, series cut at the 1000-point buffer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from iceward.analyze.api import Analysis, analyze_path
from iceward.analyze.events import (
    EventApplier,
    decode_value,
    event_kind,
    normalize_state,
    parse_candidate_line,
    parse_config,
    parse_time,
)
from iceward.analyze.internals import split_series_name
from iceward.analyze.model import CandidateError, PeerConnectionReport, classify_error
from tests.analyze import samples


def run(tmp_path: Path, name: str, data: object, **kw: bool) -> Analysis:
    return analyze_path(samples.write(tmp_path / name, data, **kw))


def codes(analysis: Analysis) -> set[tuple[str, str]]:
    return {(f.code, f.severity) for f in analysis.findings}


# ---- parsing primitives --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CPgEdWEUR8_G4ix6rR3-bytesSent", ("CPgEdWEUR8_G4ix6rR3", "bytesSent")),
        ("CP1_2-[bytesSent_in_bits/s]", ("CP1_2", "[bytesSent_in_bits/s]")),
        (
            "CP1_2-[totalRoundTripTime/responsesReceived]",
            ("CP1_2", "[totalRoundTripTime/responsesReceived]"),
        ),
        ("Conn-audio-1-0-googActiveConnection", ("Conn-audio-1-0", "googActiveConnection")),
        ("RTCIceCandidatePair_a+b_c/d-state", ("RTCIceCandidatePair_a+b_c/d", "state")),
        ("CF48:CC:23-fingerprint", ("CF48:CC:23", "fingerprint")),
        ("nodash", None),
    ],
)
def test_split_series_name(name: str, expected: tuple[str, str] | None) -> None:
    assert split_series_name(name) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ICEConnectionStateChecking", "checking"),
        ("ICEGatheringStateComplete", "complete"),
        ("SignalingStateHaveLocalOffer", "have-local-offer"),
        ("HaveRemoteOffer", "have-remote-offer"),
        ('"connected"', "connected"),
        ("disconnected", "disconnected"),
    ],
)
def test_normalize_state(raw: str, expected: str) -> None:
    assert normalize_state(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("oniceconnectionstatechange", "iceconnectionstatechange"),
        ("iceConnectionStateChange", "iceconnectionstatechange"),
        ("onIceCandidate", "icecandidate"),
        ("onicecandidateerror", "icecandidateerror"),
        ("addIceCandidate", "addicecandidate"),
    ],
)
def test_event_kind(raw: str, expected: str) -> None:
    assert event_kind(raw) == expected


def test_times_of_every_era() -> None:
    assert parse_time(1795336989648.683) == (1795336989648.683, False)
    t, naive = parse_time("2014-12-11T09:46:53.069Z")
    assert not naive and t == 1418291213069.0
    t, naive = parse_time("12/11/2014, 10:46:48 AM")
    assert naive and t == 1418294808000.0
    assert parse_time("garbage") == (None, False)


def test_candidate_line() -> None:
    parsed = parse_candidate_line(
        "candidate:1263999568 1 udp 8191 127.0.0.1 52568 typ relay raddr 0.0.0.0 rport 0"
        " generation 0 ufrag Nu1M network-cost 999"
    )
    assert parsed is not None
    assert (parsed["type"], parsed["address"], parsed["port"], parsed["ufrag"]) == (
        "relay",
        "127.0.0.1",
        52568,
        "Nu1M",
    )
    tcp = parse_candidate_line("candidate:2 1 tcp 1518 192.0.2.1 9 typ host tcptype active")
    assert tcp is not None and tcp["tcp_type"] == "active"
    assert parse_candidate_line("a=end-of-candidates") is None


def test_config_forms_and_no_credentials() -> None:
    legacy = parse_config(
        "{ servers: [stun:stun.l.google.com:19302, turn:192.0.2.1:3478?transport=udp],"
        " iceTransportType: all }"
    )
    assert legacy.ice_servers == [
        "stun:stun.l.google.com:19302",
        "turn:192.0.2.1:3478?transport=udp",
    ]
    assert legacy.ice_transport_policy == "all"
    modern = parse_config(
        '{"iceServers":[{"urls":"turns:u:p@turn.example.org:443?transport=tcp",'
        '"username":"1700000000:bob","credential":"pw"}],"iceTransportPolicy":"relay",'
        '"bundlePolicy":"max-bundle"}'
    )
    assert modern.ice_servers == ["turns:turn.example.org:443?transport=tcp"]
    assert modern.credential_expiries == [1700000000]
    assert (modern.ice_transport_policy, modern.bundle_policy) == ("relay", "max-bundle")
    assert "pw" not in repr(modern) and "bob" not in repr(modern)


@pytest.mark.parametrize(
    ("code", "text", "address", "url", "category"),
    [
        (701, "STUN host lookup received error.", "192.0.2.x", "turn:t.example:3478", "dns"),
        (701, "TURN allocate request timed out.", "0.0.0.x", "turn:192.0.2.1:3478", "timeout"),
        (
            701,
            "Failed to establish connection",
            None,
            "turn:192.0.2.1:3478?transport=tcp",
            "connect-failed",
        ),
        (
            701,
            "STUN binding request timed out.",
            "2001:db8::1",
            "stun:192.0.2.1:3478",
            "ipv6-noise",
        ),
        (
            701,
            "Address not associated with the desired network interface.",
            "192.0.2.x",
            "turns:t.example:443",
            "ipv6-noise",
        ),
        (401, "Unauthorized.", None, "turn:t.example:3478", "auth"),
        (438, "Stale nonce", None, "turn:t.example:3478", "stale-nonce"),
        (403, "Forbidden IP", None, "turn:t.example:3478", "error-response"),
    ],
)
def test_701_classification(
    code: int, text: str, address: str | None, url: str, category: str
) -> None:
    assert classify_error(CandidateError(None, url, code, text, address)) == category


def test_legacy_text_error_event() -> None:
    report = PeerConnectionReport(id="x", source="webrtc-internals")
    EventApplier(report).apply(
        1.0,
        "icecandidateerror",
        "url: turn:t.example:3478\naddress: 192.0.2.x\nport: 5000\nhost_candidate: 192.0.2.x:5000"
        "\nerror_text: STUN host lookup received error.\nerror_code: 701",
    )
    err = report.candidate_errors[0]
    assert (err.code, err.url, err.port, err.category) == (701, "turn:t.example:3478", 5000, "dns")
    assert decode_value('"stable"') == "stable"


# ---- whole samples -------------------------------------------------------------------------
def test_pre_m117_symmetric_nat(tmp_path: Path) -> None:
    analysis = run(tmp_path, "pre117.json", samples.pre_m117_symmetric_nat())
    assert codes(analysis) == {("no-turn", "error"), ("symmetric-nat-no-turn", "error")}
    pc = analysis.reports[0]
    assert "RTC*_ stats ids (before M117)" in pc.era
    assert pc.outcome == "failed"
    assert pc.config.bundle_policy == "max-bundle"
    # No -timestamp series: point times are spread between startTime and endTime.
    pair = pc.pairs[0]
    assert pair.id == "RTCIceCandidatePair_Lx1_Rx1"
    assert pair.first_seen == samples.T0 + 1000
    assert pair.last_seen == samples.T0 + 20_000
    assert pair.local is not None and pair.local.type == "host"
    assert pair.remote is not None and pair.remote.type == "srflx"
    sym = next(f for f in analysis.findings if f.code == "symmetric-nat-no-turn")
    assert any("80 connectivity checks sent, 0 answered" in e for e in sym.evidence)
    assert analysis.findings[0].code == "no-turn", "ranked: no-turn is the top field cause"


def test_m142_json_quoted_values_dns_failure(tmp_path: Path) -> None:
    analysis = run(tmp_path, "m142.json", samples.m142_turn_dns_failure())
    pc = analysis.reports[0]
    assert "JSON-quoted values (M142+)" in pc.era and "M144" not in pc.era
    assert [s.state for s in pc.history("iceConnection")] == ["checking", "connected"]
    # The call connected: configuration weaknesses and the dead TURN host are warnings.
    assert codes(analysis) == {
        ("turn-unreachable", "warning"),
        ("no-tls-443", "warning"),
        ("direct-path", "info"),
    }
    unreachable = [f for f in analysis.findings if f.code == "turn-unreachable"]
    assert len(unreachable) == 2
    assert all("DNS lookup failed" in f.evidence[0] for f in unreachable)
    # The IPv6 701 on the STUN URL is noise: STUN worked over IPv4.
    assert not any(f.code == "stun-unreachable" for f in analysis.findings)
    assert [e.category for e in pc.candidate_errors].count("ipv6-noise") == 1


def test_m142_stun_configured_but_no_srflx(tmp_path: Path) -> None:
    analysis = run(tmp_path, "m142.json", samples.m142_turn_dns_failure(stun_works=False))
    assert ("stun-unreachable", "warning") in codes(analysis)


def test_m144_connected_no_media(tmp_path: Path) -> None:
    analysis = run(tmp_path, "m144.json.gz", samples.m144_connected_no_media(), gz=True)
    pc = analysis.reports[0]
    assert "on-prefixed events (M144+)" in pc.era
    assert codes(analysis) == {
        ("connected-no-media", "error"),
        ("turn-unreachable", "warning"),
        ("relay-in-use", "info"),
    }
    assert analysis.findings[0].code == "connected-no-media"
    evidence = "\n".join(analysis.findings[0].evidence)
    assert "stayed at 3000" in evidence and "nothing comes back" in evidence
    relay = next(f for f in analysis.findings if f.code == "relay-in-use")
    assert any("over tcp" in e for e in relay.evidence)
    err = pc.candidate_errors[0]
    assert (err.code, err.port, err.category) == (701, 50001, "timeout")


def test_stats_late_and_cut_at_buffer(tmp_path: Path) -> None:
    analysis = run(tmp_path, "long.json", samples.buffer_cut_and_late_stats())
    pc = analysis.reports[0]
    notes = "\n".join(pc.notes)
    assert "stats begin 120 s after the call started" in notes
    assert "1000-point buffer" in notes
    assert pc.series_at_buffer_limit > 0
    assert codes(analysis) == {("direct-path", "info")}


def test_connected_then_failed(tmp_path: Path) -> None:
    data = samples.m142_turn_dns_failure()
    log = data["PeerConnections"]["77-1"]["updateLog"]
    end = samples.T0 + 9000
    log += [
        {"timestamp": end, "type": "iceconnectionstatechange", "value": '"disconnected"'},
        {"timestamp": end + 1, "type": "connectionstatechange", "value": '"disconnected"'},
        {"timestamp": end + 15000, "type": "connectionstatechange", "value": '"failed"'},
    ]
    analysis = run(tmp_path, "drop.json", data)
    first = analysis.findings[0]
    assert (first.code, first.severity) == ("ice-failed-unknown", "error")
    assert "then connectionState failed at +24.0 s" in first.evidence[0]
    assert any("last grew at" in e for e in first.evidence)


def test_connected_then_disconnected_is_noted(tmp_path: Path) -> None:
    data = samples.m142_turn_dns_failure()
    data["PeerConnections"]["77-1"]["updateLog"].append(
        {"timestamp": samples.T0 + 9000, "type": "connectionstatechange", "value": '"disconnected"'}
    )
    pc = run(tmp_path, "disc.json", data).reports[0]
    assert any("'disconnected' from +9.0 s" in n for n in pc.notes)
    assert not any(f.severity == "error" for f in pc.findings)
