"""Rules on synthetic evidence: which finding, which severity, in which order; the verdict line."""

from __future__ import annotations

import io
import json
import time

from rich.console import Console

from iceward.diagnose.address import is_internal
from iceward.doctor.config import load_config
from iceward.doctor.datapath import jitter, percentile
from iceward.doctor.evidence import (
    Datapath,
    Evidence,
    PeerCheck,
    Probe,
    SecurityScan,
    Source,
    TlsInfo,
)
from iceward.doctor.report import render
from iceward.doctor.rules import RuleOptions, evaluate, summarize

NOW = 1_800_000_000.0


def evidence(doc: object, *probes: Probe, **extra: object) -> Evidence:
    ev = Evidence(Source("inline", "test"), load_config(json.dumps(doc)), NOW, list(), list(probes))
    for key, value in extra.items():
        setattr(ev, key, value)
    return ev


def probe(
    url: str,
    outcome: str,
    *,
    transport: str = "udp",
    address: str = "203.0.113.5",
    index: int = 0,
    **fields: object,
) -> Probe:
    scheme = url.split(":", 1)[0]
    p = Probe(url, scheme, transport, index, address, 4, outcome=outcome)  # type: ignore[arg-type]
    for key, value in fields.items():
        setattr(p, key, value)
    return p


def turn(urls: list[str], username: str = f"{int(NOW) + 86400}:u") -> dict[str, object]:
    return {"urls": urls, "username": username, "credential": "secret"}


FULL = [
    "turn:t.example:3478?transport=udp",
    "turn:t.example:3478?transport=tcp",
    "turns:t.example:443?transport=tcp",
]


def healthy_probes() -> list[Probe]:
    return [
        probe(FULL[0], "ok", relayed=[("203.0.113.5", 50000)]),
        probe(FULL[1], "ok", transport="tcp", relayed=[("203.0.113.5", 50001)]),
        probe(
            FULL[2],
            "ok",
            transport="tls",
            relayed=[("203.0.113.5", 50002)],
            tls=TlsInfo(verified=True, days_left=60),
        ),
    ]


def healthy_datapath(**fields: object) -> Datapath:
    dp = Datapath(
        FULL[0],
        "udp",
        0,
        ("203.0.113.5", 50000),
        ("203.0.113.5", 50003),
        sent=20,
        a_to_b=20,
        b_to_a=20,
        rtt_ms=[10.0] * 20,
        p50_ms=10.0,
        p95_ms=12.0,
    )
    for key, value in fields.items():
        setattr(dp, key, value)
    return dp


def codes(ev: Evidence, opts: RuleOptions | None = None) -> list[tuple[str, str]]:
    return [(f.code, f.severity) for f in evaluate(ev, opts)]


def test_healthy_config_has_no_findings() -> None:
    ev = evidence([turn(FULL)], *healthy_probes(), datapaths=[healthy_datapath()])
    assert codes(ev) == []
    assert summarize(ev, []) == (
        "TURN over UDP, TCP and TLS work; data crosses the relay (20/20 round trips, p50 10.0 ms)"
    )


def test_config_weaknesses_are_errors_in_the_doctor() -> None:
    ev = evidence(
        [turn(["turn:t.example:3478"], username="alice")],
        probe("turn:t.example:3478", "ok", relayed=[("203.0.113.5", 50000)]),
    )
    assert codes(ev) == [
        ("turn-udp-only", "error"),
        ("no-tls-443", "error"),
        ("static-credentials", "error"),
    ]


def test_ranking_follows_the_field_order() -> None:
    ev = evidence(
        [{"urls": "stun:s.example"}, turn(["turn:t.example:3478"], username="alice")],
        probe("stun:s.example", "unreachable", error="no answer in 2 s"),
        probe(
            "turn:t.example:3478",
            "auth",
            index=1,
            error_code=401,
            transcript=["Allocate (signed) → 401"],
        ),
    )
    assert [c for c, _ in codes(ev)] == [
        "turn-auth-failed",
        "turn-udp-only",
        "no-tls-443",
        "static-credentials",
        "stun-unreachable",
    ]


def test_a_lone_dead_udp_url_is_unreachable_first() -> None:
    dead = probe("turn:t.example:3478", "unreachable", error="no answer in 2 s")
    ev = evidence([turn(["turn:t.example:3478"])], dead)
    assert [c for c, _ in codes(ev)][:2] == ["turn-unreachable", "turn-udp-only"]
    # Once a TURN URL answers, the field order holds: UDP-only is the config's weakness.
    alive = probe("turn:t.example:3479", "ok", relayed=[("203.0.113.5", 50000)])
    ev = evidence([turn(["turn:t.example:3478", "turn:t.example:3479"])], dead, alive)
    assert [c for c, _ in codes(ev)][:2] == ["turn-udp-only", "no-tls-443"]


def test_terminal_keeps_urls_and_addresses_whole_at_80_columns() -> None:
    urls = [*FULL, "turns:turn-eu-west-1.example.org:443?transport=tcp"]
    probes = [*healthy_probes(), probe(urls[3], "ok", transport="tls", relayed=[("::1", 5)])]
    probes[0].mapped, probes[0].stun_rtt_ms = ("198.51.100.77", 61234), 12.5
    ev = evidence([turn(urls)], *probes, datapaths=[healthy_datapath()])
    whole = [*urls, "198.51.100.77:61234", "203.0.113.5:50002", "203.0.113.5:50003"]
    for width in (80, 60, 200):
        console = Console(width=width, record=True, file=io.StringIO())
        render(console, ev, evaluate(ev), [], summarize(ev, evaluate(ev)))
        lines = console.export_text().splitlines()
        assert all(len(line.rstrip()) <= width for line in lines)
        for text in whole:
            assert any(text in line for line in lines), (width, text)


def test_no_turn() -> None:
    ev = evidence(
        [{"urls": "stun:s.example"}], probe("stun:s.example", "ok", mapped=("198.51.100.7", 4000))
    )
    findings = evaluate(ev)
    assert [(f.code, f.severity) for f in findings] == [("no-turn", "error")]
    assert "198.51.100.7" in " ".join(findings[0].evidence)
    assert summarize(ev, findings) == "STUN works; there is no TURN server in the config"


def test_expired_rest_credential_is_not_a_wrong_password() -> None:
    expired = f"{int(NOW) - 3600}:u"
    ev = evidence(
        [turn(FULL, username=expired)],
        *[
            probe(u, "auth", transport=t, error_code=401)
            for u, t in zip(FULL, ("udp", "tcp", "tls"), strict=True)
        ],
    )
    found = evaluate(ev)
    assert [(f.code, f.severity) for f in found] == [("turn-credential-expired", "error")]
    assert "1 h 0 min ago" in found[0].evidence[0]
    assert "refuses the expired credential" in summarize(ev, found)


def test_valid_rest_credential_refused_blames_the_secret() -> None:
    ev = evidence([turn(FULL)], probe(FULL[0], "auth", error_code=401), *healthy_probes()[1:])
    found = evaluate(ev)
    assert [(f.code, f.severity) for f in found] == [("turn-auth-failed", "error")]
    assert any("shared secret" in line for line in found[0].evidence)


def test_credential_expiring_within_the_call() -> None:
    soon = f"{int(NOW) + 600}:u"
    ev = evidence([turn(FULL, username=soon)], *healthy_probes())
    assert codes(ev) == [("turn-credential-expired", "warning")]
    assert codes(ev, RuleOptions(call_length_s=300)) == []


def test_credential_minted_for_exactly_the_call_length_is_fine() -> None:
    # The README's own example: ttl 3600 against the default --call-length 3600, judged a few
    # seconds after the backend minted it.
    for left in (3600, 3599, 3541):
        ev = evidence([turn(FULL, username=f"{int(NOW) + left}:u")], *healthy_probes())
        assert codes(ev) == [], left
    late = evidence([turn(FULL, username=f"{int(NOW) + 3539}:u")], *healthy_probes())
    assert codes(late) == [("turn-credential-expired", "warning")]


def test_long_lived_and_millisecond_expiries_count_as_static() -> None:
    for username in (f"{int(NOW) + 30 * 86400}:u", f"{int(NOW) * 1000}:u"):
        ev = evidence([turn(FULL, username=username)], *healthy_probes())
        assert codes(ev) == [("static-credentials", "error")], username


def test_unreachable_one_family_is_a_warning() -> None:
    v6 = probe(FULL[0], "unreachable", address="2001:db8::5", error="no answer in 2 s")
    ev = evidence([turn(FULL)], *healthy_probes(), v6)
    assert codes(ev) == [("turn-unreachable", "warning")]
    v4_dead = probe(FULL[1], "unreachable", transport="tcp", error="connection refused")
    ev = evidence([turn(FULL)], healthy_probes()[0], v4_dead, healthy_probes()[2])
    assert codes(ev) == [("turn-unreachable", "error")]
    assert "nothing answers TURN over TCP" in summarize(ev, evaluate(ev))


def test_allocation_refused_for_other_reasons() -> None:
    quota = probe(FULL[0], "refused", error_code=486, transcript=["Allocate → 486"])
    ev = evidence([turn(FULL)], quota, *healthy_probes()[1:])
    found = evaluate(ev)
    assert [(f.code, f.title) for f in found] == [
        ("turn-unreachable", "The TURN server answers but refuses the allocation")
    ]


def test_relay_blocked_and_latency() -> None:
    blocked = healthy_datapath(a_to_b=0, b_to_a=0, rtt_ms=[], p50_ms=None, p95_ms=None)
    ev = evidence([turn(FULL)], *healthy_probes(), datapaths=[blocked])
    found = evaluate(ev)
    assert [(f.code, f.severity) for f in found] == [("relay-ports-blocked", "error")]
    assert "UDP to the relay port range is blocked (0/20 packets crossed)" in summarize(ev, found)
    one_way = healthy_datapath(b_to_a=0, rtt_ms=[])
    assert codes(evidence([turn(FULL)], *healthy_probes(), datapaths=[one_way])) == [
        ("relay-ports-blocked", "error")
    ]
    not_tested = healthy_datapath(setup_error="403", not_tested=True, sent=0)
    untested = evidence([turn(FULL)], *healthy_probes(), datapaths=[not_tested])
    assert codes(untested) == []
    assert summarize(untested, []) == (
        "TURN over UDP, TCP and TLS work; the relay data path went untested: the server "
        "refuses its internal relayed 203.0.113.5 as a peer (403)"
    )
    slow = healthy_datapath(p50_ms=400.0)
    assert codes(evidence([turn(FULL)], *healthy_probes(), datapaths=[slow])) == [
        ("high-relay-latency", "warning")
    ]


def test_private_relay_severity_depends_on_how_the_server_was_reached() -> None:
    public = healthy_probes()
    public[0].relayed = [("10.0.0.5", 50000)]
    assert codes(evidence([turn(FULL)], *public)) == [("private-relay-address", "error")]
    lab = healthy_probes()
    for p in lab:
        p.address = "127.0.0.1"
        p.relayed = [("127.0.0.1", 50000)]
    assert codes(evidence([turn(FULL)], *lab)) == [("private-relay-address", "warning")]


def test_tls_certificate() -> None:
    bad = healthy_probes()
    bad[2].tls = TlsInfo(verified=False, error="self-signed certificate", subject="CN=x")
    ev = evidence([turn(FULL)], *bad)
    found = evaluate(ev)
    assert [(f.code, f.severity) for f in found] == [("tls-certificate-invalid", "error")]
    assert "self-signed certificate" in found[0].evidence[0]
    unchecked = healthy_probes()
    unchecked[2].tls = TlsInfo(verified=False, checked=False)
    assert codes(evidence([turn(FULL)], *unchecked)) == []
    expiring = healthy_probes()
    expiring[2].tls = TlsInfo(verified=True, days_left=3.0)
    assert codes(evidence([turn(FULL)], *expiring)) == [("tls-certificate-invalid", "warning")]


def test_open_relay_exposure() -> None:
    scan = SecurityScan(
        FULL[0],
        0,
        checks=[
            PeerCheck("loopback", "127.0.0.1", True, "accepted"),
            PeerCheck("cloud metadata service", "169.254.169.254", False, "refused: 403"),
        ],
    )
    ev = evidence([turn(FULL)], *healthy_probes(), security=[scan])
    found = evaluate(ev)
    assert [(f.code, f.severity) for f in found] == [("open-relay-exposure", "error")]
    assert found[0].evidence[0] == "CreatePermission to 127.0.0.1 (loopback) was accepted"
    clean = SecurityScan(FULL[0], 0, checks=[PeerCheck("loopback", "127.0.0.1", False, "403")])
    assert codes(evidence([turn(FULL)], *healthy_probes(), security=[clean])) == []


def test_udp_only_names_the_tcp_url_that_works() -> None:
    implied = probe("turn:t.example:3478?transport=tcp", "ok", transport="tcp", implied=True)
    ev = evidence([turn(["turn:t.example:3478"])], probe("turn:t.example:3478", "ok"), implied)
    udp_only = next(f for f in evaluate(ev) if f.code == "turn-udp-only")
    assert "add turn:t.example:3478?transport=tcp" in udp_only.evidence[1]


def test_internal_addresses() -> None:
    for ip in (
        "127.0.0.1",
        "10.1.2.3",
        "100.64.0.1",
        "169.254.169.254",
        "::1",
        "fd00::1",
        "::ffff:192.168.1.1",
        "0.0.0.0",
    ):
        assert is_internal(ip), ip
    for ip in ("203.0.113.5", "8.8.8.8", "2001:db8::1", "not-an-ip"):
        assert not is_internal(ip), ip


def test_percentiles_and_jitter() -> None:
    values = [float(v) for v in range(1, 21)]
    assert (percentile(values, 0.5), percentile(values, 0.95)) == (10.0, 19.0)
    assert percentile([5.0], 0.95) == 5.0
    assert jitter([10.0, 12.0, 11.0, 15.0]) == (2 + 1 + 4) / 3
    assert jitter([3.0]) == 0.0


def test_now_is_used_for_expiry() -> None:
    # The rules judge against the evidence's clock, not the wall clock.
    ev = evidence([turn(FULL, username=f"{int(time.time()) + 86400}:u")], *healthy_probes())
    ev.now = time.time() + 2 * 86400
    assert ("turn-credential-expired", "error") in codes(ev)
