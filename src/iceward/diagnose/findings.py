"""The findings vocabulary (a contract: scripts and dashboards match on the codes).

Add codes, never rename them. ``CODES`` is in the order field reports rank the causes of
"ICE failed", which is also the order findings are reported in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER: dict[str, int] = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True, slots=True)
class FindingSpec:
    code: str
    severity: Severity
    title: str
    fix: str


_SPECS = (
    FindingSpec(
        "no-turn",
        "error",
        "No TURN server in the configuration",
        "Add TURN with UDP, TCP and TLS-443 URLs.",
    ),
    FindingSpec(
        "turn-auth-failed",
        "error",
        "The TURN server refused the credential (401/441)",
        "Check the username and credential; test with iceTransportPolicy 'relay'.",
    ),
    FindingSpec(
        "turn-credential-expired",
        "error",
        "The TURN REST credential is expired or expires before use",
        "Mint credentials at call start, use a longer TTL, fix the clock.",
    ),
    FindingSpec(
        "turn-udp-only",
        "error",
        "Every TURN URL is UDP: users whose network blocks UDP cannot connect",
        "Add turn:...?transport=tcp and turns: on port 443.",
    ),
    FindingSpec(
        "symmetric-nat-no-turn",
        "error",
        "Both sides are behind NATs that only a relay can cross, and there is no relay",
        "Add TURN.",
    ),
    FindingSpec(
        "bad-ice-config",
        "error",
        "The iceServers configuration is malformed",
        "Fix what the server hands the client, and log it.",
    ),
    FindingSpec(
        "no-tls-443",
        "warning",
        "No turns: URL on port 443",
        "Add turns: on 443: corporate firewalls often pass only 443.",
    ),
    FindingSpec(
        "turn-unreachable",
        "error",
        "Nothing answers on this TURN URL and transport",
        "Check the firewall, DNS and port.",
    ),
    FindingSpec(
        "stun-unreachable",
        "warning",
        "No server-reflexive address from STUN",
        "The STUN port is blocked or the server is down.",
    ),
    FindingSpec(
        "relay-ports-blocked",
        "error",
        "Allocations work but data through the relay does not",
        "Open the relay port range (UDP) on the server's firewall.",
    ),
    FindingSpec(
        "private-relay-address",
        "error",
        "The relayed address is private or loopback",
        "Set the server's external IP (--external-ip / external-ip).",
    ),
    FindingSpec(
        "static-credentials",
        "warning",
        "Long-lived TURN credential in client config",
        "Use ephemeral TURN REST credentials minted per session.",
    ),
    FindingSpec(
        "connected-no-media",
        "error",
        "ICE connected but no packets flow",
        "Force relay; check the relay port range and the media path.",
    ),
    FindingSpec(
        "high-relay-latency",
        "warning",
        "Round trips through the relay are slow",
        "Run TURN closer to the users.",
    ),
    FindingSpec(
        "open-relay-exposure",
        "error",
        "The server relays to loopback, private or metadata addresses",
        "Deny internal peer ranges (denied-peer-ip / --deny-peer; no --allow-peer).",
    ),
    FindingSpec(
        "tls-certificate-invalid",
        "error",
        "The turns: certificate is untrusted, expired or for another name",
        "Install a certificate from a public CA that names the TURN host.",
    ),
    FindingSpec(
        "ice-failed-unknown",
        "error",
        "ICE failed and no rule explains it",
        "Read the evidence attached; record a webrtc-internals dump.",
    ),
    FindingSpec("relay-in-use", "info", "The selected candidate pair is relayed", "—"),
    FindingSpec("direct-path", "info", "The selected candidate pair is direct (host/srflx)", "—"),
)

CODES: dict[str, FindingSpec] = {spec.code: spec for spec in _SPECS}

#: static-credentials: a TURN REST credential valid longer than this is as good as a static
#: password once leaked (the doctor and the test page judge with it).
LONG_LIVED_CREDENTIAL_S = 7 * 86400
_RANK = {code: i for i, code in enumerate(CODES)}


@dataclass(slots=True)
class Finding:
    code: str
    severity: Severity
    title: str
    evidence: list[str] = field(default_factory=list)
    fix: str = ""
    #: The URL, transport or peer connection the finding is about, when it is about one.
    subject: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "severity": self.severity,
            "title": self.title,
            "evidence": list(self.evidence),
            "fix": self.fix,
        }
        if self.subject is not None:
            out["subject"] = self.subject
        return out


def make_finding(
    code: str,
    evidence: list[str] | str,
    *,
    severity: Severity | None = None,
    subject: str | None = None,
    title: str | None = None,
) -> Finding:
    """A finding for a known code; severity may be lowered or raised by context (see DESIGN)."""
    spec = CODES[code]
    return Finding(
        code=code,
        severity=severity or spec.severity,
        title=title or spec.title,
        evidence=[evidence] if isinstance(evidence, str) else list(evidence),
        fix=spec.fix,
        subject=subject,
    )


def rank(findings: list[Finding]) -> list[Finding]:
    """Errors first, then by how often the cause is behind "ICE failed" in the field."""
    return sorted(findings, key=lambda f: (SEVERITY_ORDER[f.severity], _RANK.get(f.code, 99)))
