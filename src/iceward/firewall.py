"""``iceward firewall``: the exact inbound rules iceward needs, for nftables, iptables, ufw,
firewalld, an AWS security group or GCP firewall rules.

The rules come from the same settings as ``iceward serve`` (flags, ``ICEWARD_*``, ``--config``)
through the server's own plan (:func:`iceward.server.plan.plan`), so they open what ``serve``
binds: UDP and TCP on the port, TCP on the TLS port, the UDP relay range on the relay addresses,
the RFC 5780 alternate ports, and the HTTP API when it listens beyond loopback. Replies to the
server's own traffic need the usual "accept established" rule, which every default ruleset has.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import ValidationError

from iceward.cliutil import Opt, fail, settings_error
from iceward.config import ServerSettings, flag_of, load_settings, parse_external_ip
from iceward.server.plan import plan, specific

COMMAND = "firewall"

#: The settings that decide the rules (each is also an option of the command), and their metavars.
SETTINGS: dict[str, str] = {
    "listen": "IP",
    "port": "PORT",
    "tls_port": "PORT",
    "relay_ip": "IP",
    "relay_ports": "LOW-HIGH",
    "external_ip": "PUBLIC[/PRIVATE]",
    "http": "HOST:PORT|off",
    "alternate_address": "IP[:PORT]",
}


class Format(StrEnum):
    nftables = "nftables"
    iptables = "iptables"
    ufw = "ufw"
    firewalld = "firewalld"
    aws = "aws"
    gcp = "gcp"


@dataclass(frozen=True, slots=True)
class Rule:
    proto: Literal["udp", "tcp"]
    low: int
    high: int
    #: The destination address, or None for any address of ``family``.
    address: str | None
    family: Literal[4, 6]
    purpose: str

    @property
    def ports(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


RELAY_PURPOSE = "iceward relay ports"


def rules(settings: ServerSettings) -> list[Rule]:
    """The inbound rules ``iceward serve`` with ``settings`` needs; ValueError for ports that
    are picked at start (0), which no firewall rule can name."""
    server = plan(settings, workers=1)
    if settings.port == 0:
        raise ValueError("port 0 is picked at start: give a fixed --port to write rules for")
    out: list[Rule] = []

    def add(proto: Literal["udp", "tcp"], low: int, high: int, ip: str, purpose: str) -> None:
        version = ipaddress.ip_address(ip).version
        family: Literal[4, 6] = 6 if version == 6 else 4
        address = None if ipaddress.ip_address(ip).is_unspecified else ip
        rule = Rule(proto, low, high, address, family, purpose)
        if rule not in out:
            out.append(rule)

    for host in settings.listen:
        add("udp", settings.port, settings.port, host, "iceward STUN/TURN over UDP")
        add("tcp", settings.port, settings.port, host, "iceward STUN/TURN over TCP")
    if server.tls_port is not None:
        if server.tls_port == 0:
            raise ValueError("tls_port 0 is picked at start: give a fixed --tls-port (or none)")
        for host in settings.listen:
            add("tcp", server.tls_port, server.tls_port, host, "iceward TURN over TLS")
    if server.turn.change_addresses:
        (ip_a, port_a), (ip_b, port_b) = server.turn.change_addresses
        for ip, port in ((ip_a, port_b), (ip_b, port_a), (ip_b, port_b)):
            add("udp", port, port, ip, "iceward RFC 5780 alternate (STUN)")
    low, high = settings.port_range
    _, private = parse_external_ip(settings.external_ip)
    if settings.relay_ip or private or specific(settings.listen):
        relay_ips = server.relay_ips
    else:  # the relays bind the address of the default route (IPv4): any IPv4 address
        relay_ips = ["0.0.0.0"]
    for ip in relay_ips:
        add("udp", low, high, ip, RELAY_PURPOSE)
    if server.http is not None:
        host, port = server.http
        if not ipaddress.ip_address(host).is_loopback:
            if port == 0:
                raise ValueError("the HTTP API's port 0 is picked at start: give --http HOST:PORT")
            add("tcp", port, port, host, "iceward HTTP API (narrow the source to your backends)")
    return out


def _source(settings: ServerSettings) -> str:
    """The settings the rules were made from, for the header."""
    http = settings.http
    if settings.http_bind is not None and ipaddress.ip_address(settings.http_bind[0]).is_loopback:
        http += " (loopback: no rule)"
    parts = [
        f"listen {', '.join(settings.listen)}",
        f"port {settings.port}",
        f"tls_port {settings.tls_port}",
        f"relay_ports {settings.relay_ports}",
        f"http {http}",
    ]
    if settings.relay_ip:
        parts.append(f"relay_ip {', '.join(settings.relay_ip)}")
    if settings.external_ip:
        parts.append(f"external_ip {settings.external_ip}")
    if settings.alternate_address:
        parts.append(f"alternate_address {settings.alternate_address}")
    return "; ".join(parts)


# -- formats ------------------------------------------------------------------------------------


def _nftables(found: list[Rule]) -> list[str]:
    lines = [
        "#!/usr/sbin/nft -f",
        "# Added to the input chain of table inet filter (Debian's /etc/nftables.conf), which must",
        "# also accept replies (ct state established,related accept). Apply: nft -f THIS-FILE",
    ]
    for r in found:
        ip = "ip6" if r.family == 6 else "ip"
        match = "" if r.address is None else f"{ip} daddr {r.address} "
        lines.append(
            f"add rule inet filter input {match}{r.proto} dport {r.ports} accept "
            f'comment "{r.purpose}"'
        )
    return lines


def _iptables(found: list[Rule]) -> list[str]:
    lines = [
        "# Inserted at the top of INPUT (before any final DROP/REJECT); keep them with",
        "# iptables-save > /etc/iptables/rules.v4 (and ip6tables-save > rules.v6).",
    ]
    for r in found:
        tool = "ip6tables" if r.family == 6 else "iptables"
        dest = "" if r.address is None else f" -d {r.address}"
        lines.append(
            f"{tool} -I INPUT -p {r.proto}{dest} --dport {r.ports.replace('-', ':')} "
            f'-m comment --comment "{r.purpose}" -j ACCEPT'
        )
    return lines


def _ufw(found: list[Rule]) -> list[str]:
    lines = ["# ufw rules (IPv4 and IPv6 alike for 'any')."]
    for r in found:
        lines.append(
            f"ufw allow proto {r.proto} to {r.address or 'any'} port "
            f"{r.ports.replace('-', ':')} comment '{r.purpose}'"
        )
    return lines


def _firewalld(found: list[Rule]) -> list[str]:
    lines = ["# firewalld, default zone; applied by the reload at the end."]
    for r in found:
        if r.address is None:
            lines.append(f"firewall-cmd --permanent --add-port={r.ports}/{r.proto}  # {r.purpose}")
        else:
            family = "ipv6" if r.family == 6 else "ipv4"
            lines.append(
                f'firewall-cmd --permanent --add-rich-rule=\'rule family="{family}" destination '
                f'address="{r.address}" port port="{r.ports}" protocol="{r.proto}" accept\''
                f"  # {r.purpose}"
            )
    lines.append("firewall-cmd --reload")
    return lines


def _aws(found: list[Rule]) -> list[str]:
    lines = [
        "# AWS security group ingress: a group opens ports on the instance, whatever the address.",
        'SG="${SG:?set SG to the id of the security group attached to the instance}"',
    ]
    for r in _by_ports(found):
        key, cidr = ("Ipv6Ranges", "CidrIpv6") if r.family == 6 else ("IpRanges", "CidrIp")
        permission = {
            "IpProtocol": r.proto,
            "FromPort": r.low,
            "ToPort": r.high,
            key: [{cidr: "::/0" if r.family == 6 else "0.0.0.0/0", "Description": r.purpose}],
        }
        lines.append(
            f'aws ec2 authorize-security-group-ingress --group-id "$SG" --ip-permissions '
            f"'{json.dumps([permission], separators=(',', ':'))}'"
        )
    return lines


def _gcp(found: list[Rule]) -> list[str]:
    lines = [
        "# GCP VPC firewall rules for instances tagged iceward",
        "# (gcloud compute instances add-tags INSTANCE --tags=iceward).",
        'NETWORK="${NETWORK:-default}"',
    ]
    for r in _by_ports(found):
        v6 = r.family == 6
        name = f"iceward-{r.proto}-{r.ports}" + ("-v6" if v6 else "")
        lines.append(
            f'gcloud compute firewall-rules create {name} --network="$NETWORK" '
            f"--direction=INGRESS --action=ALLOW --rules={r.proto}:{r.ports} "
            f"--source-ranges={'::/0' if v6 else '0.0.0.0/0'} --target-tags=iceward "
            f'--description="{r.purpose}"'
        )
    return lines


def _by_ports(found: list[Rule]) -> list[Rule]:
    """Cloud rules open ports on an instance: one per protocol, ports and family."""
    seen: dict[tuple[str, int, int, int], Rule] = {}
    for r in found:
        seen.setdefault((r.proto, r.low, r.high, r.family), r)
    return list(seen.values())


RENDERERS = {
    Format.nftables: _nftables,
    Format.iptables: _iptables,
    Format.ufw: _ufw,
    Format.firewalld: _firewalld,
    Format.aws: _aws,
    Format.gcp: _gcp,
}


def render(settings: ServerSettings, fmt: Format) -> str:
    found = rules(settings)
    header = [f"# iceward firewall rules ({fmt.value}) for: {_source(settings)}"]
    body = RENDERERS[fmt](found)
    if body and body[0].startswith("#!"):
        header.insert(0, body.pop(0))
    return "\n".join(header + body) + "\n"


# -- the command --------------------------------------------------------------------------------


def firewall(fmt: Format = Format.nftables, config: Path | None = None, **given: Any) -> None:
    """Print the firewall rules that open iceward's listeners and relay range (read from the
    same settings as serve: these flags, ICEWARD_* variables, --config)."""
    try:
        settings = load_settings(config, **given)
    except (ValidationError, ValueError) as exc:
        raise settings_error(exc) from None
    try:
        text = render(settings, fmt)
    except ValueError as exc:
        raise fail(str(exc), command=COMMAND) from None
    typer.echo(text, nl=False)


def _signature() -> inspect.Signature:
    """``--format``, ``--config`` and serve's own flag for each of :data:`SETTINGS` (its help
    from ServerSettings); every setting defaults to None, "not given", as in serve."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter(
            "fmt", kw, default=Format.nftables,
            annotation=Annotated[Format, Opt("--format", help="Which firewall the rules are for.")],
        ),
        inspect.Parameter(
            "config", kw, default=None,
            annotation=Annotated[
                Path | None, Opt("--config", metavar="FILE", help="serve's TOML settings file.")
            ],
        ),
    ]  # fmt: skip
    for name, metavar in SETTINGS.items():
        field = ServerSettings.model_fields[name]
        kind: Any = list[str] if name in ("listen", "relay_ip") else (
            int if name in ("port", "tls_port") else str)  # fmt: skip
        help_text = (field.description or "").replace("[", "\\[")
        params.append(
            inspect.Parameter(
                name, kw, default=None,
                annotation=Annotated[
                    kind | None, Opt(flag_of(name), metavar=metavar, help=help_text)
                ],
            )
        )  # fmt: skip
    return inspect.Signature(params)


firewall.__signature__ = _signature()  # type: ignore[attr-defined]


def register(app: typer.Typer) -> None:
    """Add the subcommand to ``app``."""
    app.command(COMMAND)(firewall)
