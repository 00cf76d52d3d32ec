"""``iceward firewall``: rules from serve's own settings, in every format; and the nftables rules
applied in a network namespace with a default-drop input policy, where a relayed call goes
through them, and stops when the relay-range rule is taken out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iceward.cli import app
from tests.conftest import make_test_ca, require_tool
from tests.doctor.conftest import REALM, SECRET, Netns, Server, doctor_in

#: The server's address inside the namespace (a documentation range, on the namespace's own
#: loopback interface: the namespace has no link out).
SERVER_IP = "203.0.113.10"


def firewall(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["firewall", *args], env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def rule_lines(text: str) -> list[str]:
    skip = ("#", "SG=", "NETWORK=")
    return [line for line in text.splitlines() if line and not line.startswith(skip)]


def test_rules_follow_serves_settings(tmp_path: Path) -> None:
    """Flags over environment over the TOML file, as for serve; every listener, the relay range,
    RFC 5780 and a non-loopback HTTP API get their rule."""
    config = tmp_path / "iceward.toml"
    config.write_text('relay_ports = "50000-50999"\nport = 3000\nhttp = "0.0.0.0:8443"\n')
    args = ["--config", str(config), "--port", "3479", "--listen", "192.0.2.10"]
    env = {"ICEWARD_TLS_PORT": "443", "ICEWARD_ALTERNATE_ADDRESS": "192.0.2.11"}
    code, out, err = firewall(*args, env=env)
    assert code == 0, err
    assert rule_lines(out) == [
        'add rule inet filter input ip daddr 192.0.2.10 udp dport 3479 accept comment "iceward STUN/TURN over UDP"',  # noqa: E501
        'add rule inet filter input ip daddr 192.0.2.10 tcp dport 3479 accept comment "iceward STUN/TURN over TCP"',  # noqa: E501
        'add rule inet filter input ip daddr 192.0.2.10 tcp dport 443 accept comment "iceward TURN over TLS"',  # noqa: E501
        'add rule inet filter input ip daddr 192.0.2.10 udp dport 3480 accept comment "iceward RFC 5780 alternate (STUN)"',  # noqa: E501
        'add rule inet filter input ip daddr 192.0.2.11 udp dport 3479 accept comment "iceward RFC 5780 alternate (STUN)"',  # noqa: E501
        'add rule inet filter input ip daddr 192.0.2.11 udp dport 3480 accept comment "iceward RFC 5780 alternate (STUN)"',  # noqa: E501
        'add rule inet filter input ip daddr 192.0.2.10 udp dport 50000-50999 accept comment "iceward relay ports"',  # noqa: E501
        'add rule inet filter input tcp dport 8443 accept comment "iceward HTTP API (narrow the source to your backends)"',  # noqa: E501
    ]

    # Defaults: every address, no rule for the HTTP API on loopback; the other formats.
    expected = {
        "iptables": [
            'iptables -I INPUT -p udp --dport 3478 -m comment --comment "iceward STUN/TURN over UDP" -j ACCEPT',  # noqa: E501
            'iptables -I INPUT -p tcp --dport 3478 -m comment --comment "iceward STUN/TURN over TCP" -j ACCEPT',  # noqa: E501
            'iptables -I INPUT -p tcp --dport 5349 -m comment --comment "iceward TURN over TLS" -j ACCEPT',  # noqa: E501
            'iptables -I INPUT -p udp --dport 49152:65535 -m comment --comment "iceward relay ports" -j ACCEPT',  # noqa: E501
        ],
        "ufw": [
            "ufw allow proto udp to any port 3478 comment 'iceward STUN/TURN over UDP'",
            "ufw allow proto tcp to any port 3478 comment 'iceward STUN/TURN over TCP'",
            "ufw allow proto tcp to any port 5349 comment 'iceward TURN over TLS'",
            "ufw allow proto udp to any port 49152:65535 comment 'iceward relay ports'",
        ],
        "firewalld": [
            "firewall-cmd --permanent --add-port=3478/udp  # iceward STUN/TURN over UDP",
            "firewall-cmd --permanent --add-port=3478/tcp  # iceward STUN/TURN over TCP",
            "firewall-cmd --permanent --add-port=5349/tcp  # iceward TURN over TLS",
            "firewall-cmd --permanent --add-port=49152-65535/udp  # iceward relay ports",
            "firewall-cmd --reload",
        ],
        "gcp": [
            f'gcloud compute firewall-rules create iceward-{name} --network="$NETWORK" '
            f"--direction=INGRESS --action=ALLOW --rules={rules} --source-ranges=0.0.0.0/0 "
            f'--target-tags=iceward --description="{why}"'
            for name, rules, why in (
                ("udp-3478", "udp:3478", "iceward STUN/TURN over UDP"),
                ("tcp-3478", "tcp:3478", "iceward STUN/TURN over TCP"),
                ("tcp-5349", "tcp:5349", "iceward TURN over TLS"),
                ("udp-49152-65535", "udp:49152-65535", "iceward relay ports"),
            )
        ],
    }
    for fmt, lines in expected.items():
        code, out, err = firewall("--format", fmt, env={})
        assert code == 0, err
        assert rule_lines(out) == lines, fmt
    code, out, _ = firewall("--format", "aws", "--listen", "::", env={})
    permissions = [json.loads(line.split("--ip-permissions ")[1].strip("'"))[0]
                   for line in rule_lines(out)]  # fmt: skip
    assert [(p["IpProtocol"], p["FromPort"], p["ToPort"]) for p in permissions] == [
        ("udp", 3478, 3478), ("tcp", 3478, 3478), ("tcp", 5349, 5349), ("udp", 49152, 65535),
    ]  # fmt: skip
    assert permissions[0]["Ipv6Ranges"] == [
        {"CidrIpv6": "::/0", "Description": "iceward STUN/TURN over UDP"}
    ]
    assert permissions[3]["IpRanges"][0]["CidrIp"] == "0.0.0.0/0"  # relays bind IPv4 here


def test_ports_picked_at_start_have_no_rule() -> None:
    code, out, err = firewall("--port", "0", env={})
    assert code == 2 and out == ""
    assert "port 0 is picked at start" in err
    code, _, err = firewall("--relay-ports", "9-8", env={})
    assert code == 2 and "relay-ports" in err


@pytest.mark.realclient
@pytest.mark.timeout(120)
def test_nftables_rules_let_a_relayed_call_through(netns: Netns, tmp_path: Path) -> None:
    """Default-drop input, plus exactly what `iceward firewall` prints: the doctor's call crosses
    the relay. Without the relay-range rule, allocations still work and the doctor names
    relay-ports-blocked."""
    require_tool("nft")
    low, high = 62000, 62200  # above the ephemeral range: the doctor's own sockets stay clear
    serve_flags = ["--listen", SERVER_IP, "--port", "3478", "--tls-port", "443",
                   "--relay-ports", f"{low}-{high}"]  # fmt: skip
    code, rules, err = firewall("--format", "nftables", *serve_flags, env={})
    assert code == 0, err
    relay_rule = f'add rule inet filter input ip daddr {SERVER_IP} udp dport {low}-{high} accept comment "iceward relay ports"'  # noqa: E501
    assert relay_rule in rules.splitlines()
    base = tmp_path / "base.nft"
    base.write_text(
        "flush ruleset\n"
        "table inet filter {\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy drop;\n"
        "    ct state established,related accept\n"
        "  }\n"
        "}\n"
    )
    full, without_relay = tmp_path / "iceward.nft", tmp_path / "no-relay.nft"
    full.write_text(rules)
    without_relay.write_text(rules.replace(relay_rule + "\n", ""))

    netns.run("ip", "addr", "add", f"{SERVER_IP}/32", "dev", "lo")
    netns.run("nft", "-f", str(base))
    netns.run("nft", "-f", str(full))

    ca = make_test_ca(tmp_path / "ca", (SERVER_IP,))
    argv = [sys.executable, "-m", "iceward", "serve", *serve_flags, "--cert", str(ca.cert),
            "--key", str(ca.key), "--secret", SECRET, "--realm", REALM, "--http", "off",
            "--workers", "1", "--data-dir", str(tmp_path / "data")]  # fmt: skip
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*netns.prefix, *argv], stdout=out, stderr=subprocess.STDOUT)
    netns.procs.append(proc)
    ready = subprocess.run([*netns.prefix, sys.executable, "-c", _WAIT_STUN, SERVER_IP],
                           timeout=30)  # fmt: skip
    assert ready.returncode == 0, log.read_text(errors="replace")  # through the port rule

    server = Server("iceward", 3478, 443, proc, log, SECRET, host=SERVER_IP)
    config = server.config("stun", "udp", "tcp", "tls")
    healthy = doctor_in(netns.prefix, "--ice-servers", config, "--ca-file", str(ca.ca_cert))
    assert healthy.code == 0, healthy.output
    assert healthy.errors() == []
    assert {p["outcome"] for p in healthy.report["probes"]} == {"ok"}
    assert healthy.report["datapath"][0]["b_to_a"] == 20

    netns.run("nft", "-f", str(base))
    netns.run("nft", "-f", str(without_relay))
    blocked = doctor_in(netns.prefix, "--ice-servers", config, "--ca-file", str(ca.ca_cert))
    assert blocked.code == 1, blocked.output
    assert blocked.errors() == ["relay-ports-blocked"]
    assert {p["outcome"] for p in blocked.report["probes"]} == {"ok"}
    [datapath] = blocked.report["datapath"]
    assert (datapath["sent"], datapath["a_to_b"], datapath["b_to_a"]) == (20, 0, 0)


_WAIT_STUN = """
import os, socket, sys, time
request = bytes.fromhex("000100002112a442") + os.urandom(12)
deadline = time.time() + 15
while time.time() < deadline:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(request, (sys.argv[1], 3478))
            s.recvfrom(2048)
            sys.exit(0)
        except OSError:
            time.sleep(0.1)
sys.exit(1)
"""
