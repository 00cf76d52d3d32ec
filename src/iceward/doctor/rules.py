"""Step 7: evidence in, findings out, then the one-line verdict.

Rules are tried in the order field reports rank the causes of "ICE failed" (DESIGN.md), and every
finding carries the evidence that made it. In the doctor, config weaknesses (UDP-only TURN, no
``turns:`` on 443, long-lived credentials) are errors: the doctor judges a config handed to many
users, and some of them sit behind the networks those weaknesses fail on.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from iceward.diagnose.address import is_internal
from iceward.diagnose.findings import LONG_LIVED_CREDENTIAL_S, Finding, make_finding, rank
from iceward.doctor.config import Credential, ServerUrl, unique_urls
from iceward.doctor.evidence import Evidence, Probe, fmt_addr

#: A REST credential valid longer than this is as good as a static password once leaked.
LONG_LIVED_S = LONG_LIVED_CREDENTIAL_S
SKEW_NOTICE_S = 30.0
#: A credential minted for exactly the call length is judged seconds after it was minted (the
#: fetch and the run take that long; REST expiries are whole seconds): that much is forgiven.
MINTED_SLACK_S = 60.0


@dataclass(frozen=True, slots=True)
class RuleOptions:
    #: A REST credential must outlive a call: browsers refresh the allocation with it.
    call_length_s: float = 3600.0
    #: Round trip through the relay (client → relay → relay → client and back) above this warns.
    max_relay_rtt_ms: float = 300.0
    #: A certificate expiring sooner than this many days warns.
    tls_expiry_days: float = 14.0


Rule = Callable[[Evidence, RuleOptions], list[Finding]]


def duration(seconds: float) -> str:
    """``3 d 4 h``, ``2 h 5 min``, ``4 min 10 s``, ``12 s``."""
    s = int(abs(seconds))
    days, rem = divmod(s, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def outlives_call(left: float, call_length_s: float) -> bool:
    """Whether a credential with ``left`` seconds to live lasts a call of ``call_length_s``: one
    minted for exactly the call length (a TTL of 3600 for calls of an hour) does."""
    return left + MINTED_SLACK_S >= call_length_s


def utc(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _servers(ev: Evidence) -> dict[int, list[ServerUrl]]:
    """TURN URLs grouped by their iceServers entry (one credential each)."""
    out: dict[int, list[ServerUrl]] = {}
    for url in ev.config.turn_urls:
        out.setdefault(url.server_index, []).append(url)
    return out


def _subject(index: int, urls: list[ServerUrl]) -> str:
    return f"iceServers[{index}] ({', '.join(u.raw for u in urls)})"


def _probe_lines(probes: Iterable[Probe]) -> list[str]:
    lines = []
    for p in probes:
        steps = "; ".join(p.transcript) if p.transcript else (p.error or p.outcome)
        lines.append(f"{p.url} via {p.transport.upper()} to {p.target}: {steps}")
    return lines


def _skew_line(ev: Evidence) -> list[str]:
    skew = ev.source.clock_skew_s
    if skew is None or abs(skew) < SKEW_NOTICE_S:
        return []
    side = "ahead of" if skew > 0 else "behind"
    return [
        f"the credentials server's clock is {duration(skew)} {side} this machine's "
        "(HTTP Date): REST expiries are minted on that clock"
    ]


# -- the rules, in ranking order ----------------------------------------------------------------


def bad_config(ev: Evidence, opts: RuleOptions) -> list[Finding]:
    errors = [i.message for i in ev.config.issues if i.severity == "error"]
    warnings = [i.message for i in ev.config.issues if i.severity == "warning"]
    served = []
    if ev.source.kind == "url":
        src = ev.source
        served = [
            f"as served by {src.method or 'GET'} {src.location} (HTTP {src.http_status}, "
            f"Content-Type {src.content_type or 'none'})"
        ]
    out = []
    if errors:
        out.append(make_finding("bad-ice-config", errors + served))
    if warnings:
        out.append(
            make_finding(
                "bad-ice-config",
                warnings + served,
                severity="warning",
                title="The iceServers configuration has questionable entries",
            )
        )
    return out


def no_turn(ev: Evidence, opts: RuleOptions) -> list[Finding]:
    config = ev.config
    if config.turn_urls or not config.readable:
        return []  # an unreadable document is bad-ice-config alone
    lines = []
    if config.unusable_turn:
        lines.append(
            f"{len(config.unusable_turn)} TURN URL(s) lack a username or credential, so "
            f"browsers cannot use them: {', '.join(config.unusable_turn)}"
        )
    else:
        lines.append(
            f"the config lists {len(config.stun_urls)} STUN URL(s) and no turn:/turns: URL"
        )
    mapped = [p.mapped for p in ev.probes if p.outcome == "ok" and p.mapped]
    if mapped:
        lines.append(
            f"STUN works (server-reflexive {mapped[0][0]}), but only a relay "
            "connects users behind symmetric NATs or firewalls that "
            "block UDP"
        )
    if config.transport_policy == "relay":
        lines.append("iceTransportPolicy is 'relay': without TURN no candidate is gathered at all")
    return [make_finding("no-turn", lines)]


def credentials(ev: Evidence, opts: RuleOptions) -> list[Finding]:
    """turn-credential-expired (REST expiry past, or before the call ends) and turn-auth-failed."""
    out = []
    for index, urls in _servers(ev).items():
        cred = urls[0].credential
        assert cred is not None
        probes = [p for u in urls for p in ev.probes_for(u)]
        refused = [p for p in probes if p.outcome == "auth"]
        subject = _subject(index, urls)
        left = None if cred.rest_expiry is None else cred.rest_expiry - ev.now
        if left is not None and left <= 0:
            lines = [
                f"username {cred.username!r} is a TURN REST credential that expired at "
                f"{utc(cred.rest_expiry or 0)}, {duration(left)} ago by this machine's clock"
            ]
            lines += [f"the server refused it: {line}" for line in _probe_lines(refused)]
            lines += _skew_line(ev)
            out.append(make_finding("turn-credential-expired", lines, subject=subject))
            continue
        if refused:
            lines = _probe_lines(refused)
            if left is not None:
                lines.append(
                    f"username {cred.username!r} is a TURN REST credential still valid for "
                    f"{duration(left)} by this machine's clock, so the password is what the server "
                    "refuses: the backend signs with a shared secret the TURN server does not "
                    f"hold (or the server's clock is more than {duration(left)} fast)"
                )
                lines += _skew_line(ev)
            out.append(make_finding("turn-auth-failed", lines, subject=subject))
        if left is not None and not outlives_call(left, opts.call_length_s):
            out.append(
                make_finding(
                    "turn-credential-expired",
                    [
                        f"username {cred.username!r} expires at {utc(cred.rest_expiry or 0)}, in "
                        f"{duration(left)}: a call that outlasts it loses its relay at the next "
                        "allocation refresh (calls up to "
                        f"{duration(opts.call_length_s)} are assumed; --call-length)",
                        *_skew_line(ev),
                    ],
                    severity="warning",
                    subject=subject,
                    title="The TURN REST credential expires before a call would end",
                )
            )
    return out


def udp_only(ev: Evidence, opts: RuleOptions) -> list[Finding]:
    turn = ev.config.turn_urls
    if not turn or any(u.transport != "udp" for u in turn):
        return []
    lines = [f"every TURN URL is UDP: {', '.join(u.raw for u in turn)}"]
    for p in (p for p in ev.probes if p.implied):
        if p.outcome == "ok":
            lines.append(f"the server also allocates over TCP at {p.target}: add {p.url}")
        elif p.outcome == "auth":
            lines.append(
                f"the server answers TURN over TCP at {p.target} (add {p.url}), though "
                "it refused this credential"
            )
        else:
            lines.append(f"TCP at {p.target}: {p.error}")
    return [make_finding("turn-udp-only", lines)]


def no_tls_443(ev: Evidence, opts: RuleOptions) -> list[Finding]:
    turn = ev.config.turn_urls
    if not turn or any(u.scheme == "turns" and u.port == 443 for u in turn):
        return []
    tls = [u.raw for u in turn if u.scheme == "turns"]
    line = (
        f"turns: URLs are on other ports: {', '.join(tls)}"
        if tls
        else "there is no turns: URL at all"
    )
    return [
        make_finding(
            "no-tls-443",
            [
                line,
                "networks that pass only HTTPS (corporate proxies, some hotels and airlines) "
                "reach no relay",
                "waive with --ignore no-tls-443 for a lab or an internal service",
            ],
            severity="error",
        )
    ]


def unreachable(ev: Evidence, opts: RuleOptions) -> list[Finding]:
    out = []
    for url in unique_urls(ev.config.turn_urls):
        probes = ev.probes_for(url)
        dead = [p for p in probes if p.outcome in ("unreachable", "skipped")]
        refused = [p for p in probes if p.outcome == "refused"]
        alive = [p for p in probes if p.outcome in ("ok", "auth")]
        if dead:
            lines = [f"{p.transport.upper()} {p.target}: {p.error}" for p in dead]
            if alive:
                lines.append(
                    "the other address family works: " + ", ".join(p.target for p in alive)
                )
            out.append(
                make_finding(
                    "turn-unreachable",
                    lines,
                    subject=url.raw,
                    severity="warning" if alive else "error",
                )
            )
        if refused:
            out.append(
                make_finding(
                    "turn-unreachable",
                    _probe_lines(refused),
                    subject=url.raw,
                    title="The TURN server answers but refuses the allocation",
                )
            )
    return out


def stun_unreachable(ev: Evidence, opts: RuleOptions) -> list[Finding]:
    out = []
    for url in unique_urls(ev.config.stun_urls):
        probes = ev.probes_for(url)
        if probes and not any(p.outcome == "ok" for p in probes):
            lines = [f"{p.transport.upper()} {p.target}: {p.error or p.stun_error}" for p in probes]
            out.append(make_finding("stun-unreachable", lines, subject=url.raw))
    return out


def relay_blocked(ev: Evidence, opts: RuleOptions) -> list[Finding]:
    out = []
    for dp in ev.datapaths:
        if not dp.blocked:
            continue
        lines = list(dp.transcript)
        lines.append(
            f"the server answers on its listening port, but of {dp.sent} packets "
            f"relayed between {fmt_addr(dp.relayed_a)} and {fmt_addr(dp.relayed_b)}, "
            f"{dp.a_to_b} arrived and {dp.b_to_a} came back: UDP to the relay port "
            "range is dropped (firewall, security group) or the relay cannot reach "
            "its own public address"
        )
        out.append(make_finding("relay-ports-blocked", lines, subject=dp.url))
    return out


def private_relay(ev: Evidence, opts: RuleOptions) -> list[Finding]:
    out = []
    seen: set[tuple[int, str]] = set()
    for p in ev.probes:
        for host, port in p.relayed:
            if not is_internal(host) or (p.server_index, host) in seen:
                continue
            seen.add((p.server_index, host))
            reached_privately = p.address is not None and is_internal(p.address)
            lines = [
                f"{p.url} reached at {p.target} relays from {fmt_addr((host, port))}: peers "
                "outside that network cannot send to it"
            ]
            if reached_privately:
                lines.append(
                    "the server itself was reached on an internal address, so this may "
                    "be a lab; in production set the external IP"
                )
            out.append(
                make_finding(
                    "private-relay-address",
                    lines,
                    subject=p.url,
                    severity="warning" if reached_privately else "error",
                )
            )
    return out


def static_credentials(ev: Evidence, opts: RuleOptions) -> list[Finding]:
    out = []
    for index, urls in _servers(ev).items():
        cred: Credential | None = urls[0].credential
        assert cred is not None
        line = None
        if cred.expiry_in_milliseconds:
            line = (
                f"username {cred.username!r}: a 13-digit expiry is milliseconds; servers "
                "read seconds, so this credential never expires"
            )
        elif cred.rest_expiry is None:
            line = (
                f"username {cred.username!r} is not a TURN REST username (<expiry>:<user>): "
                "a fixed password handed to every browser can be copied and used by anyone"
            )
        elif cred.rest_expiry - ev.now > LONG_LIVED_S:
            line = (
                f"username {cred.username!r} is valid for {duration(cred.rest_expiry - ev.now)}"
                ": once copied it works for that long; mint per session with a TTL of hours"
            )
        if line:
            out.append(
                make_finding(
                    "static-credentials", line, severity="error", subject=_subject(index, urls)
                )
            )
    return out


def latency(ev: Evidence, opts: RuleOptions) -> list[Finding]:
    out = []
    for dp in ev.datapaths:
        if dp.p50_ms is not None and dp.p50_ms > opts.max_relay_rtt_ms:
            out.append(
                make_finding(
                    "high-relay-latency",
                    [
                        f"round trip through the relay via {dp.url}: p50 {dp.p50_ms} ms, p95 "
                        f"{dp.p95_ms} ms, jitter {dp.jitter_ms} ms "
                        f"(threshold {opts.max_relay_rtt_ms:g} ms; --max-relay-rtt)"
                    ],
                    subject=dp.url,
                )
            )
    return out


def exposure(ev: Evidence, opts: RuleOptions) -> list[Finding]:
    out = []
    for scan in ev.security or []:
        accepted = scan.accepted
        if not accepted:
            continue
        lines = [f"CreatePermission to {c.peer} ({c.label}) was accepted" for c in accepted]
        refused = [c for c in scan.checks if not c.accepted]
        if refused:
            lines.append(
                "refused as it should be: " + ", ".join(f"{c.peer} ({c.label})" for c in refused)
            )
        out.append(make_finding("open-relay-exposure", lines, subject=scan.url))
    return out


def tls_certificate(ev: Evidence, opts: RuleOptions) -> list[Finding]:
    out = []
    seen: set[str] = set()
    for p in ev.probes:
        tls = p.tls
        if tls is None or not tls.checked or p.url in seen:
            continue  # not checked: --insecure
        about = (
            f"certificate for {', '.join(tls.names) or tls.subject or '?'}, issued by "
            f"{tls.issuer or '?'}, valid until {tls.not_after or '?'}"
        )
        if not tls.verified:
            seen.add(p.url)
            works = (
                "TURN over TLS works once the certificate is trusted (probed without verification)"
                if p.outcome in ("ok", "auth")
                else f"without verification: {p.error}"
            )
            out.append(
                make_finding(
                    "tls-certificate-invalid",
                    [
                        f"{p.url} at {p.target}: {tls.error}",
                        about,
                        "browsers refuse the connection, so this URL gives no relay",
                        works,
                    ],
                    subject=p.url,
                )
            )
        elif tls.days_left is not None and tls.days_left < opts.tls_expiry_days:
            seen.add(p.url)
            soon = make_finding(
                "tls-certificate-invalid",
                [f"{p.url}: expires in {tls.days_left:g} days", about],
                severity="warning",
                subject=p.url,
                title="The turns: certificate expires soon",
            )
            soon.fix = "Renew the certificate (automate it with ACME) and reload the server."
            out.append(soon)
    return out


RULES: tuple[Rule, ...] = (
    no_turn, credentials, udp_only, bad_config, no_tls_443, unreachable, stun_unreachable,
    relay_blocked, private_relay, static_credentials, latency, exposure, tls_certificate,
)  # fmt: skip


def evaluate(ev: Evidence, opts: RuleOptions | None = None) -> list[Finding]:
    """Every rule's findings, ranked in the field order; except that when no TURN URL answers
    at all, the URLs that answer nothing come first: that is what fails every call from here,
    before any weakness of the config (a lone UDP URL that is dead is unreachable first)."""
    opts = opts or RuleOptions()
    findings: list[Finding] = []
    for rule in RULES:
        findings += rule(ev, opts)
    findings = rank(findings)
    turn = [p for u in ev.config.turn_urls for p in ev.probes_for(u)]
    if turn and not any(p.outcome in ("ok", "auth", "refused") for p in turn):
        first = [f.code == "turn-unreachable" and f.severity == "error" for f in findings]
        findings = [f for f, x in zip(findings, first, strict=True) if x] + [
            f for f, x in zip(findings, first, strict=True) if not x
        ]
    return findings


# -- the verdict -----------------------------------------------------------------------------------

_NAMES = {"udp": "UDP", "tcp": "TCP", "tls": "TLS"}


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def summarize(ev: Evidence, findings: list[Finding]) -> str:
    """One line: what works, what does not, in the order a reader acts on it."""
    parts: list[str] = []
    config = ev.config
    if not config.urls:
        return "No usable ICE server in the configuration" + (
            f": {findings[0].evidence[0]}" if findings and findings[0].evidence else ""
        )
    stun = [p for u in config.stun_urls for p in ev.probes_for(u)]
    if stun:
        parts.append("STUN works" if any(p.outcome == "ok" for p in stun) else "STUN fails")
    if not config.turn_urls:
        parts.append("there is no TURN server in the config")
        return "; ".join(parts)
    turn = [p for u in config.turn_urls for p in ev.probes_for(u)]
    by_outcome: dict[str, list[str]] = {}
    for transport in ("udp", "tcp", "tls"):
        outcomes = {p.outcome for p in turn if p.transport == transport}
        if not outcomes:
            continue
        key = (
            "ok"
            if "ok" in outcomes
            else "auth"
            if "auth" in outcomes
            else "refused"
            if "refused" in outcomes
            else "unreachable"
        )
        by_outcome.setdefault(key, []).append(_NAMES[transport])
    if by_outcome.get("ok"):
        parts.append(
            f"TURN over {_join(by_outcome['ok'])} "
            f"{'works' if len(by_outcome['ok']) == 1 else 'work'}"
        )
    if by_outcome.get("auth"):
        expired = any(
            f.code == "turn-credential-expired" and f.severity == "error" for f in findings
        )
        parts.append(
            f"TURN over {_join(by_outcome['auth'])} refuses the "
            + ("expired credential" if expired else "credential")
        )
    if by_outcome.get("refused"):
        parts.append(f"TURN over {_join(by_outcome['refused'])} refuses to allocate")
    if by_outcome.get("unreachable"):
        parts.append(f"nothing answers TURN over {_join(by_outcome['unreachable'])}")
    for dp in ev.datapaths:
        if dp.not_tested:
            host = dp.relayed_b[0] if dp.relayed_b else "address"
            parts.append(
                f"the relay data path went untested: the server refuses its internal relayed "
                f"{host} as a peer (403)"
            )
        elif dp.setup_error is not None:
            parts.append(f"the relay data path could not be tested: {dp.setup_error}")
        elif dp.blocked:
            parts.append(
                f"UDP to the relay port range is blocked ({dp.a_to_b}/{dp.sent} packets crossed)"
            )
        elif dp.setup_error is None and dp.sent:
            parts.append(
                f"data crosses the relay ({len(dp.rtt_ms)}/{dp.sent} round trips, "
                f"p50 {dp.p50_ms} ms)"
            )
    if any(f.code == "open-relay-exposure" for f in findings):
        parts.append("the relay accepts internal peers")
    if any(f.code == "tls-certificate-invalid" and f.severity == "error" for f in findings):
        parts.append("browsers refuse the turns: certificate")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:]
