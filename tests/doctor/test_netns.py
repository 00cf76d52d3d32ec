"""Scenarios that need a network of their own: TURN on port 443, and a firewalled relay range.

Each test creates a network namespace with only ``lo`` up and runs the server and the doctor
inside it, so port 443 is free and iptables rules touch nothing outside.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CertAuthority, require_tool
from tests.doctor.conftest import NS_RELAY, Netns, Server, doctor_in

pytestmark = pytest.mark.realclient


@pytest.fixture(params=["iceward", "coturn"])
def ns_server(
    request: pytest.FixtureRequest, netns: Netns, ca: CertAuthority, tmp_path: Path
) -> Server:
    """A server in the namespace: UDP/TCP 3478, TLS 443, relays from NS_RELAY."""
    if request.param == "iceward":
        return netns.start_iceward(tmp_path / "iceward", ca)
    require_tool("turnserver")
    return netns.start_coturn(tmp_path / "coturn", ca)


def test_healthy_on_443_then_relay_ports_blocked(
    netns: Netns, ns_server: Server, ca: CertAuthority
) -> None:
    require_tool("iptables")
    config = ns_server.config("stun", "udp", "tcp", "tls")
    assert "turns:127.0.0.1:443?transport=tcp" in config

    healthy = doctor_in(netns.prefix, "--ice-servers", config, "--ca-file", str(ca.ca_cert))
    assert healthy.code == 0, healthy.output
    assert healthy.errors() == []
    assert "no-tls-443" not in healthy.codes and "relay-ports-blocked" not in healthy.codes
    assert healthy.report["datapath"][0]["b_to_a"] == 20

    low, high = NS_RELAY
    netns.run("iptables", "-A", "INPUT", "-p", "udp", "--dport", f"{low}:{high}", "-j", "DROP")
    blocked = doctor_in(netns.prefix, "--ice-servers", config, "--ca-file", str(ca.ca_cert))
    assert blocked.code == 1, blocked.output
    assert blocked.errors() == ["relay-ports-blocked"]
    assert {p["outcome"] for p in blocked.report["probes"]} == {"ok"}  # allocations still work
    [datapath] = blocked.report["datapath"]
    assert (datapath["sent"], datapath["a_to_b"], datapath["b_to_a"]) == (20, 0, 0)
    assert low <= datapath["relayed_a"][1] <= high
    assert blocked.report["summary"] == (
        "STUN works; TURN over UDP, TCP and TLS work; UDP to the relay port range is blocked "
        "(0/20 packets crossed)"
    )
