"""The doctor against real servers on loopback: iceward and coturn, one scenario per root cause."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import CertAuthority, free_port_pair, free_tcp_port
from tests.doctor.conftest import PASSWORD, USER, Server, doctor, ice

pytestmark = pytest.mark.realclient


def test_healthy(server: Server, ca: CertAuthority) -> None:
    run = doctor(
        "--ice-servers",
        server.config("stun", "udp", "tcp", "tls"),
        "--ca-file",
        str(ca.ca_cert),
        "--ignore",
        "no-tls-443",
    )
    assert run.code == 0, run.output
    assert run.errors() == []
    # On loopback the relayed address is loopback too: reported, but only as a warning. The
    # test CA's certificate is valid for 7 days: it works, and its near expiry is a warning.
    assert run.codes == ["private-relay-address", "tls-certificate-invalid"]
    expiring = run.finding("tls-certificate-invalid")
    assert expiring["severity"] == "warning" and "expires in 7" in expiring["evidence"][0]
    assert [f["code"] for f in run.report["ignored"]] == ["no-tls-443"]
    probes = run.report["probes"]
    assert {(p["transport"], p["outcome"]) for p in probes} == {
        ("udp", "ok"),
        ("tcp", "ok"),
        ("tls", "ok"),
    }
    assert all(p["relayed"] for p in probes if p["scheme"] == "turn")
    tls = next(p["tls"] for p in probes if p["transport"] == "tls")
    assert tls["verified"] and "127.0.0.1" in tls["names"]
    [datapath] = run.report["datapath"]
    assert (datapath["sent"], datapath["a_to_b"], datapath["b_to_a"]) == (20, 20, 20)
    assert datapath["p50_ms"] is not None and datapath["p95_ms"] >= datapath["p50_ms"]
    assert run.report["summary"].startswith(
        "STUN works; TURN over UDP, TCP and TLS work; data crosses the relay (20/20 round trips"
    )


def test_healthy_terminal_output(server: Server, ca: CertAuthority) -> None:
    run = doctor(
        "--ice-servers",
        server.config("stun", "udp", "tcp", "tls"),
        "--ca-file",
        str(ca.ca_cert),
        "--ignore",
        "no-tls-443",
        json_report=False,
    )
    assert run.code == 0, run.output
    table_title = "URL \N{MULTIPLICATION SIGN} transport"
    for text in (
        "probing STUN and TURN",
        table_title,
        "Relay data path",
        "private-relay-address",
        "Ignored (--ignore): no-tls-443",
        "Verdict: STUN works; TURN over UDP, TCP and TLS work",
    ):
        assert text in run.output, text


def test_stun_only(server: Server) -> None:
    run = doctor("--ice-servers", server.config("stun"))
    assert run.code == 1
    assert run.codes == ["no-turn"]
    [probe] = run.report["probes"]
    assert probe["outcome"] == "ok" and probe["mapped"][0] == "127.0.0.1"
    assert run.report["summary"] == "STUN works; there is no TURN server in the config"


def test_wrong_password(static_servers: dict[str, Server], server: Server) -> None:
    static = static_servers[server.kind]
    run = doctor("--ice-servers", static.config("udp", "tcp", username=USER, credential="nope"))
    assert run.code == 1
    assert run.codes[0] == "turn-auth-failed"
    assert "turn-credential-expired" not in run.codes
    evidence = " ".join(run.finding("turn-auth-failed")["evidence"])
    assert "Allocate → 401 challenge" in evidence and "Allocate (signed) → 401" in evidence
    # The right password on the same server works: the finding is about the credential.
    good = doctor("--ice-servers", static.config("udp", "tcp", username=USER, credential=PASSWORD))
    assert "turn-auth-failed" not in good.codes
    assert good.codes[:1] == ["no-tls-443"] and "static-credentials" in good.codes


def test_expired_rest_credential(server: Server) -> None:
    username, password = server.rest(ttl=60, now=time.time() - 3600)
    run = doctor(
        "--ice-servers", server.config("udp", "tcp", username=username, credential=password)
    )
    assert run.code == 1
    assert run.codes[0] == "turn-credential-expired"
    assert "turn-auth-failed" not in run.codes
    finding = run.finding("turn-credential-expired")
    assert finding["severity"] == "error"
    assert any("the server refused it" in line for line in finding["evidence"])
    assert "refuses the expired credential" in run.report["summary"]


def test_rest_credential_with_the_wrong_secret(server: Server) -> None:
    username, _ = server.rest()
    run = doctor("--ice-servers", server.config("udp", username=username, credential="bad"))
    assert run.codes[0] == "turn-auth-failed"
    assert any("shared secret" in line for line in run.finding("turn-auth-failed")["evidence"])


def test_udp_only(server: Server) -> None:
    run = doctor("--ice-servers", server.config("udp"), "--ignore", "no-tls-443")
    assert run.code == 1
    assert run.codes == ["turn-udp-only", "private-relay-address"]
    evidence = run.finding("turn-udp-only")["evidence"]
    assert f"add turn:127.0.0.1:{server.port}?transport=tcp" in evidence[1]
    implied = [p for p in run.report["probes"] if p["implied"]]
    assert [(p["transport"], p["outcome"]) for p in implied] == [("tcp", "ok")]


def test_nothing_listening() -> None:
    port, tls_port = free_port_pair(), free_tcp_port()
    config = ice(
        [
            {"urls": f"stun:127.0.0.1:{port}"},
            {
                "urls": [
                    f"turn:127.0.0.1:{port}",
                    f"turn:127.0.0.1:{port}?transport=tcp",
                    f"turns:127.0.0.1:{tls_port}?transport=tcp",
                ],
                "username": f"{int(time.time()) + 3600 * 4}:u",
                "credential": "x",
            },
        ]
    )
    start = time.monotonic()
    run = doctor("--ice-servers", config, "--ignore", "no-tls-443")
    assert time.monotonic() - start < 3.0
    assert run.code == 1
    assert run.codes == ["turn-unreachable"] * 3 + ["stun-unreachable"]
    evidence = [f["evidence"][0] for f in run.report["findings"]]
    assert f"ICMP port unreachable: nothing listens on UDP port {port}" in evidence[0]
    assert "connection refused" in evidence[1] and "connection refused" in evidence[2]
    assert run.report["summary"] == "STUN fails; nothing answers TURN over UDP, TCP and TLS"


def test_unresolvable_host() -> None:
    config = ice(
        [
            {
                "urls": ["turn:doctor-test.invalid:3478?transport=tcp"],
                "username": f"{int(time.time()) + 3600 * 4}:u",
                "credential": "x",
            }
        ]
    )
    run = doctor("--ice-servers", config, "--ignore", "no-tls-443")
    assert run.codes == ["turn-unreachable"]
    assert (
        "DNS: doctor-test.invalid does not resolve"
        in run.finding("turn-unreachable")["evidence"][0]
    )


def test_malformed_config() -> None:
    config = ice(
        [
            {"urls": ["turn:127.0.0.1:3478?transport=sctp", "stun:127.0.0.1:1"]},
            {"urls": "turns:127.0.0.1:443"},
        ]
    )
    run = doctor("--ice-servers", config)
    assert run.code == 1
    assert run.codes[:2] == ["no-turn", "bad-ice-config"]
    evidence = run.finding("bad-ice-config")["evidence"]
    assert any("transport='sctp'" in line and "SyntaxError" in line for line in evidence)
    assert any("InvalidAccessError" in line for line in evidence)
    not_json = doctor("--ice-servers", "{not json")
    assert (not_json.code, not_json.codes) == (1, ["bad-ice-config"])
    assert "No usable ICE server" in not_json.report["summary"]


def test_untrusted_certificate(server: Server) -> None:
    run = doctor("--ice-servers", server.config("tls"), "--ignore", "no-tls-443")
    assert run.code == 1
    assert run.codes[0] == "tls-certificate-invalid"
    evidence = run.finding("tls-certificate-invalid")["evidence"]
    assert (
        "certificate verify failed" in evidence[0] or "unable to get local issuer" in evidence[0]
    ), evidence
    assert "issued by CN=iceward test CA" in evidence[1]
    assert "works once the certificate is trusted" in evidence[3]
    insecure = doctor("--ice-servers", server.config("tls"), "--ignore", "no-tls-443", "--insecure")
    assert "tls-certificate-invalid" not in insecure.codes
    assert insecure.report["probes"][0]["tls"]["checked"] is False


def test_self_signed_iceward_certificate(
    servers: Callable[..., Server],
) -> None:
    own = servers("iceward")  # no --cert: iceward generates a self-signed one
    run = doctor("--ice-servers", own.config("tls"), "--ignore", "no-tls-443")
    assert run.codes[0] == "tls-certificate-invalid"
    assert "self-signed certificate" in run.finding("tls-certificate-invalid")["evidence"][0]


def test_high_relay_latency_threshold(server: Server, ca: CertAuthority) -> None:
    run = doctor(
        "--ice-servers",
        server.config("udp", "tcp", "tls"),
        "--ca-file",
        str(ca.ca_cert),
        "--ignore",
        "no-tls-443",
        "--max-relay-rtt",
        "0",
    )
    assert run.code == 0
    assert run.finding("high-relay-latency")["severity"] == "warning"


#: coturn's denied-peer-ip lines for the internal IPv4 ranges (what a hardened config has).
DENY_INTERNAL = tuple(
    f"--denied-peer-ip={r}"
    for r in (
        "0.0.0.0-0.255.255.255",
        "10.0.0.0-10.255.255.255",
        "100.64.0.0-100.127.255.255",
        "169.254.0.0-169.254.255.255",
        "172.16.0.0-172.31.255.255",
        "192.168.0.0-192.168.255.255",
    )
)
SECURITY_CASES: dict[str, tuple[str, dict[str, Any], set[str]]] = {
    # name: (server kind, its options, peers expected to be accepted)
    "iceward-allows-loopback": ("iceward", {}, {"127.0.0.1"}),
    "iceward-defaults": ("iceward", {"allow_loopback": False, "tls": False}, set()),
    "coturn-allows-loopback": ("coturn", {"extra": DENY_INTERNAL}, {"127.0.0.1"}),
    "coturn-denies-internal": ("coturn", {"allow_loopback": False, "extra": DENY_INTERNAL}, set()),
    # coturn's defaults refuse loopback but relay to private ranges and the metadata address.
    "coturn-defaults": (
        "coturn",
        {"allow_loopback": False},
        {"169.254.169.254", "10.0.0.1", "172.16.0.1", "192.168.0.1", "100.64.0.1"},
    ),
}


@pytest.mark.parametrize("case", list(SECURITY_CASES))
def test_security(case: str, servers: Callable[..., Server]) -> None:
    kind, options, expected = SECURITY_CASES[case]
    target = servers(kind, **options)
    run = doctor("--ice-servers", target.config("udp"), "--security")
    [scan] = run.report["security"]
    assert scan["error"] is None
    assert len(scan["checks"]) == 12
    accepted = {c["peer"] for c in scan["checks"] if c["accepted"]}
    assert accepted == expected
    if expected:
        evidence = run.finding("open-relay-exposure")["evidence"]
        assert all(any(peer in line for line in evidence) for peer in expected)
    else:
        assert "open-relay-exposure" not in run.codes
    without = doctor("--ice-servers", target.config("udp"))
    assert without.report["security"] is None and "open-relay-exposure" not in without.codes
    if "127.0.0.1" not in expected:  # the data path between two loopback relays got a 403
        assert without.report["datapath"][0]["not_tested"], without.report["datapath"]
        assert "the relay data path went untested" in without.report["summary"]


def test_data_path_over_tls_when_that_is_all_there_is(server: Server, ca: CertAuthority) -> None:
    # ChannelData over a stream is padded to 4 bytes (RFC 8656 12.5): both servers must agree.
    run = doctor("--ice-servers", server.config("tls"), "--ca-file", str(ca.ca_cert))
    [datapath] = run.report["datapath"]
    assert datapath["transport"] == "tls"
    assert (datapath["a_to_b"], datapath["b_to_a"]) == (20, 20), datapath
    assert datapath["lost_by_size"] == {"160": 0, "1200": 0}
