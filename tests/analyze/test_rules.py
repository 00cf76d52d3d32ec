"""Rules on constructed PeerConnections: the address rule judges IPv4 hidden in IPv6 too."""

from __future__ import annotations

import pytest

from iceward.analyze.model import Candidate, Config, PeerConnectionReport, StateChange
from iceward.analyze.rules import analyze

TURN = "turn:198.51.100.7:3478?transport=udp"


def relayed_call(relay_address: str) -> PeerConnectionReport:
    """A call that connected through a public TURN server, relayed from ``relay_address``."""
    pc = PeerConnectionReport(id="pc", source="webrtc-internals", negotiated=True)
    pc.config = Config(known=True, ice_servers=[TURN], server_groups=[[TURN]])
    pc.candidates = [
        Candidate("local", "relay", "udp", relay_address, 50000, relay_protocol="udp", url=TURN)
    ]
    pc.states = [StateChange(1000.0, "connection", "connected")]
    return pc


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "::ffff:192.168.1.1",
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
        "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    ],
)
def test_a_relay_address_hiding_a_private_ipv4_is_private(address: str) -> None:
    findings = analyze([relayed_call(address)])
    private = [f for f in findings if f.code == "private-relay-address"]
    assert private, [f.code for f in findings]
    assert any(address in line for line in private[0].evidence)
    assert any("reached on a public address" in line for line in private[0].evidence)


@pytest.mark.parametrize("address", ["203.0.113.9", "64:ff9b::cb00:7109", "2002:cb00:7109::1"])
def test_a_public_relay_address_is_not_reported(address: str) -> None:
    findings = analyze([relayed_call(address)])
    assert "private-relay-address" not in {f.code for f in findings}
